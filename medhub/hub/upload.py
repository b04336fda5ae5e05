"""Publishing: create a Hub repo and commit a folder to it; the commit id is what medhub pins.

Reads ``HF_ENDPOINT`` and ``HF_TOKEN`` at call time (so a server configured after import still applies);
every function also takes an explicit ``endpoint`` (``medhub mirror`` downloads from one Hub and publishes
to another).
Errors become one-line :class:`~medhub.errors.HubError` messages that never contain the token.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

from medhub.errors import HubError

logger = logging.getLogger(__name__)


def _api(token: str | None, endpoint: str | None = None):
    from huggingface_hub import HfApi

    return HfApi(endpoint=(endpoint or os.environ.get("HF_ENDPOINT") or None), token=token)


def repo_head(repo_id: str, *, token: str | None = None, endpoint: str | None = None) -> str | None:
    """Commit id of ``main`` in ``repo_id``, or None when the repo does not exist."""
    from huggingface_hub import errors

    try:
        return _api(token, endpoint).repo_info(repo_id, repo_type="model").sha
    except errors.RepositoryNotFoundError:
        return None
    except Exception as exc:  # noqa: BLE001 - every client error becomes one medhub error
        raise _upload_error(exc, repo_id, "read", endpoint) from exc


def remote_files(
    repo_id: str, revision: str, *, token: str | None = None, endpoint: str | None = None
) -> dict[str, tuple[str | None, str]]:
    """``{path: (sha256 of an LFS file or None, git blob id)}`` of every file of ``repo_id`` at ``revision``."""
    try:
        tree = _api(token, endpoint).list_repo_tree(
            repo_id, revision=revision, recursive=True, repo_type="model"
        )
        files = {}
        for item in tree:
            if hasattr(item, "blob_id"):
                lfs = getattr(item, "lfs", None)
                files[item.path] = (lfs.sha256 if lfs else None, item.blob_id)
        return files
    except Exception as exc:  # noqa: BLE001
        raise _upload_error(exc, repo_id, "list the files of", endpoint) from exc


def create_tag(
    repo_id: str, tag: str, revision: str, *, token: str | None = None, endpoint: str | None = None
) -> None:
    """Tag ``revision`` of ``repo_id`` as ``tag`` (an existing tag is left as it is)."""
    try:
        _api(token, endpoint).create_tag(
            repo_id, tag=tag, revision=revision, repo_type="model", exist_ok=True
        )
    except Exception as exc:  # noqa: BLE001
        raise _upload_error(exc, repo_id, f"tag {tag} in", endpoint) from exc


def upload_folder(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    private: bool = False,
    commit_message: str = "Upload with medhub push",
    token: str | None = None,
    endpoint: str | None = None,
) -> str:
    """Create ``repo_id`` if needed and commit every file of ``folder`` to its ``main`` branch.

    Args:
        folder: local folder; its files land at the repo root with the same relative paths.
        repo_id: ``org/name``.
        private: create the repo private (an existing repo keeps its visibility).
        commit_message: summary of the commit.
        token: Hub token; ``None`` uses ``HF_TOKEN`` or the saved login.
        endpoint: the Hub's URL; default ``HF_ENDPOINT`` (else huggingface.co).

    Returns:
        The 40-hex commit id of the new commit.
    """
    folder = Path(folder)
    api = _api(token, endpoint)
    existed = repo_head(repo_id, token=token, endpoint=endpoint) is not None
    try:
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        info = api.upload_folder(
            folder_path=str(folder), repo_id=repo_id, repo_type="model", commit_message=commit_message
        )
    except Exception as exc:  # noqa: BLE001
        if not existed:  # leave no empty repo behind a failed push
            with contextlib.suppress(Exception):
                api.delete_repo(repo_id, repo_type="model", missing_ok=True)
        raise _upload_error(exc, repo_id, "upload to", endpoint) from exc
    commit = info.oid
    logger.info(
        "committed %s to %s at %s", ", ".join(sorted(p.name for p in folder.iterdir())), repo_id, commit
    )
    return commit


def _transport_errors() -> tuple[type[BaseException], ...]:
    """The HTTP client's connection/timeout errors (huggingface_hub's client is httpx2, httpx or requests;
    requests' errors are already ``OSError``)."""
    import importlib

    found = []
    for name in ("httpx2", "httpx"):
        try:
            found.append(importlib.import_module(name).TransportError)
        except (ImportError, AttributeError):
            continue
    return tuple(found)


def _upload_error(exc: Exception, repo_id: str, action: str, endpoint: str | None = None) -> Exception:
    from huggingface_hub import errors

    transport = _transport_errors()
    if not isinstance(exc, (OSError, errors.HfHubHTTPError, ValueError, *transport)):
        return exc  # a programming error: let it surface unchanged
    endpoint = (endpoint or os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")
    status = getattr(getattr(exc, "response", None), "status_code", None)
    if isinstance(exc, transport):
        hint = f"cannot connect ({exc}); check that the Hub runs there, HF_ENDPOINT and the network"
    elif status in (401, 403):
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
