"""The one exception type for bad input, so the CLI can print one line instead of a traceback."""

from __future__ import annotations


class AnalysisError(ValueError):
    """Input that cannot be analysed (missing file, unknown format, no events): the message is for users."""


def damage_warnings(path: object, bad: int, bad_last_line: bool, lines: int, unknown: dict) -> list[str]:
    """One warning per kind of damage in a line-oriented log, so it is analysed but never silently."""
    out = []
    if bad == 1 and bad_last_line:
        out.append(f"{path}: skipped a truncated last line (line {lines}); the writer was probably killed")
    elif bad:
        out.append(f"{path}: skipped {bad} malformed line(s)")
    if unknown:
        kinds = ", ".join(f"{k} ({n})" for k, n in sorted(unknown.items(), key=lambda kv: str(kv[0]))[:8])
        out.append(f"{path}: ignored {sum(unknown.values())} event(s) of unknown type: {kinds}")
    return out
