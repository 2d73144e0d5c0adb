"""The one exception type for bad input, so the CLI can print one line instead of a traceback."""

from __future__ import annotations


class AnalysisError(ValueError):
    """Input that cannot be analysed (missing file, unknown format, no events): the message is for users."""
