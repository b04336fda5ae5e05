"""Downloads: original URLs (streamed, resumable, verified) and Hugging Face Hub files.

This package is the only place that imports ``huggingface_hub``. Every function reads ``HF_ENDPOINT`` and
``HF_HUB_OFFLINE`` from the environment at call time, so a server or an offline switch configured after
import still applies.

URL downloads stream into ``<dest>.part`` with a progress bar, resume from that file with an HTTP ``Range``
request, verify the sha256 when one is known, and only then rename the file into place. A checksum mismatch
deletes the download and raises :class:`~medhub.errors.ChecksumError`: a bad file is never cached.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import logging
import os
import urllib.error
import urllib.request
from pathlib import Path

from medhub.errors import CacheError, ChecksumError, DownloadError, HubError, OfflineError

logger = logging.getLogger(__name__)

CHUNK = 1 << 20
USER_AGENT = "medhub (+https://github.com/medhub)"
_TRUE = {"1", "true", "yes", "on"}


def is_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) asks for cache-only operation."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.strip().lower() in _TRUE


def hub_endpoint() -> str:
    """The Hub the client talks to: ``HF_ENDPOINT``, or huggingface.co."""
    return (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")


# ---- original URLs ----------------------------------------------------------------------------------------


def download_url(
    url: str,
    dest: str | os.PathLike,
    *,
    sha256: str | None = None,
    progress: bool = True,
    local_files_only: bool = False,
    timeout: float = 60.0,
) -> Path:
    """Download ``url`` to ``dest`` (streamed, atomic, resumable) and verify its sha256.

    An existing ``dest`` is reused (after checking ``sha256`` when given). An interrupted download leaves
    ``<dest>.part`` behind; the next call resumes it with an HTTP ``Range`` request.

    Args:
        url: ``http(s)://`` or ``file://`` address.
        dest: final path of the file.
        sha256: expected hex digest; a mismatch deletes the file and raises :class:`ChecksumError`.
        progress: show a tqdm progress bar on stderr.
        local_files_only: never touch the network (also implied by ``HF_HUB_OFFLINE=1``).
        timeout: seconds to wait for the server on connect and on each read.

    Returns:
        The path of the verified file.

    >>> path = download_url("https://example.org/w.pth", "/tmp/w.pth", sha256=None)  # doctest: +SKIP
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    lock = Path(str(dest) + ".lock")
    try:
        return _download_locked(url, dest, lock, sha256=sha256, progress=progress,
                                local_files_only=local_files_only, timeout=timeout)
    finally:
        if not dest.exists():  # a failed download leaves no lock (and no empty partial file) behind
            lock.unlink(missing_ok=True)
            part = dest.with_name(dest.name + ".part")
            if part.is_file() and part.stat().st_size == 0:
                part.unlink()


def _download_locked(url: str, dest: Path, lock: Path, *, sha256: str | None, progress: bool,
                     local_files_only: bool, timeout: float) -> Path:
    """:func:`download_url`'s work, under a lock file that keeps two processes from fetching the same file."""
    from filelock import FileLock

    with FileLock(str(lock)):
        if dest.exists():
            _verify(dest, sha256, url)
            logger.info("using cached %s", dest)
            return dest
        if local_files_only or is_offline():
            raise OfflineError(
                f"{url} is not cached (expected at {dest}); go online (unset HF_HUB_OFFLINE) and run the "
                "same call once to download it",
                url=url,
                path=dest,
            )
        part = dest.with_name(dest.name + ".part")
        digest = _stream(url, part, progress=progress, timeout=timeout)
        if sha256 and digest != sha256.lower():
            part.unlink(missing_ok=True)
            raise ChecksumError(
                f"sha256 mismatch for {url}: expected {sha256}, got {digest}; the file was deleted, not "
                "cached. The source may have changed or been tampered with: check the URL and the registry",
                url=url,
                expected=sha256,
                actual=digest,
            )
        os.replace(part, dest)
    logger.info("downloaded %s -> %s", url, dest)
    return dest


def _verify(path: Path, sha256: str | None, url: str) -> None:
    """Check a cached file; a mismatch deletes it and raises :class:`ChecksumError`."""
    if not sha256:
        return
    digest = _hash_file(path, hashlib.sha256())
    if digest != sha256.lower():
        path.unlink(missing_ok=True)
        raise ChecksumError(
            f"cached file {path} (from {url}) has sha256 {digest}, expected {sha256}; it was deleted. "
            "Run the same call again to download a fresh copy",
            path=path,
            expected=sha256,
            actual=digest,
        )


def _hash_file(path: Path, digest: hashlib._Hash) -> str:
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _open(url: str, offset: int, timeout: float):
    """Open ``url``, asking for bytes from ``offset`` on; returns ``(response, resumed)``."""
    headers = {"User-Agent": USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 - http(s)/file by design
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:  # the .part is already complete or larger than the file
            return None, False
        raise DownloadError(
            f"cannot download {url}: HTTP {exc.code} {exc.reason}; check the URL or fetch the file by hand",
            url=url,
            status=exc.code,
        ) from exc
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DownloadError(
            f"cannot download {url}: {reason}; check the network connection and the URL", url=url
        ) from exc
    status = getattr(response, "status", None) or response.getcode()
    return response, bool(offset) and status == 206


def _stream(url: str, part: Path, *, progress: bool, timeout: float) -> str:
    """Fill ``part`` with the bytes of ``url`` (resuming it if it can); return the whole sha256."""
    from tqdm.auto import tqdm

    offset = part.stat().st_size if part.exists() else 0
    response, resumed = _open(url, offset, timeout)
    if response is None:  # 416: start over
        part.unlink(missing_ok=True)
        offset = 0
        response, resumed = _open(url, 0, timeout)
    digest = hashlib.sha256()
    if resumed:
        _hash_file(part, digest)
        logger.info("resuming %s at byte %d", url, offset)
    else:
        offset = 0
    length = response.headers.get("Content-Length")
    total = offset + int(length) if length and length.isdigit() else None
    received = offset
    with contextlib.closing(response), open(part, "ab" if resumed else "wb") as out, tqdm(
        total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
        desc=Path(part.name).stem, disable=not progress, leave=False,
    ) as bar:  # fmt: skip
        try:
            for chunk in iter(lambda: response.read(CHUNK), b""):
                out.write(chunk)
                digest.update(chunk)
                received += len(chunk)
                bar.update(len(chunk))
        except (OSError, http.client.HTTPException) as exc:
            raise DownloadError(
                f"download of {url} broke off after {received} bytes ({exc}); run the same call again to "
                f"resume from {part}",
                url=url,
                path=part,
            ) from exc
        out.flush()
        os.fsync(out.fileno())
    if total is not None and received != total:
        raise DownloadError(
            f"download of {url} stopped at {received} of {total} bytes; run the same call again to resume "
            f"from {part}",
            url=url,
            path=part,
        )
    return digest.hexdigest()


# ---- Hugging Face Hub -------------------------------------------------------------------------------------


def hf_file(
    repo_id: str,
    filename: str,
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
    token: str | bool | None = None,
) -> Path:
    """One file of a Hub repo, from the cache or ``HF_ENDPOINT``.

    Args:
        repo_id: ``org/name``.
        filename: path inside the repo.
        revision: branch, tag or (preferably) a 40-hex commit.
        cache_dir: Hub cache folder; default ``$HF_HOME/hub``.
        local_files_only: use the cache only (also implied by ``HF_HUB_OFFLINE=1``).
        token: Hub token; ``None`` uses ``HF_TOKEN`` or the saved login.

    Returns:
        Path of the cached file.
    """
    from huggingface_hub import hf_hub_download

    offline = local_files_only or is_offline()
    commit = cached_commit(repo_id, revision, cache_dir) if offline else None
    try:
        path = hf_hub_download(
            repo_id, filename, revision=commit or revision, cache_dir=cache_dir, local_files_only=offline,
            token=token, endpoint=os.environ.get("HF_ENDPOINT") or None,
        )  # fmt: skip
    except Exception as exc:  # noqa: BLE001 - every client error becomes one medhub error
        raise _hub_error(exc, repo_id, filename, revision, offline) from exc
    return Path(path)


def hf_snapshot(
    repo_id: str,
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
    allow_patterns: list[str] | str | None = None,
    token: str | bool | None = None,
) -> Path:
    """A folder holding the files of a Hub repo at ``revision`` (restricted to ``allow_patterns``).

    Same arguments as :func:`hf_file`; returns the snapshot folder.
    """
    from huggingface_hub import snapshot_download

    offline = local_files_only or is_offline()
    commit = cached_commit(repo_id, revision, cache_dir) if offline else None
    try:
        path = snapshot_download(
            repo_id, revision=commit or revision, cache_dir=cache_dir, local_files_only=offline, token=token,
            allow_patterns=allow_patterns, endpoint=os.environ.get("HF_ENDPOINT") or None,
        )  # fmt: skip
    except Exception as exc:  # noqa: BLE001
        raise _hub_error(exc, repo_id, None, revision, offline) from exc
    return Path(path)


def hub_cache_folder(repo_id: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """The cache folder of a model repo: ``<cache>/models--ORG--NAME`` (huggingface_hub's layout)."""
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    root = Path(cache_dir) if cache_dir is not None else Path(constants.HF_HUB_CACHE)
    return root / repo_folder_name(repo_id=repo_id, repo_type="model")


def cached_commit(repo_id: str, revision: str | None, cache_dir: str | os.PathLike | None = None) -> str | None:
    """The commit a branch or tag points to in the local Hub cache, read the way a person may have written it.

    ``refs/<revision>`` is read with surrounding whitespace removed, so a cache staged by hand
    (``echo <sha> > refs/main`` leaves a newline, which huggingface_hub would take as part of the hash)
    resolves. Returns ``None`` when the repo is not cached at all, or ``revision`` is already a commit
    (huggingface_hub then reports what is missing).

    Raises:
        OfflineError: the repo is cached but ``refs/<revision>`` is not (that branch or tag never was).
        CacheError: a refs file that holds no 40-hex commit, or names a commit whose snapshot folder is
            absent, or a snapshot file whose blob is missing; the message names the file or folder to fix.
    """
    import re

    rev = revision or "main"
    folder = hub_cache_folder(repo_id, cache_dir)
    if re.fullmatch(r"[0-9a-f]{40}", rev):
        _check_links(folder / "snapshots" / rev)
        return None
    ref = folder / "refs" / rev
    if not folder.is_dir():
        return None
    if not ref.is_file():
        raise OfflineError(
            f"{repo_id}@{rev} is not in the local Hub cache: {ref} does not exist (the cache has "
            f"{_listing(folder / 'refs') or 'no refs'}); write the commit hash of a folder in "
            f"{folder / 'snapshots'} into it, or unset HF_HUB_OFFLINE and load it once",
            repo_id=repo_id, revision=revision, path=ref,
        )  # fmt: skip
    text = ref.read_text(errors="replace")
    commit = text.strip()
    if not re.fullmatch(r"[0-9a-f]{40}", commit):
        raise CacheError(
            f"{ref} holds {text[:60]!r}, not a 40-character commit hash; write the name of a folder in "
            f"{folder / 'snapshots'} into it",
            repo_id=repo_id, revision=revision, path=ref,
        )  # fmt: skip
    if not (folder / "snapshots" / commit).is_dir():
        raise CacheError(
            f"{ref} points to commit {commit}, but {folder / 'snapshots' / commit} does not exist; copy that "
            f"snapshot (and its blobs) into the cache, or correct {ref} (snapshots present: "
            f"{_listing(folder / 'snapshots') or 'none'})",
            repo_id=repo_id, revision=revision, path=ref,
        )  # fmt: skip
    _check_links(folder / "snapshots" / commit)
    return commit


def _listing(folder: Path) -> str:
    return ", ".join(sorted(p.name for p in folder.iterdir())[:5]) if folder.is_dir() else ""


def _check_links(snapshot: Path) -> None:
    """Raise :class:`OfflineError` naming a snapshot file whose blob is missing (a half-copied cache)."""
    for file in sorted(snapshot.rglob("*")) if snapshot.is_dir() else []:
        if file.is_symlink() and not file.exists():
            raise CacheError(
                f"{file} in the local Hub cache points to {os.readlink(file)}, which does not exist; copy the "
                f"repo's blobs folder along with its snapshots",
                path=file,
            )


def _hub_error(
    exc: Exception, repo_id: str, filename: str | None, revision: str | None, offline: bool
) -> Exception:
    """Translate a huggingface_hub exception into a one-line medhub error (never mentions a token)."""
    from huggingface_hub import errors

    if not isinstance(exc, (OSError, errors.EntryNotFoundError, errors.HfHubHTTPError, ValueError)):
        return exc  # a programming error: let it surface unchanged
    what = f"{repo_id}{'/' + filename if filename else ''}@{revision or 'main'}"
    endpoint = hub_endpoint()
    if offline and isinstance(
        exc, (errors.LocalEntryNotFoundError, FileNotFoundError, errors.EntryNotFoundError)
    ):
        return OfflineError(
            f"{what} is not in the local Hub cache and offline mode is on; unset HF_HUB_OFFLINE (or pass "
            f"local_files_only=False) and load it once from {endpoint} to cache it",
            repo_id=repo_id,
            filename=filename,
            revision=revision,
        )
    reason = "request_failed"
    if isinstance(exc, errors.RepositoryNotFoundError):
        reason, detail = (
            "repo_not_found",
            f"repository {repo_id} not found on {endpoint} (if it is private, set HF_TOKEN)",
        )
    elif isinstance(exc, errors.RevisionNotFoundError):
        reason, detail = "revision_not_found", f"revision {revision} not found in {repo_id} on {endpoint}"
    elif isinstance(exc, (errors.RemoteEntryNotFoundError, errors.EntryNotFoundError)) and not isinstance(
        exc, errors.LocalEntryNotFoundError
    ):
        reason = "file_not_found"
        detail = f"{filename or 'file'} not found in {repo_id}@{revision or 'main'} on {endpoint}"
    elif isinstance(exc, errors.LocalEntryNotFoundError):
        reason = "unreachable"
        detail = f"cannot reach {endpoint} for {what} and it is not cached; check the network and HF_ENDPOINT"
    else:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        detail = f"Hub request for {what} at {endpoint} failed: {first}"
    return HubError(detail, repo_id=repo_id, filename=filename, revision=revision, reason=reason)
