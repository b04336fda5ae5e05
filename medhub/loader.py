"""``medhub.load``: any registered checkpoint, Hub repo, folder or file, in one line, as a timm model.

The flow, one stage module per step::

    name ─► registry entry ─► weights (medhub.weights: source, download, verify, convert, cache)
         ─► build (medhub.build: timm model, strict load, head / first-conv adaptation) ─► model

Research software, not a medical device: never use its outputs for clinical decisions.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medhub.errors import UsageError

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from medhub.schema import Checkpoint

logger = logging.getLogger(__name__)

HF_PREFIX = "hf-hub:"
CHECKPOINT_SUFFIXES = (".safetensors", ".pth", ".pth.tar", ".pt", ".bin", ".npz", ".ckpt", ".tar")
FOLDER_PATTERNS = ["config.json", "model.safetensors"]  # what medhub.export.read_model_folder reads


@dataclass
class LoadSummary:
    """What ``load`` did, attached to the model as ``model.medhub_load_report``.

    Attributes:
        name: what the caller asked for.
        source: where the weights came from (``None`` for ``pretrained=False``).
        conversion: the converter's report (renamed / dropped / adapted keys), when a conversion ran.
        load: the strict load report from :func:`medhub.build.create_model` (missing / adapted keys).
        tried: sources that were skipped before the one used.
    """

    name: str
    source: str | None = None
    conversion: Any = None
    load: Any = None
    tried: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """A few human-readable lines: source, skipped sources, conversion and load reports."""
        lines = [f"loaded {self.name} from {self.source or 'nowhere (random init)'}"]
        lines += [f"skipped {t}" for t in self.tried]
        for part in (self.conversion, self.load):
            if part is not None:
                lines.append(part.summary() if hasattr(part, "summary") else str(part))
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()


def load(
    name_or_path: str | os.PathLike,
    *,
    num_classes: int | None = None,
    in_chans: int | None = None,
    pretrained: bool = True,
    revision: str | None = None,
    arch: str | None = None,
    fmt: str = "auto",
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
    prefix: str | None = None,
    key_map: Any = (),
    **timm_kwargs: Any,
) -> torch.nn.Module:
    """A timm model with pretrained weights, ready to fine-tune.

    Args:
        name_or_path: a registry id or alias, ``hf-hub:ORG/NAME[@REV]``, a checkpoint file (needs ``arch``),
            or a folder holding ``config.json`` and weights.
        num_classes: classifier outputs; a new head is initialised when it differs from the checkpoint's.
            Default: the checkpoint's own head (none for self-supervised backbones).
        in_chans: input channels; the first conv is adapted (1 sums the RGB filters).
        pretrained: False builds the architecture with random weights (the ``pretrained_cfg`` is still set).
        revision: Hub revision overriding the pinned one.
        arch: timm architecture, required for a bare checkpoint file.
        fmt: converter format for a checkpoint file (``auto`` detects it).
        cache_dir: medhub cache folder (default ``$MEDHUB_HOME`` or ``~/.cache/medhub``).
        local_files_only: use cached files only (also implied by ``HF_HUB_OFFLINE=1``).
        prefix: for a checkpoint file, the wrapper prefix to strip instead of searching for it (``'model.'``;
            ``'state_dict_ema/module.'`` also picks the container entry); recorded in the load report.
        key_map: for a checkpoint file, ``{regex: replacement}`` renames applied after the format's own
            (to the names the "do not fit" error lists); a key renamed to ``''`` is dropped (a projection
            head); recorded in the load report.
        **timm_kwargs: passed to ``timm.create_model`` (``drop_path_rate``, ``img_size``, ``patch_size``,
            ``global_pool``, ``features_only``, ``out_indices``...). Options that change shapes are applied
            to the weights with timm's own functions (position / patch embeddings resampled, feature
            extractors pruned after loading) and written into the load report.

    Returns:
        The model, with ``pretrained_cfg`` (mean/std, input size, ...) and ``medhub_load_report``.

    >>> import medhub
    >>> model = medhub.load("resnet50_imagenet1k", num_classes=5, in_chans=1)  # doctest: +SKIP
    >>> model.pretrained_cfg["input_size"], model.pretrained_cfg["mean"]  # doctest: +SKIP
    ((1, 224, 224), (0.449,))
    """
    from medhub import bounds

    bounds.check("num_classes", num_classes)  # before anything is downloaded
    bounds.check("in_chans", in_chans)
    options = dict(num_classes=num_classes, in_chans=in_chans, timm_kwargs=timm_kwargs)
    name = os.fspath(name_or_path)
    if (prefix is not None or key_map) and not Path(name).expanduser().is_file():
        raise UsageError(
            f"prefix= and key_map= apply to a checkpoint file, and {name} is not one; drop them (or pass the file)"
        )
    if name.startswith(HF_PREFIX):
        repo_id, _, rev = name[len(HF_PREFIX) :].partition("@")
        folder = _hub_folder(repo_id, rev or revision, cache_dir, local_files_only)
        return _load_folder(folder, name, arch=arch, pretrained=pretrained, **options)
    path = Path(name).expanduser()
    if path.is_dir():
        return _load_folder(path, name, arch=arch, pretrained=pretrained, **options)
    if path.is_file():
        return _load_file(path, arch=arch, fmt=fmt, pretrained=pretrained, prefix=prefix, key_map=key_map,
                          **options)  # fmt: skip

    if name.lower().endswith(CHECKPOINT_SUFFIXES) or os.sep in name:
        raise UsageError(f"no such file or folder: {name}; check the path (or use a registry id)", path=name)
    from medhub.registry import load_registry

    entry = load_registry().get_model(name)
    return _load_entry(
        entry, arch=arch, pretrained=pretrained, revision=revision, cache_dir=cache_dir,
        local_files_only=local_files_only, **options,
    )  # fmt: skip


def transforms(name_or_model: Any, *, train: bool = False, in_chans: int | None = None) -> Any:
    """torchvision transforms matching a checkpoint's preprocessing (size, crop, interpolation, mean/std).

    Images are converted to the channels the network expects first (a grayscale X-ray becomes 3-channel).

    Args:
        name_or_model: a registry id or alias, a model returned by :func:`load` (its ``pretrained_cfg``),
            or a ``pretrained_cfg`` dict.
        train: random resized crop + horizontal flip instead of resize + centre crop.
        in_chans: override the channel count (default: the checkpoint's, or the model's).

    >>> import medhub
    >>> medhub.transforms("resnet50_imagenet1k").transforms[1]
    Resize(size=256, interpolation=bilinear, max_size=None, antialias=True)
    """
    from medhub.preprocessing import build_transforms, pretrained_cfg_for

    if isinstance(name_or_model, str):
        from medhub.registry import load_registry

        cfg = pretrained_cfg_for(load_registry().get_model(name_or_model), in_chans=in_chans)
    else:
        cfg = (
            name_or_model
            if isinstance(name_or_model, dict)
            else getattr(name_or_model, "pretrained_cfg", None)
        )
        if not cfg or "mean" not in cfg:
            raise UsageError(
                "this object has no pretrained_cfg with mean/std; pass a registry id or a medhub.load model"
            )
        cfg = dict(cfg)
        if in_chans:
            cfg["input_size"] = (in_chans, *tuple(cfg.get("input_size", (3, 224, 224)))[1:])
    return build_transforms(cfg, train=train)


# ---- one function per kind of input -----------------------------------------------------------------------


def _load_entry(entry: Checkpoint, *, arch, pretrained, revision, cache_dir, local_files_only, num_classes,
                in_chans, timm_kwargs) -> torch.nn.Module:  # fmt: skip
    """A registry entry: resolve its weights, then build the timm model with its preprocessing."""
    from medhub.preprocessing import pretrained_cfg_for
    from medhub.weights import entry_weights

    if arch and arch != entry.arch:
        raise UsageError(f"'{entry.id}' is a {entry.arch}; drop arch='{arch}' or load a file with that arch")
    weights = None
    if pretrained:
        weights = entry_weights(
            entry, revision=revision, cache_dir=cache_dir, local_files_only=local_files_only
        )
    classes = entry.head.num_classes if num_classes is None else num_classes
    cfg = pretrained_cfg_for(entry, num_classes=classes, in_chans=in_chans)
    summary = LoadSummary(
        entry.id,
        source=weights.source if weights else None,
        conversion=weights.conversion if weights else None,
        tried=weights.tried if weights else [],
    )
    return _build(
        entry.arch, weights.state_dict if weights else None, summary,
        num_classes=classes, in_chans=in_chans, classifier=entry.head.classifier,
        first_conv=entry.head.first_conv, pretrained_cfg=cfg,
        timm_kwargs={**entry.arch_kwargs, **timm_kwargs},
    )  # fmt: skip


def _load_file(path: Path, *, arch, fmt, pretrained, num_classes, in_chans, timm_kwargs, prefix=None,
               key_map=()) -> torch.nn.Module:  # fmt: skip
    """A bare checkpoint file in any supported format: needs ``arch``."""
    from medhub.convert import convert_file

    if not arch:
        raise UsageError(
            f"{path} is a bare checkpoint: pass arch='<timm architecture>' (e.g. arch='resnet50')"
        )
    state_dict, report = (
        convert_file(path, fmt=fmt, arch=arch, prefix=prefix, key_map=key_map, **timm_kwargs)
        if pretrained
        else (None, None)
    )
    summary = LoadSummary(str(path), source=f"file {path}" if pretrained else None, conversion=report)
    return _build(
        arch, state_dict, summary, num_classes=num_classes, in_chans=in_chans, timm_kwargs=timm_kwargs
    )


def _load_folder(
    folder: Path, name: str, *, arch, pretrained, num_classes, in_chans, timm_kwargs
) -> torch.nn.Module:
    """A folder (local or a Hub snapshot) with ``config.json`` and timm-named weights."""
    from medhub.export import read_model_folder

    state_dict, config = read_model_folder(folder)
    arch = arch or config.get("architecture")
    if not arch:
        raise UsageError(f"{folder}/config.json names no 'architecture'; pass arch='<timm architecture>'")
    cfg = dict(config.get("pretrained_cfg") or {})
    cfg.setdefault("architecture", arch)
    saved_classes = config.get("num_classes")
    if config.get("label_names") and num_classes in (None, saved_classes):
        cfg["label_names"] = tuple(config["label_names"])
    classes = saved_classes if num_classes is None else num_classes
    cfg["num_classes"] = classes
    if in_chans and "mean" in cfg:
        from medhub.preprocessing import fit_stats

        cfg["mean"], cfg["std"] = fit_stats(cfg["mean"], in_chans), fit_stats(cfg["std"], in_chans)
        cfg["input_size"] = (in_chans, *tuple(cfg.get("input_size", (3, 224, 224)))[1:])
    summary = LoadSummary(name, source=f"folder {folder}" if pretrained else None)
    model = _build(
        arch, state_dict if pretrained else None, summary, num_classes=classes, in_chans=in_chans,
        pretrained_cfg=cfg, timm_kwargs={**(config.get("model_args") or {}), **timm_kwargs},
    )  # fmt: skip
    written = str((config.get("medhub") or {}).get("classifier") or "")
    if written.startswith("re-initialised") and summary.load.classifier.startswith("kept"):
        # the folder's head is the random one `medhub convert --num-classes` created: never call it trained
        summary.load.classifier = summary.load.classifier[:-1] + (
            "; created at random when the folder was written, never trained)"
        )
    return model


def _hub_folder(repo_id: str, revision: str | None, cache_dir, local_files_only: bool) -> Path:
    from medhub.cache import hf_cache_dir
    from medhub.hub import hf_snapshot

    if not repo_id or repo_id.count("/") != 1:
        raise UsageError(f"'{HF_PREFIX}{repo_id}' is not a Hub repo id; write hf-hub:ORG/NAME[@REVISION]")
    return hf_snapshot(
        repo_id, revision=revision, cache_dir=hf_cache_dir(cache_dir), local_files_only=local_files_only,
        allow_patterns=FOLDER_PATTERNS,
    )  # fmt: skip


def _build(arch: str, state_dict, summary: LoadSummary, *, num_classes, in_chans, timm_kwargs,
           classifier=None, first_conv=None, pretrained_cfg=None) -> torch.nn.Module:  # fmt: skip
    """Create the timm model through the strict build contract and attach the load summary."""
    from medhub.build import create_model

    timm_kwargs = dict(timm_kwargs)  # a saved config's model_args may repeat these; explicit values win
    in_chans = in_chans or timm_kwargs.pop("in_chans", None)
    saved_classes = timm_kwargs.pop("num_classes", None)
    num_classes = saved_classes if num_classes is None else num_classes
    model, report = create_model(
        arch, state_dict, num_classes=num_classes, in_chans=in_chans, classifier=classifier,
        first_conv=first_conv, pretrained_cfg=pretrained_cfg, conversion=summary.conversion, **timm_kwargs,
    )  # fmt: skip
    summary.load = report
    model.medhub_load_report = summary
    logger.info("loaded %s (%s) from %s", summary.name, arch, summary.source or "nowhere: random init")
    logger.debug("%s", summary)
    return model
