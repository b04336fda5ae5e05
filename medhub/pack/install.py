"""``medhub unpack``: verify a pack, then install it into medhub's cache or into a ``medhub serve`` store.

Nothing is written before the whole archive has been verified (:func:`medhub.pack.archive.verify_archive`)
and the import planned (every entry validated, every id checked against the local registry, the disk space
counted). Every file is then written atomically, hashed again on the way; a second run of the same archive
finds everything in place and writes nothing.

- ``--cache``: each checkpoint's files go to ``$MEDHUB_HOME/packs/<id>/<sha256[:16]>/`` and the overlay
  ``~/.config/medhub/registry.d/packs.yaml`` names ``model.safetensors`` as a ``local`` mirror of the id
  (tried first), so ``medhub.load(ID)`` works with ``HF_HUB_OFFLINE=1``.
- ``--to-store DIR``: each checkpoint becomes the repo ``<namespace>/<id>`` of the store (created if
  missing) with one commit holding model.safetensors, config.json and README.md, and a tag
  ``medhub-<content hash>``; the overlay (default ``./medhub-site.yaml``) pins a ``medhub_hf`` mirror to that
  commit, so every machine with ``HF_ENDPOINT`` pointing at the server loads it.

Ids the local registry knows get a mirror; others get the packed registry entry with the new source.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from medhub.errors import ArchiveError, UsageError
from medhub.pack.archive import VerifiedArchive, copy_member, member_bytes, verify_archive
from medhub.pack.contents import CHECKPOINT_FILES, ENTRY_FILE, WEIGHTS
from medhub.schema import Checkpoint, Task, WeightSource

CACHE_OVERLAY = "packs.yaml"
SITE_OVERLAY = "medhub-site.yaml"
AUTHOR = "medhub unpack"


@dataclass(frozen=True)
class Item:
    """One checkpoint of the archive, planned: its entry, its members, and mirror vs new entry."""

    entry: Checkpoint
    members: dict[str, str]  # file name -> member path
    weights_sha256: str
    known: bool  # the local registry defines the id: add a mirror, not an entry


@dataclass(frozen=True)
class UnpackResult:
    """What :func:`unpack` did; ``written`` is 0 when the archive was already installed."""

    archive: Path
    mode: str
    ids: tuple[str, ...]
    overlay: Path
    overlay_changed: bool
    written: int
    locations: dict[str, str]  # id -> folder (cache) or repo@commit (store)
    terms: dict[str, list[str]] = field(default_factory=dict)
    tasks: tuple[str, ...] = ()


def unpack(
    archive: str | os.PathLike,
    *,
    to_store: str | os.PathLike | None = None,
    overlay: str | os.PathLike | None = None,
    namespace: str = "medhub",
) -> UnpackResult:
    """Verify ``archive``, then install it into the medhub cache (default) or into the store ``to_store``.

    Args:
        archive: a file written by :func:`medhub.pack.pack`.
        to_store: a ``medhub serve --root`` folder (created if missing); None fills the medhub cache.
        overlay: the registry overlay to write; default ``~/.config/medhub/registry.d/packs.yaml`` (cache)
            or ``./medhub-site.yaml`` (store).
        namespace: the store's namespace for the new repos (``<namespace>/<id>``).

    Raises:
        ArchiveError: a damaged, tampered or hostile archive (nothing is written).
        UsageError: an id the local registry defines differently, a bad namespace, too little disk space.
        RegistryError: ``overlay`` exists but is not a registry file (nothing is written).
    """
    from medhub.registry import user_overlay_dir

    verified = verify_archive(archive)
    store_root = Path(to_store).expanduser() if to_store is not None else None
    default = Path(SITE_OVERLAY) if store_root else user_overlay_dir() / CACHE_OVERLAY
    overlay_path = Path(overlay).expanduser() if overlay else default
    items, new_tasks = plan(verified, overlay_path)
    _check_overlay(overlay_path)
    if store_root is not None:
        repos = {item.entry.id: _repo_ref(namespace, item.entry.id) for item in items}
        _check_store_root(store_root)
        _check_space(store_root, verified, items)
        written, sources = _into_store(verified, items, store_root, repos)
    else:
        from medhub.cache import cache_root

        root = cache_root() / "packs"
        _check_space(root, verified, items)
        written, sources = _into_cache(verified, items, root)
    changed = _write_overlay(overlay_path, items, sources, new_tasks, mode="store" if store_root else "cache")
    manifest = verified.manifest
    return UnpackResult(
        verified.path, "store" if store_root else "cache", tuple(i.entry.id for i in items), overlay_path, changed,
        written, {i.entry.id: _location(sources[i.entry.id]) for i in items},
        {c["id"]: list(c.get("redistribution_limits") or []) for c in manifest["checkpoints"] if c.get("terms_accepted")},
        tuple(t.id for t in new_tasks),
    )  # fmt: skip


# ---- planning (reads only) ---------------------------------------------------------------------------------


def plan(verified: VerifiedArchive, overlay_path: Path) -> tuple[list[Item], list[Task]]:
    """Validate the manifest's checkpoints and tasks against the archive and the local registry.

    The local registry is read without ``overlay_path`` (the file this import rewrites), so a repeated
    import plans the same thing.

    Raises:
        ArchiveError: a manifest entry that does not validate or does not match its files.
        UsageError: a packed id that the local registry defines with another architecture.
    """
    registry = _registry_without(overlay_path)
    checkpoints = verified.manifest.get("checkpoints")
    if not isinstance(checkpoints, list) or not checkpoints:
        raise _bad(verified, "the manifest lists no checkpoints")
    items, seen = [], set()
    for raw in checkpoints:
        item = _item(verified, raw, registry)
        if item.entry.id in seen:
            raise _bad(verified, f"checkpoint '{item.entry.id}' is listed twice")
        seen.add(item.entry.id)
        items.append(item)
    return items, _tasks(verified, registry)


def _item(verified: VerifiedArchive, raw: Any, registry) -> Item:
    if not isinstance(raw, dict) or not isinstance(raw.get("registry_entry"), dict):
        raise _bad(verified, "a checkpoint of the manifest has no registry entry")
    try:
        entry = Checkpoint(**raw["registry_entry"])
    except (ValidationError, TypeError) as exc:
        raise _bad(
            verified,
            f"the registry entry of '{raw.get('id')}' does not validate ({str(exc).splitlines()[0]})",
        ) from None
    files = raw.get("files")
    if not isinstance(files, dict):
        raise _bad(verified, f"checkpoint '{entry.id}' has no 'files' mapping in the manifest")
    members = {name: files.get(name) for name in (*CHECKPOINT_FILES, ENTRY_FILE)}
    absent = [
        name
        for name, member in members.items()
        if not isinstance(member, str) or member not in verified.members
    ]
    if absent or raw.get("id") != entry.id:
        raise _bad(
            verified, f"checkpoint '{entry.id}' lacks {', '.join(absent) or 'a matching id'} in the archive"
        )
    packed = _yaml_member(verified, members[ENTRY_FILE])
    body = raw["registry_entry"]
    if not isinstance(packed, dict) or (packed.get("checkpoints") or {}).get(entry.id) != {
        k: v for k, v in body.items() if k != "id"
    }:
        raise _bad(
            verified,
            f"the registry entry of '{entry.id}' differs between manifest.json and its registry.yaml",
        )
    known = entry.id in registry.checkpoints or entry.id in registry.aliases
    if known:
        local = registry.get_model(entry.id)
        if (local.arch, dict(local.arch_kwargs)) != (entry.arch, dict(entry.arch_kwargs)):
            raise UsageError(
                f"the pack's '{entry.id}' is a {entry.arch} {dict(entry.arch_kwargs) or ''}but this machine's "
                f"registry defines it as a {local.arch}; install the medhub version that made the pack "
                f"({verified.manifest.get('medhub_version')}) and unpack again"
            )
    return Item(entry, members, verified.members[members[WEIGHTS]].sha256, known)


def _tasks(verified: VerifiedArchive, registry) -> list[Task]:
    """Tasks of the archive that the local registry does not define (those go into the overlay)."""
    found = []
    for task_id in verified.manifest.get("tasks") or []:
        member = f"tasks/{task_id}.yaml"
        if member not in verified.members:
            raise _bad(verified, f"task '{task_id}' is listed but {member} is not in the archive")
        if task_id in registry.tasks:
            continue
        data = _yaml_member(verified, member) or {}
        try:
            found.append(Task(id=task_id, **(data.get("tasks") or {})[task_id]))
        except (ValidationError, TypeError, KeyError, AttributeError) as exc:
            raise _bad(
                verified, f"{member} does not describe task '{task_id}' ({str(exc).splitlines()[0]})"
            ) from None
    return found


def _yaml_member(verified: VerifiedArchive, member: str) -> Any:
    """A verified member parsed as UTF-8 YAML (safe loader); ArchiveError when it is not."""
    try:
        return yaml.safe_load(member_bytes(verified, member).decode("utf-8"))
    except (UnicodeDecodeError, yaml.YAMLError) as exc:
        reason = " ".join(str(exc).split())[:160]
        raise _bad(verified, f"{member} is not a UTF-8 YAML registry file ({reason})") from None


def _check_overlay(path: Path) -> None:
    """The overlay this import rewrites is absent or a registry file: checked before anything is written.

    Raises:
        RegistryError: it is a folder, unreadable, not YAML or not a registry mapping.
    """
    from medhub.registry import read_yaml

    if path.exists():
        read_yaml(path)


def _registry_without(overlay_path: Path):
    from medhub.registry import builtin_registry_path, merge, overlay_paths

    skip = overlay_path.resolve()
    return merge([builtin_registry_path(), *(p for p in overlay_paths() if p.resolve() != skip)])


def _repo_ref(namespace: str, model_id: str):
    from medhub.serve.protocol import ProtocolError, make_repo

    try:
        return make_repo("models", namespace, model_id)
    except ProtocolError as exc:
        raise UsageError(
            f"cannot make store repo {namespace}/{model_id}: {exc.message}; pass another --namespace"
        ) from None


def _check_store_root(root: Path) -> None:
    if (
        root.exists()
        and any(root.iterdir())
        and not ((root / "blobs").is_dir() and (root / "repos").is_dir())
    ):
        raise UsageError(
            f"{root} is not a medhub serve folder (no blobs/ and repos/); give the folder of medhub serve --root"
        )


def _check_space(root: Path, verified: VerifiedArchive, items: list[Item]) -> None:
    need = sum(verified.members[m].size for item in items for m in item.members.values())
    probe = root
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if need > free:
        raise UsageError(
            f"unpacking needs {need / 1e9:.2f} GB but {probe} has {free / 1e9:.2f} GB free; free space and retry"
        )


def _bad(verified: VerifiedArchive, reason: str) -> ArchiveError:
    return ArchiveError(
        f"{verified.path}: refused, nothing was written: {reason}; ask for the pack again", path=verified.path
    )


# ---- the medhub cache ----------------------------------------------------------------------------------------


def _into_cache(
    verified: VerifiedArchive, items: list[Item], root: Path
) -> tuple[int, dict[str, WeightSource]]:
    written, sources = 0, {}
    for item in items:
        folder = root / item.entry.id / item.weights_sha256[:16]
        for name, member in item.members.items():
            written += _install_file(verified, member, folder / name)
        sources[item.entry.id] = WeightSource(
            kind="local", filename=str(folder / WEIGHTS), format="timm", sha256=item.weights_sha256,
            notes=f"unpacked from {verified.path.name}",
        )  # fmt: skip
    return written, sources


def _install_file(verified: VerifiedArchive, member: str, target: Path) -> int:
    """Copy a verified member to ``target`` atomically; 0 when an identical file is already there."""
    from medhub._io import atomic_open
    from medhub.pack.archive import sha256_of

    expected = verified.members[member]
    if (
        target.is_file()
        and target.stat().st_size == expected.size
        and sha256_of(target)[1] == expected.sha256
    ):
        return 0
    with atomic_open(target, "wb") as out:
        copy_member(verified, member, out)
    return 1


# ---- a medhub serve store --------------------------------------------------------------------------------------


def _into_store(
    verified: VerifiedArchive, items: list[Item], root: Path, repos: dict
) -> tuple[int, dict[str, WeightSource]]:
    from medhub.serve.storage import Store

    store = Store(root, exclusive=False)  # a running server keeps serving; repo locks order the writes
    written, sources = 0, {}
    for item in items:
        repo = repos[item.entry.id]
        commit, count = _import_repo(store, verified, item, repo)
        written += count
        sources[item.entry.id] = WeightSource(
            kind="medhub_hf", repo=repo.id, revision=commit, filename=WEIGHTS, format="timm",
            sha256=item.weights_sha256,
        )  # fmt: skip
    return written, sources


def content_tag(files: dict[str, str]) -> str:
    """The tag of a checkpoint's files: ``medhub-`` + 16 hex of the sha256 over ``name sha256`` lines."""
    text = "".join(f"{name} {sha}\n" for name, sha in sorted(files.items()))
    return "medhub-" + hashlib.sha256(text.encode()).hexdigest()[:16]


def _import_repo(store, verified: VerifiedArchive, item: Item, repo) -> tuple[str, int]:
    """The commit holding the checkpoint's files (made if needed) and its tag; ``(commit, writes)``."""
    from medhub.serve.protocol import ProtocolError

    wanted = {name: verified.members[item.members[name]].sha256 for name in CHECKPOINT_FILES}
    tag = content_tag(wanted)
    writes = 0
    if not store.exists(repo):
        store.create_repo(repo, private=False, author=AUTHOR)
        writes += 1
    refs = store.refs(repo)
    if tag in refs["tags"]:
        commit = refs["tags"][tag]
        if not _holds(store.commit(repo, commit).files, wanted):
            raise UsageError(
                f"tag {tag} of {repo.id} points to other files; delete the tag in the store and retry"
            )
        return commit, writes
    head = refs["branches"]["main"]
    if _holds(store.commit(repo, head).files, wanted):
        commit = head
    else:
        operations = [_operation(store, verified, item.members[name], name) for name in CHECKPOINT_FILES]
        commit = store.create_commit(
            repo, "main", operations, summary=f"medhub unpack: {item.entry.id} ({item.entry.arch})",
            description=f"from {verified.path.name}", author=AUTHOR,
        )  # fmt: skip
        writes += 1
    try:
        store.set_ref(repo, "tags", tag, commit, must_exist=False)
    except ProtocolError as exc:  # a concurrent import tagged it first
        if exc.status != 409:
            raise
    return commit, writes + 1


def _holds(files: dict, wanted: dict[str, str]) -> bool:
    return all(files.get(name, {}).get("sha256") == sha for name, sha in wanted.items())


def _operation(store, verified: VerifiedArchive, member: str, name: str):
    from medhub.serve.protocol import wants_lfs
    from medhub.serve.storage import file_entry
    from medhub.serve.tree import Operation

    info = verified.members[member]
    if not wants_lfs(name, info.size, b""):
        data = member_bytes(verified, member)
        if b"\0" not in data:
            return Operation("add", name, file_entry(info.sha256, info.size, lfs=False, data=data), data=data)
    if not store.has_blob(info.sha256, info.size):
        writer = store.blob_writer(info.sha256, info.size)
        try:
            copy_member(verified, member, writer)
            writer.finish()
        finally:
            writer.abort()
    return Operation("add", name, file_entry(info.sha256, info.size, lfs=True))


# ---- the overlay ---------------------------------------------------------------------------------------------


def _write_overlay(
    path: Path, items: list[Item], sources: dict[str, WeightSource], tasks: list[Task], *, mode: str
) -> bool:
    from medhub.registry import write_overlay

    mirrors = {i.entry.id: (sources[i.entry.id],) for i in items if i.known}
    entries = [
        i.entry.model_copy(update={"sources": (sources[i.entry.id],), "mirrors": ()})
        for i in items
        if not i.known
    ]
    header = (
        "medhub unpack --cache: checkpoints unpacked into this machine's medhub cache"
        if mode == "cache"
        else "medhub site overlay: checkpoints on the site's medhub serve; copy to each machine's registry.d"
    )
    return write_overlay(path, checkpoints=entries, mirrors=mirrors, tasks=tasks, header=header)


def _location(source: WeightSource) -> str:
    if source.kind == "local":
        return str(Path(source.filename or "").parent)
    return f"{source.repo}@{source.revision}"
