"""Errors a user can cause, each with a message that says what to do next.

Every class also inherits the matching built-in exception, so callers that catch ``KeyError``,
``ValueError``, ``FileNotFoundError`` or ``OSError`` keep working. The CLI turns any
:class:`MedhubError` into one line on stderr and exit code 2.
"""

from __future__ import annotations


class MedhubError(Exception):
    """Base class of every error medhub raises on purpose.

    Args:
        message: one line that says what went wrong and what to do next.
        **context: facts a caller may inspect (``model_id``, ``path``, ...), kept as attributes.
    """

    def __init__(self, message: str, **context: object) -> None:
        super().__init__(message)
        self.message = message
        self.context = context
        for key, value in context.items():
            setattr(self, key, value)

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return self.message


class UnknownModelError(MedhubError, KeyError):
    """A checkpoint id or alias that no registry file defines."""


class UnknownTaskError(MedhubError, KeyError):
    """A task id that no registry file defines."""


class RegistryError(MedhubError, ValueError):
    """A registry file that cannot be read or does not validate."""


class WeightsUnavailableError(MedhubError, LookupError):
    """A checkpoint is registered but no source for its weights could be used."""


class ChecksumError(MedhubError, OSError):
    """A downloaded or local file whose sha256 differs from the one the registry records."""


class ConversionError(MedhubError, ValueError):
    """A checkpoint whose keys cannot be mapped onto the requested timm architecture."""


class UnsafeCheckpointError(MedhubError, ValueError):
    """A pickle that would need arbitrary code to load; it is refused and never executed."""


class DataError(MedhubError, FileNotFoundError):
    """A data folder that is missing or does not match the layout a task documents."""


class HubError(MedhubError, OSError):
    """A Hub request that failed (network, auth, missing repo or file)."""


class OfflineError(MedhubError, OSError):
    """Offline mode asked for something that is not in the local cache."""


class CacheError(OfflineError):
    """A local cache whose content is wrong (a refs file, a snapshot or blob not copied); names the file."""


class UsageError(MedhubError, ValueError):
    """An option or argument combination that cannot work."""


class ArchiveError(MedhubError, ValueError):
    """A pack archive that is damaged, tampered with or hostile; it is refused before anything is written."""


class DownloadError(MedhubError, OSError):
    """A download from an original URL that failed or broke off (a rerun resumes it)."""


class FormatError(MedhubError, ValueError):
    """A file that exists but cannot be read as what it should be (truncated, empty, another format)."""


class PathError(MedhubError, OSError):
    """A path that is missing, of the wrong kind (a file where a folder is needed), or not writable."""


class DatabaseError(MedhubError, OSError):
    """A results database that cannot be opened or is not a database."""


# ---- one place that turns library exceptions into MedhubError -----------------------------------------------
# Each *kind* of failure a user can cause (a bad path, a corrupt file, an unreachable server, a broken database)
# reaches the CLI as some library's exception; ``as_user_error`` maps it to a one-line MedhubError with a remedy.
# Classes are matched by their qualified names, so this module imports no library (sqlalchemy, httpx, torch).

_OS_REMEDIES = {
    "ENOENT": "check the path",
    "ENOTDIR": "a file stands where a folder is needed; pass a folder (or a new path)",
    "EISDIR": "a folder stands where a file is needed; pass a file",
    "EEXIST": "a file already stands there; pass a new folder path",
    "EACCES": "no permission; choose a path you can write to (or fix its permissions)",
    "EPERM": "no permission; choose a path you can write to (or fix its permissions)",
    "EROFS": "the file system is read-only; choose another path",
    "ENOSPC": "the disk is full; free space or choose another path",
    "EDQUOT": "the disk quota is exceeded; free space or choose another path",
    "ENAMETOOLONG": "the path is too long; choose a shorter one",
}

_NETWORK_CLASSES = (
    "httpx", "httpx2", "httpcore", "requests.exceptions", "urllib3.exceptions", "huggingface_hub.errors",
)


def _qualified_names(exc: BaseException) -> list[str]:
    return [f"{cls.__module__}.{cls.__qualname__}" for cls in type(exc).__mro__]


def first_line(exc: BaseException) -> str:
    """The first line of ``str(exc)`` (at most 200 characters), or the class name when it is empty."""
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def hub_endpoint_for_messages() -> str:
    """``HF_ENDPOINT`` as the user set it (or the public Hub), for error messages."""
    import os

    return (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")


def as_user_error(exc: BaseException) -> MedhubError | None:
    """The :class:`MedhubError` for a library exception a user can cause, or None for a programming error.

    Kinds mapped: file-system errors with a path (``OSError`` with ``errno``: missing path, a file where a
    folder is needed, permissions, disk full), corrupt or truncated files (safetensors, zip/pickle, numpy),
    network errors of the Hub client stack (httpx, requests, urllib3, huggingface_hub), and database errors
    (SQLAlchemy). Any other exception is a bug and returns None, so its traceback is kept.

    >>> as_user_error(NotADirectoryError(20, "Not a directory", "out/x")).message
    "cannot use out/x: Not a directory; a file stands where a folder is needed; pass a folder (or a new path)"
    """
    import errno as errno_codes

    if isinstance(exc, MedhubError):
        return exc
    names = _qualified_names(exc)
    if any(n.startswith("sqlalchemy.exc.") for n in names):
        detail = first_line(getattr(exc, "orig", None) or exc)
        return DatabaseError(f"the results database cannot be used: {detail}; check the URL (sqlite:///PATH of a "
                             "file 'medhub benchmark' wrote, or postgresql://...)")
    if any(n.startswith(_NETWORK_CLASSES) for n in names) or isinstance(exc, (ConnectionError, TimeoutError)):
        endpoint = hub_endpoint_for_messages()
        return HubError(f"cannot reach the Hub at {endpoint} ({first_line(exc)}); check HF_ENDPOINT (a URL such as "
                        "http://127.0.0.1:8080) and the network")
    if any(n.endswith(("SafetensorError", "zipfile.BadZipFile", "_pickle.UnpicklingError", "pickle.UnpicklingError"))
           for n in names) or isinstance(exc, EOFError):
        return FormatError(f"a file could not be read ({first_line(exc)}): it is truncated, empty or not in the "
                           "expected format; download or write it again")
    if isinstance(exc, OSError) and exc.errno is not None:
        code = errno_codes.errorcode.get(exc.errno, "")
        remedy = _OS_REMEDIES.get(code)
        if remedy:
            where = exc.filename if exc.filename is not None else "a path"
            return PathError(f"cannot use {where}: {exc.strerror}; {remedy}", path=str(where))
    if isinstance(exc, MemoryError):
        return UsageError("out of memory; use a smaller --batch-size or --img-size")
    return None


def check_range(name: str, value: float | None, low: float | None = None, high: float | None = None, *,
                low_open: bool = False) -> None:
    """Refuse ``value`` outside ``[low, high]`` (``(low, high]`` with ``low_open``) with a one-line UsageError.

    ``None`` means "not given" and passes. ``name`` is what the user typed (``--img-size``, ``num_classes``).
    The bounds themselves live in :data:`medhub.bounds.BOUNDS`.
    """
    if value is None:
        return
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and value > high
    if too_low or too_high or value != value:  # NaN is outside every range
        lo = "" if low is None else f"{'>' if low_open else '>='} {low:g}"
        hi = "" if high is None else f"<= {high:g}"
        span = " and ".join(s for s in (lo, hi) if s)
        raise UsageError(f"{name} must be {span}, got {value:g}", option=name, value=value)
