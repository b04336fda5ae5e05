"""The only module that imports timm: create models, load weights strictly, adapt head and first conv.

The strict load contract: after conversion every key is accounted for. The only allowed differences are
the classifier (re-initialised when ``num_classes`` differs or the source had none) and an adapted first
conv (``in_chans=1`` sums the RGB filters; other counts repeat them and rescale by ``3 / in_chans``).
Anything else raises :class:`~medhub.errors.ConversionError` listing the unexpected and missing keys.

>>> model, report = create_model("resnet18", state, num_classes=5, in_chans=1)  # doctest: +SKIP
>>> print(report.summary())  # doctest: +SKIP
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from medhub.convert._core import stem_hint
from medhub.errors import ConversionError, UsageError

logger = logging.getLogger(__name__)

_REINIT_OK = ("fc_norm.",)  # pooling norms a source trained with token pooling never had


def architecture_state_keys(arch: str, **arch_kwargs) -> set[str]:
    """State-dict keys of ``timm.create_model(arch)``, built on the meta device (no memory, no weights)."""
    return set(architecture_spec(arch, **arch_kwargs).shapes)


@dataclass(frozen=True)
class ArchSpec:
    """What the loader needs to know about a timm architecture without building its weights."""

    arch: str
    shapes: dict[str, tuple[int, ...]]
    classifier: tuple[str, ...]
    first_conv: str | None
    pretrained_cfg: dict[str, Any]

    @property
    def classifier_keys(self) -> set[str]:
        return {k for k in self.shapes if k.startswith(tuple(f"{c}." for c in self.classifier))}


def architecture_spec(arch: str, **arch_kwargs: Any) -> ArchSpec:
    """Key shapes, classifier and first-conv names of ``timm.create_model(arch, **arch_kwargs)``."""
    return _cached_spec(arch, _Frozen(arch_kwargs))


class _Frozen:
    """Carries unhashable kwargs through lru_cache, keyed by their repr."""

    def __init__(self, value: dict) -> None:
        self.value = value

    def __hash__(self) -> int:
        return hash(repr(sorted(self.value.items())))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Frozen) and repr(sorted(self.value.items())) == repr(
            sorted(other.value.items())
        )


@functools.lru_cache(maxsize=64)
def _cached_spec(arch: str, kwargs: _Frozen) -> ArchSpec:
    import timm

    _require_arch(arch)
    try:
        with torch.device("meta"):
            model = timm.create_model(arch, pretrained=False, **kwargs.value)
    except TypeError as exc:  # a keyword the architecture does not take (convert --model-arg foo=1)
        if "argument" not in str(exc):
            raise
        given = ", ".join(f"{k}={v!r}" for k, v in kwargs.value.items()) or "none"
        raise UsageError(f"timm's {arch} refuses the arguments given ({given}): {str(exc).strip()}; "
                         "remove or fix that --model-arg", arch=arch) from None
    cfg = dict(model.pretrained_cfg)
    classifier = cfg.get("classifier") or ()
    classifier = (classifier,) if isinstance(classifier, str) else tuple(classifier)
    return ArchSpec(
        arch=arch,
        shapes={k: tuple(v.shape) for k, v in model.state_dict().items()},
        classifier=classifier,
        first_conv=_first(cfg.get("first_conv")),
        pretrained_cfg=cfg,
    )


def _first(name: str | list | tuple | None) -> str | None:
    return name if isinstance(name, str) or name is None else (name[0] if name else None)


def _require_arch(arch: str) -> None:
    import timm

    if not timm.is_model(arch):
        close = timm.list_models(f"*{arch.split('_')[0]}*")[:5]
        raise UsageError(
            f"timm has no architecture '{arch}'; similar: {', '.join(close) or 'none'}", arch=arch
        )


@dataclass
class LoadReport:
    """What loading did: the conversion's renames and drops, plus the head and first-conv decisions."""

    arch: str
    loaded: int = 0
    classifier: str = ""
    renamed: dict[str, str] = field(default_factory=dict)
    dropped: list[str] = field(default_factory=list)
    adapted: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    conversion: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable copy."""
        return asdict(self)

    def summary(self) -> str:
        """A few human-readable lines."""
        lines = [
            f"{self.arch}: {self.loaded} tensors loaded; {len(self.renamed)} renamed, "
            f"{len(self.dropped)} dropped; classifier {self.classifier}"
        ]
        lines += [f"adapted: {a}" for a in self.adapted]
        if self.missing:
            lines.append(f"initialised fresh: {', '.join(self.missing)}")
        return "\n".join(lines)


def create_model(
    arch: str,
    state_dict: dict[str, torch.Tensor] | None = None,
    *,
    num_classes: int | None = None,
    in_chans: int | None = None,
    classifier: str | None = None,
    first_conv: str | None = None,
    pretrained_cfg: dict[str, Any] | None = None,
    conversion: Any = None,
    fast_init: bool = True,
    prepare: Callable[[torch.nn.Module], Any] | None = None,
    **timm_kwargs: Any,
) -> tuple[torch.nn.Module, LoadReport]:
    """Build ``timm.create_model(arch)`` and load ``state_dict`` into it under the strict contract.

    Args:
        arch: timm architecture name.
        state_dict: timm-named weights (from :mod:`medhub.convert`); ``None`` builds an untrained model.
        num_classes: classifier size; ``None`` keeps the source's classifier, or none (0) if it had none.
        in_chans: input channels; ``None`` keeps the source's.
        classifier: classifier module name, when not timm's default for ``arch``.
        first_conv: first-conv module name, when not timm's default for ``arch``.
        pretrained_cfg: entries merged into ``model.pretrained_cfg`` (mean, std, input_size, label_names...).
        conversion: the :class:`~medhub.convert.ConversionReport` that produced ``state_dict``, folded into
            the load report.
        fast_init: with ``state_dict``, skip the random initialisation the weights overwrite (build on the
            meta device, initialise only fresh keys; see :mod:`medhub._fastinit`). Falls back to the
            ordinary build where that is not safe.
        prepare: called on the freshly built model before the weights are loaded, to change its layout in
            place (e.g. :func:`medhub.train.network.use_cifar_stem`); the contract then checks against the
            changed model. Implies the ordinary build (no fast init).
        **timm_kwargs: passed to ``timm.create_model`` (``depths``, ``img_size``, ``drop_path_rate``...).

    Returns:
        ``(model, report)``; the model is in eval mode with its ``pretrained_cfg`` filled.

    Raises:
        ConversionError: keys that are unexpected, missing (other than the classifier) or of other shapes.
        UsageError: ``num_classes``, ``in_chans`` or ``img_size`` outside :data:`medhub.bounds.BOUNDS`, or a
            keyword that ``arch`` does not take.
    """
    import timm

    from medhub import bounds

    bounds.check("num_classes", num_classes)
    bounds.check("in_chans", in_chans)
    bounds.check("img_size", timm_kwargs.get("img_size") if isinstance(timm_kwargs.get("img_size"), int) else None)
    spec = architecture_spec(arch, **timm_kwargs)
    heads = (classifier,) if classifier else spec.classifier
    conv = first_conv or spec.first_conv
    state = dict(state_dict or {})
    report = LoadReport(arch=arch)
    if conversion is not None:
        report.renamed = dict(conversion.renamed)
        report.dropped = list(conversion.dropped)
        report.adapted = list(conversion.adapted)
        report.conversion = conversion.to_dict()
    source_classes = _source_classes(state, heads)
    if num_classes is not None:
        target_classes = num_classes
    elif state_dict is None:  # an untrained model: timm's default head
        target_classes = (
            spec.shapes[f"{spec.classifier[0]}.weight"][0]
            if spec.classifier and (f"{spec.classifier[0]}.weight" in spec.shapes)
            else 0
        )
    else:  # keep the source's classifier, or none when it had none
        target_classes = source_classes or 0
    source_chans = state[f"{conv}.weight"].shape[1] if conv and f"{conv}.weight" in state else 3
    target_chans = in_chans or source_chans
    kwargs = dict(pretrained=False, num_classes=target_classes, in_chans=target_chans, **timm_kwargs)
    if state_dict is None:
        model = timm.create_model(arch, **kwargs)
        if prepare is not None:
            prepare(model)
    else:
        model = _build_and_load(arch, kwargs, state, (heads, conv, source_classes), report, fast_init, prepare)
    report.loaded = len(state) + len(report.missing)  # fresh keys count as loaded, as they always have
    model.pretrained_cfg = model.default_cfg = _fill_cfg(
        model, pretrained_cfg, target_classes, target_chans, keep_labels=report.classifier.startswith("kept"),
        img_size=timm_kwargs.get("img_size"),
    )
    model.eval()
    logger.info("loaded %s\n%s", arch, report.summary())
    return model, report


def _source_classes(state: dict[str, torch.Tensor], heads: tuple[str, ...]) -> int | None:
    for head in heads:
        weight = state.get(f"{head}.weight")
        if weight is not None:
            return int(weight.shape[0])
    return None


def _head_keys(keys: Any, heads: tuple[str, ...]) -> set[str]:
    return {k for k in keys if k.startswith(tuple(f"{h}." for h in heads))}


def _build_and_load(
    arch: str, kwargs: dict[str, Any], state: dict, layout: tuple, report: LoadReport, fast: bool,
    prepare: Callable[[torch.nn.Module], Any] | None = None,
) -> torch.nn.Module:
    """Build ``arch`` and load ``state`` strictly; with ``fast``, without the init the load overwrites."""
    import timm

    from medhub import _fastinit

    meta = _fastinit.build_on_meta(lambda: timm.create_model(arch, **kwargs)) if fast and not prepare else None
    model = meta.model if meta else timm.create_model(arch, **kwargs)
    if prepare is not None:
        prepare(model)
    fresh = _check_strictly(model, state, *layout, report)
    if meta:
        loaded = _fastinit.materialize(meta, state, fresh)
        if loaded is not None:
            return loaded
        model = timm.create_model(arch, **kwargs)
    own = model.state_dict()
    model.load_state_dict({**state, **{key: own[key] for key in fresh}}, strict=True)
    return model


def _check_strictly(
    model: torch.nn.Module,
    state: dict,
    heads: tuple[str, ...],
    conv: str | None,
    source_classes: int | None,
    report: LoadReport,
) -> list[str]:
    """Apply the strict contract to ``state`` (in place: drop a misfit head, adapt the first conv).

    Only key names and shapes of ``model`` are read, so it may live on the meta device. Returns the keys
    left to initialise fresh (classifier, ``fc_norm.``); raises ConversionError for anything else.
    """
    from timm.models import adapt_input_conv

    own = model.state_dict()
    source_heads, target_heads = _head_keys(state, heads), _head_keys(own, heads)
    head_fits = (
        bool(source_heads)
        and source_heads == target_heads
        and all(state[k].shape == own[k].shape for k in source_heads)
    )
    if head_fits:
        report.classifier = f"kept ({source_classes} classes)"
    else:
        for key in sorted(source_heads):
            del state[key]
        report.dropped += sorted(source_heads)
        size = own[f"{heads[0]}.weight"].shape[0] if f"{heads[0]}.weight" in own else 0
        origin = f"source had {source_classes}" if source_heads else "source had none"
        report.classifier = f"re-initialised ({size} classes; {origin})" if size else f"none ({origin})"
    weight_key = f"{conv}.weight" if conv else None
    if weight_key in state and weight_key in own and state[weight_key].shape[1] != own[weight_key].shape[1]:
        before = state[weight_key].shape[1]
        state[weight_key] = adapt_input_conv(own[weight_key].shape[1], state[weight_key], base_chans=before)
        how = "summed" if own[weight_key].shape[1] == 1 else "repeated and rescaled"
        report.adapted.append(f"{weight_key}: {before} -> {own[weight_key].shape[1]} input channels ({how})")
    unexpected = sorted(set(state) - set(own))
    missing = set(own) - set(state)
    fresh = sorted(k for k in missing if k in target_heads or k.startswith(_REINIT_OK))
    wrong = sorted(k for k in set(state) & set(own) if state[k].shape != own[k].shape)
    blocking = sorted(missing - set(fresh))
    if unexpected or blocking or wrong:
        report.unexpected, report.missing = unexpected, blocking
        parts = [
            f"{len(unexpected)} unexpected keys: {_short(unexpected)}" if unexpected else "",
            f"{len(blocking)} missing keys: {_short(blocking)}" if blocking else "",
            (
                f"{len(wrong)} keys of another shape: "
                + _short([f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in wrong])
            )
            if wrong
            else "",
        ]
        raise ConversionError(
            f"weights do not fit '{report.arch}' ({'; '.join(p for p in parts if p)}); check the architecture "
            "(and its depth/width/heads/window) or the checkpoint format"
            + stem_hint({k: (state[k].shape, own[k].shape) for k in wrong}),
            arch=report.arch,
            unexpected=unexpected,
            missing=blocking,
        )
    report.missing = fresh
    return fresh


def _short(keys: list[str], limit: int = 12) -> str:
    more = f" … (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def _fill_cfg(
    model: torch.nn.Module, overrides: dict | None, classes: int, chans: int, keep_labels: bool,
    img_size: int | tuple[int, int] | None = None,
) -> dict[str, Any]:
    """The model's ``pretrained_cfg`` with medhub's overrides, head size, channels and (if built with one) size."""
    cfg = dict(getattr(model, "pretrained_cfg", {}) or {})
    for key in ("url", "hf_hub_id", "file", "tag"):
        cfg.pop(key, None)
    cfg.update(overrides or {})
    if not keep_labels and len(cfg.get("label_names") or ()) != classes:
        cfg.pop("label_names", None)
    cfg["num_classes"] = classes
    cfg.setdefault("input_size", (3, 224, 224))
    if img_size is not None:  # a model built for another size (Swin, ViT) only takes that size
        height, width = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        cfg["input_size"] = (chans, height, width)
        cfg.pop("test_input_size", None)
    for key in ("input_size", "test_input_size", "min_input_size"):
        if cfg.get(key):
            cfg[key] = (chans, *tuple(cfg[key])[1:])
    for stat in ("mean", "std"):
        values = tuple(cfg.get(stat) or ())
        if values and len(values) != chans:
            cfg[stat] = (
                (sum(values) / len(values),) * chans
                if chans == 1 or len(set(values)) == 1
                else tuple(values[i % len(values)] for i in range(chans))
            )
    return cfg


def load_npz_state(path: Path, arch: str, **arch_kwargs: Any) -> dict[str, torch.Tensor]:
    """Read a JAX/big_vision ViT ``.npz`` with timm's own loader and return the timm state dict."""
    import timm
    from timm.models.vision_transformer import VisionTransformer, _load_weights

    _require_arch(arch)
    model = timm.create_model(arch, pretrained=False, **arch_kwargs)
    if not isinstance(model, VisionTransformer):
        raise ConversionError(
            f"timm reads .npz weights only into VisionTransformer models, not '{arch}'",
            arch=arch,
            path=str(path),
        )
    try:
        _load_weights(model, str(path))
    except (KeyError, ValueError, RuntimeError) as exc:
        raise ConversionError(f"{path.name} does not fit '{arch}' ({exc}); check --arch", arch=arch) from None
    return model.state_dict()
