"""How long-running steps (decoding, training epochs) report progress on stderr.

Three modes: ``"bar"`` (tqdm bars, for a terminal), ``"lines"`` (one plain line per epoch and per cache
build, for logs, files and pipes, where bars print nothing until the end) and ``"off"``. ``True`` means
``"bar"`` and ``False``/``None`` mean ``"off"``, so older callers passing a bool keep working.
"""

from __future__ import annotations

import logging
import os
import sys

log = logging.getLogger(__name__)

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


def format_duration(seconds: float) -> str:
    """``42 s``, ``3 min 05 s``, ``1 h 02 min``: a duration as a person reads it."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, secs = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def time_left(elapsed: float, done: int, remaining: int) -> str:
    """``elapsed 1 min 12 s, about 3 min 05 s left`` after ``done`` epochs with ``remaining`` to go.

    The estimate is the mean time of the epochs done in this process times the epochs left (early stopping
    can end sooner).
    """
    if remaining <= 0:
        return f"elapsed {format_duration(elapsed)}"
    eta = elapsed / max(done, 1) * remaining
    return f"elapsed {format_duration(elapsed)}, about {format_duration(eta)} left"


_busy_said = False


def warn_if_busy() -> bool:
    """Say once per process, on stderr, when the 1-minute load average exceeds the CPU count.

    Training then shares the cores with other work and takes longer than the figures measured on an idle
    machine (README). Returns True when the warning was given now.
    """
    global _busy_said
    if _busy_said or not hasattr(os, "getloadavg"):
        return False
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    load = os.getloadavg()[0]
    if load <= cores:
        return False
    _busy_said = True
    log.warning("this machine is busy (load average %.1f on %d cores): training shares the CPU with other work "
                "and will take longer than the times measured on an idle machine", load, cores)
    return True
