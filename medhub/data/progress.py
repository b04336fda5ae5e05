"""How long-running steps (decoding, training epochs) report progress on stderr.

Three modes: ``"bar"`` (tqdm bars, for a terminal), ``"lines"`` (one plain line per epoch and per cache
build, for logs, files and pipes, where bars print nothing until the end) and ``"off"``. ``True`` means
``"bar"`` and ``False``/``None`` mean ``"off"``, so older callers passing a bool keep working.
"""

from __future__ import annotations

import sys

BAR, LINES, OFF = "bar", "lines", "off"
Progress = bool | str | None


def progress_mode(progress: Progress) -> str:
    """Normalize a ``progress`` argument to ``"bar"``, ``"lines"`` or ``"off"``."""
    if progress is True:
        return BAR
    if progress in (False, None):
        return OFF
    if progress in (BAR, LINES, OFF):
        return progress
    raise ValueError(f"progress must be a bool or one of {BAR!r}, {LINES!r}, {OFF!r}; got {progress!r}")


def auto_mode(enabled: bool = True) -> str:
    """The CLI's choice: bars when stderr is a terminal, plain lines otherwise, nothing when not ``enabled``."""
    if not enabled:
        return OFF
    isatty = getattr(sys.stderr, "isatty", None)
    return BAR if isatty is not None and isatty() else LINES


def say(progress: Progress, message: str) -> None:
    """Write ``message`` as one line on stderr when ``progress`` is in lines mode."""
    if progress_mode(progress) == LINES:
        sys.stderr.write(message + "\n")
        sys.stderr.flush()
