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
