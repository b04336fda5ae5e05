"""``medhub push``: check a checkpoint strictly, publish it with a card, and register it pinned to its commit.

The flow, one stage module per step::

    SRC (checkpoint file ─► medhub.convert | medhub folder ─► medhub.export)
        ─► strict load into the declared architecture (medhub.build.create_model)   nothing uploaded if this fails
        ─► folder: model.safetensors + timm config.json + README.md card (medhub.cards)
        ─► upload, commit id (medhub.hub.upload) ─► registry overlay pinned to that commit (medhub.registry)

>>> result = push("r18.safetensors", repo="lab/r18", arch="resnet18", model_id="resnet18_lab")  # doctest: +SKIP
>>> medhub.load(result.model_id)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medhub._io import sha256_file
from medhub.cards.card import render_card
from medhub.cards.catalog import card_context
from medhub.errors import ConversionError, UsageError
from medhub.registry import Registry, load_registry, user_overlay_dir, write_overlay_entry
from medhub.schema import ID_PATTERN, Checkpoint, Head, Licence, LineageStage, Preprocessing, WeightSource

if TYPE_CHECKING:  # pragma: no cover
    import torch

logger = logging.getLogger(__name__)

REPO_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*/[A-Za-z0-9][A-Za-z0-9_.\-]*$")
WEIGHTS_FILE = "model.safetensors"
OVERLAY_FILE = "user.yaml"


@dataclass(frozen=True)
class PushOptions:
    """What the user declared about the weights (everything optional but the repo)."""

    repo: str
    model_id: str | None = None
    arch: str | None = None
    fmt: str = "auto"
    private: bool = False
    base: str | None = (
        None  # registry checkpoint these weights descend from (lineage, licence, preprocessing)
    )
    data: str | None = None  # data token of a further stage trained on top of ``base``
    objective: str | None = None
    licence: str | None = None
    labels: tuple[str, ...] | None = None


@dataclass(frozen=True)
class PushResult:
    """What a push published and registered."""

    model_id: str
    repo: str
    commit: str
    sha256: str
    files: tuple[str, ...]
    overlay: Path


def push(src: str | Path, options: PushOptions) -> PushResult:
    """Publish ``src`` (a checkpoint file or a folder medhub wrote) to ``options.repo`` and register it.

    Raises:
        UsageError: bad repo/id/arch, or an id that the registry already has.
        ConversionError: weights that do not load strictly into the architecture (nothing is uploaded).
        HubError: the Hub refused the upload.
    """
    registry = load_registry()
    repo = _check_repo(options.repo)
    model_id = options.model_id or default_id(repo)
    _check_id_free(model_id, registry)
    base = registry.get_model(options.base) if options.base else None
    state_dict, config = _read_source(Path(src), options)
    arch = options.arch or config.get("architecture") or (base.arch if base else None)
    if not arch:
        raise UsageError(
            f"{src}: say which timm architecture the weights are for: --arch ARCH (e.g. resnet50)"
        )
    model = _strict_model(arch, state_dict, src)
    entry = checkpoint_entry(
        model_id, arch, model, config, base, options, WeightSource(kind="timm_hf", repo=repo),
        notes=(f"Published with medhub push to {options.repo}.",),
    )  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="medhub-push-") as tmp:
        folder = Path(tmp)
        files = write_folder(folder, model, entry)
        digest = sha256_file(folder / WEIGHTS_FILE)
        from medhub.hub.upload import upload_folder

        commit = upload_folder(
            folder, repo, private=options.private, commit_message=f"medhub push: {model_id} ({arch})"
        )
    pinned = WeightSource(
        kind="medhub_hf", repo=repo, revision=commit, filename=WEIGHTS_FILE, format="timm", sha256=digest
    )
    overlay = write_overlay_entry(entry.model_copy(update={"sources": (pinned,)}), OVERLAY_FILE)
    logger.info("registered %s in %s", model_id, overlay)
    return PushResult(model_id, repo, commit, digest, files, overlay)


# ---- checks before anything is uploaded -----------------------------------------------------------------


def default_id(repo: str) -> str:
    """A registry id from a repo name: ``lab/ResNet18-CXR`` -> ``resnet18-cxr``."""
    name = re.sub(r"[^a-z0-9_.\-]+", "_", repo.split("/")[-1].lower()).strip("_.-")
    if not re.match(ID_PATTERN, name):
        raise UsageError(f"cannot make a registry id from '{repo}'; pass --id NEW_ID")
    return name


def _check_repo(repo: str) -> str:
    if not REPO_RE.match(repo or ""):
        raise UsageError(f"--repo '{repo}' is not a Hub repo id; write ORG/NAME (e.g. my-lab/resnet50_cxr)")
    return repo


def _check_id_free(model_id: str, registry: Registry) -> None:
    """Refuse an id another registry file defines (re-pushing an id of the push overlay replaces it)."""
    if not re.match(ID_PATTERN, model_id):
        raise UsageError(f"--id '{model_id}' is not a valid id: lowercase letters, digits, '_', '.', '-'")
    if model_id in registry.aliases or model_id in registry.checkpoints:
        canonical = registry.aliases.get(model_id, model_id)
        origin = registry.origin.get(f"checkpoint:{canonical}")
        if origin is None or origin.resolve() != (user_overlay_dir() / OVERLAY_FILE).resolve():
            raise UsageError(
                f"checkpoint id '{model_id}' is already defined in {origin}; choose another --id"
            )


def _read_source(src: Path, options: PushOptions) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``(state_dict in timm keys, config.json dict)`` from a medhub folder or a checkpoint file."""
    if src.is_dir():
        if not (src / "config.json").is_file():
            raise UsageError(
                f"{src} is a folder without config.json; push a checkpoint file or a folder medhub wrote"
            )
        from medhub.export import read_model_folder

        return read_model_folder(src)
    if not src.is_file():
        raise UsageError(f"no such file or folder: {src}")
    if not options.arch and not options.base:
        raise UsageError(
            f"{src} is a bare checkpoint: pass --arch ARCH (the timm architecture it was trained as)"
        )
    from medhub.convert import convert_file

    arch = options.arch or load_registry().get_model(options.base).arch
    state_dict, report = convert_file(src, fmt=options.fmt, arch=arch)
    logger.info("%s", report.summary() if hasattr(report, "summary") else report)
    return state_dict, {}


def _strict_model(arch: str, state_dict: dict[str, torch.Tensor], src: str | Path) -> torch.nn.Module:
    """Load the weights strictly into ``arch`` with the classifier they carry (or none).

    Any missing, unexpected or mis-shaped key raises :class:`ConversionError` before anything is uploaded;
    so does a classifier that would have to be re-initialised (a push publishes the file's weights only).
    """
    from medhub.build import create_model

    model, report = create_model(arch, state_dict)
    if report.missing or report.classifier.startswith("re-initialised"):
        fresh = ", ".join(report.missing) or report.classifier
        raise ConversionError(
            f"{src} does not fully fit '{arch}': {fresh} would be freshly initialised; check --arch",
            arch=arch,
            missing=report.missing,
        )
    logger.info("strict load of %s into %s: %s", src, arch, report.summary())
    return model.eval()


# ---- what gets published --------------------------------------------------------------------------------


def checkpoint_entry(
    model_id: str,
    arch: str,
    model: torch.nn.Module,
    config: dict[str, Any],
    base: Checkpoint | None,
    options: PushOptions,
    source: WeightSource,
    *,
    notes: tuple[str, ...] = (),
) -> Checkpoint:
    """The registry entry of published weights (a push replaces its source by the pinned commit afterwards).

    Lineage, licence and preprocessing come from ``base`` when given, else from what a medhub folder's
    ``config.json`` recorded (its ``medhub`` block), else from the model's ``pretrained_cfg``.

    Raises:
        UsageError: ``options.labels`` that do not match the model's outputs.
    """
    cfg = {**dict(getattr(model, "pretrained_cfg", None) or {}), **dict(config.get("pretrained_cfg") or {})}
    recorded = config.get("medhub") or {}
    lineage = _lineage(base, options, recorded.get("lineage"))
    labels = options.labels or tuple(config.get("label_names") or ()) or None
    num_classes = int(getattr(model, "num_classes", 0) or 0)
    if labels and len(labels) != num_classes:
        raise UsageError(f"--labels names {len(labels)} classes but the weights have {num_classes} outputs")
    head = Head(
        classifier=cfg.get("classifier") or "fc",
        first_conv=cfg.get("first_conv") or "conv1",
        num_classes=num_classes,
        label_names=labels,
    )
    inherited = base.licence if base else _recorded_licence(recorded.get("licence"))
    licence = inherited.model_copy(update={"weights": options.licence}) if options.licence else inherited
    return Checkpoint(
        id=model_id,
        arch=arch,
        family=base.family if base else _family(arch),
        objective=lineage[-1].objective,
        lineage=lineage,
        sources=(source,),
        preprocessing=base.preprocessing if base and not config else _preprocessing(cfg),
        head=head,
        licence=licence,
        paper=base.paper if base and not options.data else None,
        benchmarks=base.benchmarks if base and not options.data else (),
        notes=notes,
    )


def _recorded_licence(recorded: Any) -> Licence:
    """The licence a medhub folder's config.json recorded (empty when absent or not readable)."""
    if not isinstance(recorded, dict):
        return Licence()
    fields = {k: v for k, v in recorded.items() if k in Licence.model_fields and isinstance(v, str)}
    return Licence(**fields)


def _family(arch: str) -> str:
    """``resnet18`` -> ``resnet``, ``swin_base_patch4_window7_224`` -> ``swin``."""
    match = re.match(r"[a-z]+", arch.lower())
    return match.group(0) if match else arch


def _lineage(
    base: Checkpoint | None, options: PushOptions, recorded: list | None
) -> tuple[LineageStage, ...]:
    """The base's stages (or those a medhub folder recorded), plus a stage for ``--data``."""
    if base:
        stages = tuple(base.lineage)
    else:
        stages = tuple(LineageStage(**stage) for stage in recorded or () if isinstance(stage, dict))
    if options.data:
        stages += (LineageStage(dataset=options.data, objective=options.objective or "supervised",
                                source=f"{options.repo} (medhub push)"),)  # fmt: skip
    if not stages:
        stages = (LineageStage(dataset="unknown", objective=options.objective or "unknown",
                               notes="not declared at push time (use --base and/or --data)"),)  # fmt: skip
    return stages


def _preprocessing(cfg: dict[str, Any]) -> Preprocessing:
    defaults = Preprocessing()
    input_size = tuple(cfg.get("input_size") or defaults.input_size)
    return Preprocessing(
        input_size=input_size,
        mean=tuple(cfg.get("mean") or defaults.mean),
        std=tuple(cfg.get("std") or defaults.std),
        interpolation=cfg.get("interpolation") or defaults.interpolation,
        crop_pct=float(cfg.get("crop_pct") or defaults.crop_pct),
    )


def write_folder(folder: Path, model: torch.nn.Module, entry: Checkpoint) -> tuple[str, ...]:
    """model.safetensors + timm-readable config.json + README.md card; returns the file names.

    Every file is a pure function of the model's tensors and the registry entry, so the same inputs give
    the same bytes (``medhub pack`` relies on it).
    """
    from medhub.export import write_model_folder
    from medhub.preprocessing import pretrained_cfg_for

    provenance = {
        "id": entry.id,
        "lineage": [stage.model_dump(mode="json", exclude_none=True) for stage in entry.lineage],
        "licence": entry.licence.model_dump(mode="json", exclude_none=True),
    }
    write_model_folder(
        folder,
        model.state_dict(),
        arch=entry.arch,
        num_classes=entry.head.num_classes or 0,
        label_names=list(entry.head.label_names) if entry.head.label_names else None,
        pretrained_cfg=pretrained_cfg_for(entry),
        model_args=dict(entry.arch_kwargs) or None,
        extra=provenance,
    )
    card = render_card(entry, card_context(entry, load_registry()))
    (folder / "README.md").write_text(card, encoding="utf-8")
    return tuple(sorted(p.name for p in folder.iterdir()))
