"""``medhub pack``: one byte-reproducible archive of converted checkpoints, their cards and registry entries."""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from medhub.errors import UsageError
from medhub.pack.archive import FORMAT, FORMAT_VERSION, sha256_of, write_archive
from medhub.pack.contents import CHECKPOINT_FILES, ENTRY_FILE, Prepared, Spec, check_terms, prepare, resolve


@dataclass(frozen=True)
class PackResult:
    """What :func:`pack` wrote."""

    path: Path
    sha256: str
    size: int
    ids: tuple[str, ...]
    created: str
    created_from: str
    sources: dict[str, str] = field(default_factory=dict)


def pack(
    names: list[str],
    out: str | os.PathLike,
    *,
    with_tasks: bool = False,
    accept_terms: bool = False,
    on_checkpoint: Callable[[str], None] | None = None,
) -> PackResult:
    """Write one archive holding the named checkpoints, converted as ``medhub.load`` builds them.

    Args:
        names: registry ids or aliases, model folders, ``hf-hub:ORG/NAME[@REV]`` names.
        out: the archive file (``.tar``), written atomically.
        with_tasks: add every registry task's description (data layout, splits, protocol) as
            ``tasks/<id>.yaml``; never any data.
        accept_terms: confirm that checkpoints whose licence or data terms limit redistribution may be
            copied (recorded in the manifest).
        on_checkpoint: called with each checkpoint's id before it is loaded (progress on a terminal).

    Returns:
        The archive's path, sha256 (publish it beside the file) and size in bytes.

    Raises:
        UsageError: nothing to pack, two names for one id, or terms not accepted.
        UnknownModelError, WeightsUnavailableError, HubError, OfflineError: a checkpoint that cannot be loaded.

    The archive is byte-reproducible: the creation time (in the manifest and every tar header) is
    ``SOURCE_DATE_EPOCH`` when set, else the newest modification time of the inputs (the registry files
    defining the ids, the folders' files, the Hub snapshot files).
    """
    from medhub import __version__
    from medhub.registry import load_registry

    if not names:
        raise UsageError("name at least one checkpoint to pack: a registry id, a folder or hf-hub:ORG/NAME")
    out = Path(out).expanduser()
    if out.is_dir():
        raise UsageError(f"-o {out} is a folder; give the archive's file name, e.g. -o {out / 'site.tar'}")
    registry = load_registry()
    specs = _unique([resolve(name, registry) for name in names])
    limits = check_terms(specs, accept_terms)
    epoch, created_from = creation_time(specs)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".medhub-pack-", dir=out.parent) as tmp:
        prepared = []
        for spec in specs:
            if on_checkpoint:
                on_checkpoint(spec.model_id)
            prepared.append(prepare(spec, Path(tmp) / "checkpoints"))
        files = {
            f"checkpoints/{p.entry.id}/{name}": p.folder / name for p in prepared for name in _write_entry(p)
        }
        task_ids = _write_tasks(registry, Path(tmp) / "tasks", files) if with_tasks else []
        members = []
        for name in sorted(files):
            size, digest = sha256_of(files[name])
            members.append({"path": name, "size": size, "sha256": digest})
        created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "medhub_version": __version__,
            "created": created,
            "created_from": created_from,
            "note": "Research software, not a medical device: never use it for clinical decisions.",
            "terms_accepted": bool(accept_terms and any(limits.values())),
            "checkpoints": [_manifest_entry(p, limits[p.entry.id], accept_terms) for p in prepared],
            "tasks": task_ids,
            "members": members,
        }
        digest = write_archive(out, manifest, files, epoch)
    return PackResult(
        out, digest, out.stat().st_size, tuple(p.entry.id for p in prepared), created, created_from,
        {p.entry.id: p.source for p in prepared},
    )  # fmt: skip


def creation_time(specs: list[Spec]) -> tuple[int, str]:
    """``(seconds since the epoch, where it came from)``: ``SOURCE_DATE_EPOCH``, else the newest input.

    ``SOURCE_DATE_EPOCH`` is the reproducible-builds.org convention (an integer number of seconds, UTC).

    Raises:
        UsageError: a ``SOURCE_DATE_EPOCH`` that is not a non-negative integer.
    """
    value = os.environ.get("SOURCE_DATE_EPOCH")
    if value is not None and value.strip():
        if not value.strip().isdigit():
            raise UsageError(
                f"SOURCE_DATE_EPOCH={value!r} is not a whole number of seconds; unset it or fix it"
            )
        return int(value.strip()), "SOURCE_DATE_EPOCH"
    times = [p.stat().st_mtime for spec in specs for p in spec.inputs if p.exists()]
    return (int(max(times)) if times else 0), "newest input file"


def _unique(specs: list[Spec]) -> list[Spec]:
    seen: dict[str, str] = {}
    for spec in specs:
        if spec.model_id in seen:
            raise UsageError(
                f"'{seen[spec.model_id]}' and '{spec.name}' are both checkpoint '{spec.model_id}'; name it once"
            )
        seen[spec.model_id] = spec.name
    return specs


def _write_entry(prepared: Prepared) -> tuple[str, ...]:
    """Write the checkpoint's registry entry beside its files (a one-entry registry file)."""
    body = prepared.entry.model_dump(mode="json", exclude_defaults=True, exclude={"id"})
    text = yaml.safe_dump(
        {"version": 1, "checkpoints": {prepared.entry.id: body}}, sort_keys=False, allow_unicode=True
    )
    (prepared.folder / ENTRY_FILE).write_text(text, encoding="utf-8")
    return (*CHECKPOINT_FILES, ENTRY_FILE)


def _write_tasks(registry, folder: Path, files: dict[str, Path]) -> list[str]:
    """Each task's registry entry (layout, splits, protocol) as ``tasks/<id>.yaml``; returns the ids."""
    folder.mkdir(parents=True, exist_ok=True)
    for task_id, task in sorted(registry.tasks.items()):
        body = task.model_dump(mode="json", exclude_defaults=True, exclude={"id"})
        path = folder / f"{task_id}.yaml"
        path.write_text(
            yaml.safe_dump({"version": 1, "tasks": {task_id: body}}, sort_keys=False, allow_unicode=True),
            encoding="utf-8",
        )
        files[f"tasks/{task_id}.yaml"] = path
    return sorted(registry.tasks)


def _manifest_entry(prepared: Prepared, limits: list[str], accept_terms: bool) -> dict:
    entry = prepared.entry
    return {
        "id": entry.id,
        "origin": prepared.spec.origin,
        "weights_from": prepared.source,
        "files": {name: f"checkpoints/{entry.id}/{name}" for name in (*CHECKPOINT_FILES, ENTRY_FILE)},
        "registry_entry": entry.model_dump(mode="json", exclude_defaults=True),
        "licence": entry.licence.model_dump(mode="json", exclude_none=True),
        "redistribution_limits": limits,
        "terms_accepted": bool(limits and accept_terms),
    }
