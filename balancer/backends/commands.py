"""Running a scheduler's command line tools from the event loop: a timeout, never a hang.

Every ``sbatch``/``squeue``/``scancel``/``hq`` call goes through ``run_command``: an asyncio
subprocess (the loop never waits on the scheduler), killed after ``timeout`` s, killed too if the
caller is cancelled, and an unrunnable binary becomes exit code 127 with a readable message.
"""

from __future__ import annotations

import asyncio
import contextlib


async def run_command(
    argv: list[str], timeout: float, env: dict[str, str] | None = None, merge_stderr: bool = False
) -> tuple[int, str, str]:
    """(exit code, stdout, stderr); 124 on timeout, 127 when it cannot be started."""
    tool = argv[0].rsplit("/", 1)[-1]
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT if merge_stderr else asyncio.subprocess.PIPE,
        )
    except OSError as exc:
        return 127, "", f"{tool}: error: cannot run: {exc.strerror or exc}"
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except asyncio.TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        return 124, "", f"{tool}: error: no answer within {timeout:g} s"
    except asyncio.CancelledError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        raise
    return proc.returncode or 0, out.decode(errors="replace"), (err or b"").decode(errors="replace")
