"""Publishing: create a Hub repo and commit a folder to it; the commit id is what medhub pins.

Reads ``HF_ENDPOINT`` and ``HF_TOKEN`` at call time (so a server configured after import still applies).
Errors become one-line :class:`~medhub.errors.HubError` messages that never contain the token.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

from medhub.errors import HubError

logger = logging.getLogger(__name__)


def _api(token: str | None):
    from huggingface_hub import HfApi

    return HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None, token=token)


def repo_head(repo_id: str, *, token: str | None = None) -> str | None:
    """Commit id of ``main`` in ``repo_id``, or None when the repo does not exist."""
    from huggingface_hub import errors

    try:
        return _api(token).repo_info(repo_id, repo_type="model").sha
    except errors.RepositoryNotFoundError:
        return None
    except Exception as exc:  # noqa: BLE001 - every client error becomes one medhub error
        raise _upload_error(exc, repo_id, "read") from exc


def upload_folder(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    private: bool = False,
    commit_message: str = "Upload with medhub push",
    token: str | None = None,
) -> str:
    """Create ``repo_id`` if needed and commit every file of ``folder`` to its ``main`` branch.

    Args:
        folder: local folder; its files land at the repo root with the same relative paths.
        repo_id: ``org/name``.
        private: create the repo private (an existing repo keeps its visibility).
        commit_message: summary of the commit.
        token: Hub token; ``None`` uses ``HF_TOKEN`` or the saved login.

    Returns:
        The 40-hex commit id of the new commit.
    """
    folder = Path(folder)
    api = _api(token)
    existed = repo_head(repo_id, token=token) is not None
    try:
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        info = api.upload_folder(
            folder_path=str(folder), repo_id=repo_id, repo_type="model", commit_message=commit_message
        )
    except Exception as exc:  # noqa: BLE001
        if not existed:  # leave no empty repo behind a failed push
            with contextlib.suppress(Exception):
                api.delete_repo(repo_id, repo_type="model", missing_ok=True)
        raise _upload_error(exc, repo_id, "upload to") from exc
    commit = info.oid
    logger.info(
        "committed %s to %s at %s", ", ".join(sorted(p.name for p in folder.iterdir())), repo_id, commit
    )
    return commit


def _upload_error(exc: Exception, repo_id: str, action: str) -> Exception:
    from huggingface_hub import errors

    if not isinstance(exc, (OSError, errors.HfHubHTTPError, ValueError)):
        return exc  # a programming error: let it surface unchanged
    endpoint = (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")
    status = getattr(getattr(exc, "response", None), "status_code", None)
    if status in (401, 403):
        hint = "the Hub refused the credentials: set HF_TOKEN to a token with write access"
    elif status == 409:
        hint = "the repo changed while uploading; retry"
    elif status == 501 or "xet" in str(exc).lower():
        hint = ("the server does not speak Xet: set HF_HUB_DISABLE_XET=1 in the environment before running "
                "medhub push (or start medhub serve with --regular-only)")
    else:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        hint = f"{first}; check HF_ENDPOINT and the network"
    token = os.environ.get("HF_TOKEN")
    if token:
        hint = hint.replace(token, "***")
    return HubError(f"cannot {action} {repo_id} on {endpoint}: {hint}", repo_id=repo_id)
