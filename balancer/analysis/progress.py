"""A byte-based tqdm progress bar on stderr that only appears when loading takes more than a moment."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from types import TracebackType
from typing import IO, Any


class ByteProgress:
    """Progress over a file's bytes; ``enabled=None`` shows it only when stderr is a terminal.

    tqdm's ``delay`` keeps short loads (tests, small runs) silent; callers report progress every few
    thousand lines with ``advance(fh)`` so the bar costs nothing per line.
    """

    def __init__(self, path: Path, desc: str, enabled: bool | None = None, delay: float = 0.7) -> None:
        self._bar: Any = None
        self._done = 0
        if enabled is False:
            return
        try:
            total = os.path.getsize(path)
        except OSError:
            return
        try:
            from tqdm import tqdm
        except ImportError:  # tqdm is optional: no bar, same results
            return
        self._bar = tqdm(
            total=total,
            desc=desc,
            unit="B",
            unit_scale=True,
            file=sys.stderr,
            delay=delay,
            disable=None if enabled is None else False,
            leave=False,
        )

    def advance(self, fh: IO[bytes]) -> None:
        """Move the bar to the file's current position."""
        if self._bar is None:
            return
        pos = fh.tell()
        self._bar.update(pos - self._done)
        self._done = pos

    def __enter__(self) -> ByteProgress:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._bar is not None:
            self._bar.close()
