"""``medhub mirror PATTERN --endpoint URL``: registry checkpoints converted and published on a site Hub.

Each matching checkpoint is converted exactly as for ``medhub pack`` (``medhub.load``; downloads from the
usual sources), then its three files (model.safetensors, config.json, README.md card) are compared with
the head of ``<namespace>/<id>`` on the site Hub (a ``medhub serve`` or any Hub-compatible server): when
they are already there nothing is uploaded, else one commit is made. Either way the commit gets the tag
``medhub-<content hash>`` and the overlay pins a ``medhub_hf`` mirror of the id to it. A checkpoint that
fails (no source reachable, terms not accepted, upload refused) is recorded and the others go on.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from medhub.errors import MedhubError, UsageError
from medhub.pack.archive import sha256_of
from medhub.pack.contents import CHECKPOINT_FILES, WEIGHTS, prepare, redistribution_limits, resolve
from medhub.pack.install import SITE_OVERLAY, content_tag
from medhub.schema import Checkpoint, WeightSource


@dataclass(frozen=True)
class Mirrored:
    """One checkpoint on the site Hub: its repo, the pinned commit, whether this run uploaded it, weights sha256."""

    model_id: str
    repo: str
    commit: str
    uploaded: bool
    sha256: str


@dataclass(frozen=True)
class MirrorResult:
    """Every checkpoint mirrored, every one that failed (``(id, reason)``), and the overlay written."""

    done: tuple[Mirrored, ...]
    failed: tuple[tuple[str, str], ...]
    overlay: Path
    overlay_changed: bool


def mirror(
    pattern: str,
    endpoint: str,
    *,
    namespace: str = "medhub",
    overlay: str | os.PathLike | None = None,
    token: str | None = None,
    accept_terms: bool = False,
    on_result: Callable[[str, str], None] | None = None,
) -> MirrorResult:
    """Convert and publish every published registry checkpoint matching ``pattern`` to ``endpoint``.

    Args:
        pattern: shell-style pattern over ids and aliases (``resnet50_*``), or one id.
        endpoint: the site Hub's URL (``http://hub.site:8080``).
        namespace: where the repos go (``<namespace>/<id>``).
        overlay: the overlay file to write (default ``./medhub-site.yaml``).
        token: write token for the site Hub (default ``HF_TOKEN``).
        accept_terms: confirm copying checkpoints whose licence or data terms limit redistribution.
        on_result: called with ``(id, one-line outcome)`` after each checkpoint (progress on a terminal).

    Raises:
        UsageError: no published checkpoint matches ``pattern``.
    """
    from medhub.registry import load_registry, write_overlay

    registry = load_registry()
    entries = [e for e in registry.list_models(pattern) if e.published]
    if not entries:
        raise UsageError(f"no published checkpoint matches '{pattern}'; see medhub list")
    _check_endpoint(endpoint.rstrip("/"), f"{namespace}/{entries[0].id}", token)
    done, failed = [], []
    for entry in entries:
        try:
            result = _mirror_one(entry, registry, endpoint.rstrip("/"), namespace, token, accept_terms)
        except MedhubError as exc:
            failed.append((entry.id, str(exc)))
            outcome = f"FAILED: {exc}"
        else:
            done.append(result)
            outcome = f"{'uploaded' if result.uploaded else 'unchanged'} {result.repo}@{result.commit}"
        if on_result:
            on_result(entry.id, outcome)
    overlay_path = Path(overlay).expanduser() if overlay else Path(SITE_OVERLAY)
    mirrors = {
        m.model_id: (
            WeightSource(
                kind="medhub_hf",
                repo=m.repo,
                revision=m.commit,
                filename=WEIGHTS,
                format="timm",
                sha256=m.sha256,
            ),
        )  # fmt: skip
        for m in done
    }
    changed = (
        write_overlay(
            overlay_path,
            mirrors=mirrors,
            header="medhub site overlay (medhub mirror): copy to each machine's registry.d",
        )
        if mirrors
        else False
    )
    return MirrorResult(tuple(done), tuple(failed), overlay_path, changed)


def _check_endpoint(endpoint: str, probe: str, token: str | None) -> None:
    """Fail once, before any conversion, when the site Hub cannot be reached or refuses the token."""
    from medhub.errors import HubError
    from medhub.hub.upload import repo_head

    try:
        repo_head(probe, token=token, endpoint=endpoint)
    except HubError as exc:
        raise UsageError(f"{exc}; nothing was mirrored") from None


def _mirror_one(
    entry: Checkpoint, registry, endpoint: str, namespace: str, token: str | None, accept_terms: bool
) -> Mirrored:
    from medhub.hub.upload import create_tag, remote_files, repo_head, upload_folder
    from medhub.push import REPO_RE
    from medhub.serve.protocol import git_blob_oid

    limits = redistribution_limits(entry.licence)
    if limits and not accept_terms:
        raise UsageError(
            f"{'; '.join(limits)}: add --accept-terms to confirm that you may copy it to the site"
        )
    repo = f"{namespace}/{entry.id}"
    if not REPO_RE.match(repo):
        raise UsageError(f"'{repo}' is not a Hub repo id; pass another --namespace")
    with tempfile.TemporaryDirectory(prefix="medhub-mirror-") as tmp:
        prepared = prepare(resolve(entry.id, registry), Path(tmp))
        wanted = {name: _fingerprint(prepared.folder / name, git_blob_oid) for name in CHECKPOINT_FILES}
        head = repo_head(repo, token=token, endpoint=endpoint)
        if head and _same(remote_files(repo, head, token=token, endpoint=endpoint), wanted):
            commit, uploaded = head, False
        else:
            commit = upload_folder(
                prepared.folder, repo, token=token, endpoint=endpoint,
                commit_message=f"medhub mirror: {entry.id} ({entry.arch})",
            )  # fmt: skip
            uploaded = True
    create_tag(
        repo, content_tag({n: sha for n, (sha, _) in wanted.items()}), commit, token=token, endpoint=endpoint
    )
    return Mirrored(entry.id, repo, commit, uploaded, wanted[WEIGHTS][0])


def _fingerprint(path: Path, git_blob_oid) -> tuple[str, str]:
    """``(sha256, git blob id)`` of a file; the blob id is what a Hub reports for a non-LFS file."""
    _, sha = sha256_of(path)
    data = path.read_bytes() if path.stat().st_size < 10 * 1024 * 1024 else b""
    return sha, git_blob_oid(data) if data else ""


def _same(remote: dict[str, tuple[str | None, str]], wanted: dict[str, tuple[str, str]]) -> bool:
    """True when every wanted file is on the Hub with the same content (LFS sha256, else git blob id)."""
    for name, (sha, blob) in wanted.items():
        if name not in remote:
            return False
        remote_sha, remote_blob = remote[name]
        if (remote_sha or None) != sha and remote_blob != blob:
            return False
    return True
