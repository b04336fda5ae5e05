"""What goes into a pack (or onto a site Hub) for one checkpoint, and the licence check that comes first.

A checkpoint is named three ways: a registry id (weights resolved, downloaded and converted by
:func:`medhub.load`, progress shown), a model folder medhub wrote (``config.json`` + ``model.safetensors``),
or ``hf-hub:ORG/NAME[@REV]``. Each becomes a folder of three files, all pure functions of the model's tensors
and its registry entry (:func:`medhub.push.write_folder`): ``model.safetensors`` (the state dict of the model
``medhub.load`` builds), a timm ``config.json`` and the ``README.md`` model card.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from medhub.errors import UsageError
from medhub.registry import Registry
from medhub.schema import Checkpoint, Licence, WeightSource

HF_PREFIX = "hf-hub:"
WEIGHTS = "model.safetensors"
CHECKPOINT_FILES = (WEIGHTS, "config.json", "README.md")  # what a Hub repo of the checkpoint holds
ENTRY_FILE = "registry.yaml"  # the checkpoint's registry entry, beside its files in a pack

# Wording that, in a weights licence or data terms, limits who may receive a copy. The registry's own
# values include "CC-BY-NC-4.0", "ASU GitHub Project License (non-commercial)", "MIT for academic use" and
# "ImageNet terms of access: non-commercial research and educational use".
_RESTRICTIVE = re.compile(
    r"\bnc\b|non-?commercial|research|academic|educational|terms of (access|use)|no[ -]?redistribut|"
    r"not (be )?redistribut|proprietary|not recorded|unknown|unverified",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Spec:
    """One checkpoint to pack, resolved but not yet converted.

    Attributes:
        name: what the user named (registry id, folder, ``hf-hub:`` name).
        model_id: the registry id it travels under.
        origin: where it came from, for the manifest (``registry``, ``hf-hub:ORG/NAME@COMMIT``, ``folder NAME``).
        entry: the registry entry (registry ids only; folders and Hub repos get theirs once loaded).
        folder: the model folder (folders and Hub snapshots only).
        source: the weight source recorded for folders and Hub repos.
        licence: the licence that travels with the weights.
        inputs: files the pack reads (their newest mtime is the default creation time).
    """

    name: str
    model_id: str
    origin: str
    entry: Checkpoint | None
    folder: Path | None
    source: WeightSource | None
    licence: Licence
    inputs: tuple[Path, ...]


@dataclass(frozen=True)
class Prepared:
    """A checkpoint converted into ``folder`` (model.safetensors, config.json, README.md)."""

    spec: Spec
    entry: Checkpoint
    folder: Path
    source: str  # where medhub.load took the weights from (its load report)


def redistribution_limits(licence: Licence) -> list[str]:
    """Why passing these weights on needs the user's explicit acceptance (empty when nothing limits it).

    A weights licence that is not recorded, or a weights licence or data terms that are non-commercial,
    research- or education-only, terms-of-access, or say they are not recorded or unverified, limit
    redistribution. Data terms that are not recorded at all (None) do not.
    """
    reasons = []
    if not licence.weights:
        reasons.append("the weights licence is not recorded, so redistribution rights are unknown")
    elif _RESTRICTIVE.search(licence.weights):
        reasons.append(f"weights licence '{licence.weights}'")
    if licence.data_terms and _RESTRICTIVE.search(licence.data_terms):
        reasons.append(f"data terms '{licence.data_terms}'")
    return reasons


def check_terms(specs: list[Spec], accept_terms: bool) -> dict[str, list[str]]:
    """The redistribution limits of each checkpoint; refuses when some exist and were not accepted.

    Raises:
        UsageError: a checkpoint whose terms limit redistribution, without ``accept_terms``.
    """
    limits = {spec.model_id: redistribution_limits(spec.licence) for spec in specs}
    limited = {k: v for k, v in limits.items() if v}
    if limited and not accept_terms:
        first, reasons = next(iter(limited.items()))
        others = (
            f" (and {len(limited) - 1} more: {', '.join(list(limited)[1:4])})" if len(limited) > 1 else ""
        )
        raise UsageError(
            f"'{first}' may not be passed on freely: {'; '.join(reasons)}{others}. Read the terms (medhub "
            "card ID), then add --accept-terms to confirm that you may copy it; the acceptance is recorded"
        )
    return limits


def resolve(name: str, registry: Registry, *, revision: str | None = None) -> Spec:
    """Find out what ``name`` is (registry id, folder or ``hf-hub:`` repo) without converting anything.

    Raises:
        UsageError: a folder without ``config.json`` or a malformed ``hf-hub:`` name.
        UnknownModelError: an unknown registry id (with suggestions).
        WeightsUnavailableError: a registry entry that only has a recipe.
    """
    if name.startswith(HF_PREFIX):
        return _hub_spec(name)
    path = Path(name).expanduser()
    if path.is_dir():
        return _folder_spec(name, path, origin=f"folder {path.resolve().name}", source=None)
    if os.sep in name or path.suffix:
        raise UsageError(f"no such folder: {name}; name a registry id, a model folder or hf-hub:ORG/NAME")
    entry = registry.get_model(name)
    if not entry.published:
        from medhub.weights import recipe_error

        raise recipe_error(entry)
    entry = entry.model_copy(update={"mirrors": ()})  # a site's own copies never travel
    defined_in = registry.origin.get(f"checkpoint:{entry.id}")
    return Spec(
        name, entry.id, "registry", entry, None, None, entry.licence, (defined_in,) if defined_in else ()
    )


def _hub_spec(name: str) -> Spec:
    from medhub.hub import hf_snapshot
    from medhub.loader import FOLDER_PATTERNS

    repo, _, revision = name[len(HF_PREFIX) :].partition("@")
    if repo.count("/") != 1:
        raise UsageError(f"'{name}' is not a Hub repo id; write hf-hub:ORG/NAME[@REVISION]")
    folder = hf_snapshot(repo, revision=revision or None, allow_patterns=FOLDER_PATTERNS)
    commit = folder.name  # a snapshot folder is named by its commit
    source = WeightSource(kind="timm_hf", repo=repo, revision=commit, filename=WEIGHTS, format="timm")
    return _folder_spec(name, folder, origin=f"{HF_PREFIX}{repo}@{commit}", source=source, repo=repo)


def _folder_spec(
    name: str, folder: Path, *, origin: str, source: WeightSource | None, repo: str | None = None
) -> Spec:
    import json

    from medhub.push import _recorded_licence, default_id

    config_path = folder / "config.json"
    if not config_path.is_file() or not (folder / WEIGHTS).is_file():
        raise UsageError(
            f"{name}: a model folder needs config.json and {WEIGHTS} (write one with medhub convert)"
        )
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UsageError(
            f"{config_path} is not valid JSON ({exc.msg}); fix or re-export the folder"
        ) from None
    recorded = config.get("medhub") or {}
    model_id = recorded.get("id") if isinstance(recorded.get("id"), str) else None
    model_id = model_id or default_id(repo or folder.resolve().name)
    if source is None:
        source = WeightSource(kind="local", filename=str(folder.resolve() / WEIGHTS), format="timm")
    inputs = tuple(p.resolve() for p in (config_path, folder / WEIGHTS))
    return Spec(
        name, model_id, origin, None, folder, source, _recorded_licence(recorded.get("licence")), inputs
    )


def prepare(spec: Spec, out: Path) -> Prepared:
    """Load the checkpoint exactly as :func:`medhub.load` does and write its three files into ``out/<id>``."""
    import medhub
    from medhub.push import PushOptions, checkpoint_entry, write_folder

    if spec.entry is not None:
        model = medhub.load(spec.model_id)
        entry = spec.entry
    else:
        from medhub.export import read_model_folder

        model = medhub.load(str(spec.folder))
        _, config = read_model_folder(spec.folder)
        repo = spec.source.repo if spec.source and spec.source.repo else f"local/{spec.model_id}"
        entry = checkpoint_entry(
            spec.model_id, config["architecture"], model, config, None, PushOptions(repo=repo),
            spec.source, notes=(f"Packed by medhub pack from {spec.origin}.",),
        )  # fmt: skip
    folder = out / spec.model_id
    write_folder(folder, model.eval(), entry)
    return Prepared(spec, entry, folder, model.medhub_load_report.source or "")
