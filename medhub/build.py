"""The only module that imports timm: create models, load weights strictly, adapt head and first conv.

The strict load contract: after conversion every key is accounted for. The only allowed differences are
the classifier (re-initialised when ``num_classes`` differs or the source had none), an adapted first
conv (``in_chans=1`` sums the RGB filters; other counts repeat them and rescale by ``3 / in_chans``) and
what a timm option legitimately changes (:func:`fit_to_arch`): position embeddings resampled for another
``img_size``, patch embeddings for another ``patch_size``, Swin relative-position tables for another window,
and ``global_pool="avg"`` on a ViT (a new ``fc_norm``, the pre-training ``norm`` unused). ``features_only``
and ``out_indices`` are applied as timm applies them: the full model is checked and loaded, then wrapped and
pruned by timm's feature extractor. Anything else raises :class:`~medhub.errors.ConversionError` listing the
unexpected and missing keys; every resample and drop is written into the report.

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

from medhub.convert._core import pool_hint, stem_hint
from medhub.errors import ConversionError, UsageError

logger = logging.getLogger(__name__)

_REINIT_OK = ("fc_norm.",)  # pooling norms a source trained with token pooling never had
FEATURE_OPTIONS = ("features_only", "out_indices", "feature_cls")
"""timm.create_model options that wrap the built model in a feature extractor (timm pops them the same way)."""
RESAMPLE = dict(interpolation="bicubic", antialias=True)
"""timm's defaults in its ViT checkpoint filter (vision_transformer.checkpoint_filter_fn)."""


def fresh_allowed(key: str) -> bool:
    """True for keys the contract lets start new besides the classifier (``fc_norm.`` of average pooling)."""
    return key.startswith(_REINIT_OK)


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
    token_grid: tuple[int, int] | None = None
    """Patch grid ``(rows, cols)`` of a model with absolute position embeddings (ViT family), else None."""
    pos_prefix_tokens: int = 0
    """Leading entries of ``pos_embed`` that are not patch positions (class / distillation tokens)."""

    @property
    def classifier_keys(self) -> set[str]:
        return {k for k in self.shapes if k.startswith(tuple(f"{c}." for c in self.classifier))}


def architecture_spec(arch: str, **arch_kwargs: Any) -> ArchSpec:
    """Key shapes, classifier and first-conv names of ``timm.create_model(arch, **arch_kwargs)``.

    Feature-extractor options (:data:`FEATURE_OPTIONS`) are left out: weights are checked against the full
    model, which timm builds first and prunes after loading.
    """
    model_kwargs, _ = split_feature_options(arch_kwargs)
    return _cached_spec(arch, _Frozen(model_kwargs))


def split_feature_options(kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(model kwargs, feature-extractor kwargs)``; the second is empty unless ``features_only`` is true."""
    model = {k: v for k, v in kwargs.items() if k not in FEATURE_OPTIONS}
    features = {k: v for k, v in kwargs.items() if k in FEATURE_OPTIONS}
    if not features.get("features_only"):
        if features:
            unused = ", ".join(sorted(set(features) - {"features_only"}))
            if unused:
                raise UsageError(f"{unused} only applies with features_only=True; add it or drop {unused}")
        features = {}
    return model, features


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
    except (TypeError, AssertionError, ValueError, KeyError) as exc:  # timm refuses an option for this arch
        options = ", ".join(f"{k}={v!r}" for k, v in kwargs.value.items())
        detail = (str(exc).splitlines() or [type(exc).__name__])[0][:160]
        raise UsageError(
            f"timm cannot build '{arch}'" + (f" with {options}" if options else "")
            + f" ({detail}); drop or change that option (medhub convert --model-arg)"
        ) from None
    cfg = dict(model.pretrained_cfg)
    classifier = cfg.get("classifier") or ()
    classifier = (classifier,) if isinstance(classifier, str) else tuple(classifier)
    grid = getattr(getattr(model, "patch_embed", None), "grid_size", None)
    has_pos = isinstance(getattr(model, "pos_embed", None), torch.Tensor) and grid is not None
    return ArchSpec(
        arch=arch,
        shapes={k: tuple(v.shape) for k, v in model.state_dict().items()},
        classifier=classifier,
        first_conv=_first(cfg.get("first_conv")),
        pretrained_cfg=cfg,
        token_grid=(int(grid[0]), int(grid[1])) if has_pos else None,
        # as timm's checkpoint filter counts them: none when the class token carries no position
        pos_prefix_tokens=0 if getattr(model, "no_embed_class", False) else int(getattr(model, "num_prefix_tokens", 1)),
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
        UsageError: ``num_classes``, ``in_chans`` or ``img_size`` outside :data:`medhub.bounds.BOUNDS`, or an
            option that ``arch`` does not take.
    """
    import timm

    from medhub import bounds

    bounds.check("num_classes", num_classes)
    bounds.check("in_chans", in_chans)
    bounds.check("img_size", timm_kwargs.get("img_size") if isinstance(timm_kwargs.get("img_size"), int) else None)
    model_kwargs, feature_kwargs = split_feature_options(timm_kwargs)
    spec = architecture_spec(arch, **model_kwargs)
    heads = (classifier,) if classifier else spec.classifier
    conv = first_conv or spec.first_conv
    state = dict(state_dict or {})
    report = LoadReport(arch=arch)
    if conversion is not None:
        report.renamed = dict(conversion.renamed)
        report.dropped = list(conversion.dropped)
        report.adapted = list(conversion.adapted)
        report.conversion = conversion.to_dict()
    if state_dict is not None:
        state = fit_to_arch(state, spec, report.adapted, report.dropped)
    source_classes = _source_classes(state, heads)
    if num_classes is not None:
        target_classes = num_classes
    elif state_dict is None:  # an untrained model: timm's default head
        target_classes = (
            spec.shapes[f"{spec.classifier[0]}.weight"][0]
            if spec.classifier and (f"{spec.classifier[0]}.weight" in spec.shapes)
            else 0
        )
    else:  # keep the source's classifier (any size), or none when it had none
        target_classes = source_classes or 0
    source_chans = state[f"{conv}.weight"].shape[1] if conv and f"{conv}.weight" in state else 3
    target_chans = in_chans or source_chans
    kwargs = dict(pretrained=False, num_classes=target_classes, in_chans=target_chans, **model_kwargs)
    layout = (heads, conv, source_classes)
    if feature_kwargs:
        model = _build_features(arch, kwargs, feature_kwargs, state if state_dict is not None else None, layout,
                                report)  # fmt: skip
        target_classes = 0
    elif state_dict is None:
        model = timm.create_model(arch, **kwargs)
        if prepare is not None:
            prepare(model)
    else:
        model = _build_and_load(arch, kwargs, state, layout, report, fast_init, prepare)
    report.loaded = len(state) + len(report.missing)  # fresh keys count as loaded, as they always have
    model.pretrained_cfg = model.default_cfg = _fill_cfg(
        model, pretrained_cfg, target_classes, target_chans, keep_labels=report.classifier.startswith("kept"),
        img_size=model_kwargs.get("img_size"),
    )
    model.eval()
    logger.info("loaded %s\n%s", arch, report.summary())
    return model, report


def fit_to_arch(
    state: dict[str, torch.Tensor], spec: ArchSpec, adapted: list[str], dropped: list[str]
) -> dict[str, torch.Tensor]:
    """Adapt the tensors a timm option legitimately changes, with timm's own functions; log each change.

    * ``patch_embed.proj.weight`` with another kernel (``patch_size=``): ``timm.layers.resample_patch_embed``
      (FlexiViT's pseudo-inverse of a bicubic, antialiased resize).
    * ``pos_embed`` with another number of positions (``img_size=``/``patch_size=``): the patch grid is
      resampled by ``timm.layers.resample_abs_pos_embed`` (bicubic, antialiased), the class/distillation
      tokens kept; the same call and arguments as timm's ViT ``checkpoint_filter_fn``.
    * Swin ``relative_position_bias_table`` for another window: SimMIM's geometric resize
      (:func:`medhub.convert.official.resize_relative_position_tables`).
    * ``global_pool="avg"`` on a ViT: timm then has ``fc_norm`` after the token average and no final ``norm``;
      the pre-training ``norm`` is dropped and ``fc_norm`` starts new, as in MAE's fine-tuning recipe.
    * floating tensors that are not float32 (float16, bfloat16, float64) are noted; the load casts them.

    Args:
        state: timm-named weights (not changed; a new dict is returned).
        spec: the destination architecture (:func:`architecture_spec`).
        adapted, dropped: report lists to append to (one line per change; dropped keys).

    Returns:
        The adapted state dict. A tensor already of the destination's shape is left as it is.

    Raises:
        ConversionError: a ``pos_embed`` whose patch positions do not form a square grid (its size unknown).
    """
    from timm.layers import resample_patch_embed

    from medhub.convert.official import resize_relative_position_tables

    state = dict(state)
    shapes = spec.shapes
    for key, value in list(state.items()):
        want = shapes.get(key)
        if want is None or tuple(value.shape) == tuple(want):
            continue
        if key.endswith("patch_embed.proj.weight") and value.ndim == 4 and len(want) == 4:
            if value.shape[0] == want[0] and tuple(value.shape[2:]) != tuple(want[2:]):
                state[key] = resample_patch_embed(value, list(want[2:]), **RESAMPLE)
                adapted.append(
                    f"{key}: patch {value.shape[2]}x{value.shape[3]} -> {want[2]}x{want[3]} by timm's "
                    "resample_patch_embed (pseudo-inverse of a bicubic antialiased resize, as FlexiViT)"
                )
        elif key == "pos_embed" and spec.token_grid and value.ndim == 3 and value.shape[2] == want[2]:
            state[key] = _resample_positions(value, spec, adapted)
    resize_relative_position_tables(state, shapes, adapted)
    norm = ["norm.weight", "norm.bias"]
    if "fc_norm.weight" in shapes and "norm.weight" not in shapes and "norm.weight" in state and (
        "fc_norm.weight" not in state
    ):
        for key in norm:
            state.pop(key, None)
        dropped += [k for k in norm if k not in dropped]
        adapted.append(
            "global_pool='avg': the pre-training norm (norm.weight, norm.bias) is not used; fc_norm after the "
            "token average starts new (MAE's fine-tuning recipe)"
        )
    _note_precision(state, adapted)
    return state


def _note_precision(state: dict[str, torch.Tensor], adapted: list[str]) -> None:
    """One report line when floating tensors are not float32 (a model saved after ``.half()``): timm's
    float32 parameters take their values as stored (exact from float16/bfloat16, rounded from float64)."""
    kinds: dict[str, int] = {}
    for value in state.values():
        if value.is_floating_point() and value.dtype != torch.float32:
            name = str(value.dtype).removeprefix("torch.")
            kinds[name] = kinds.get(name, 0) + 1
    if kinds:
        stored = ", ".join(f"{count} {name}" for name, count in sorted(kinds.items()))
        line = f"{stored} tensors loaded into float32 parameters (values as stored)"
        if line not in adapted:
            adapted.append(line)


def _resample_positions(value: torch.Tensor, spec: ArchSpec, adapted: list[str]) -> torch.Tensor:
    """``pos_embed`` (1, prefix + h*w, dim) resampled to ``spec.token_grid`` as timm's ViT filter does."""
    import math

    from timm.layers import resample_abs_pos_embed

    prefix = spec.pos_prefix_tokens
    positions = value.shape[1] - prefix
    side = math.isqrt(max(positions, 0))
    if positions <= 0 or side * side != positions:
        raise ConversionError(
            f"pos_embed holds {positions} patch positions after {prefix} prefix token(s), not a square grid, "
            f"so its size is unknown; pass img_size= (and patch_size=) the checkpoint was trained with",
            arch=spec.arch,
        )
    grid = list(spec.token_grid)
    out = resample_abs_pos_embed(value, new_size=grid, old_size=[side, side], num_prefix_tokens=prefix, **RESAMPLE)
    adapted.append(
        f"pos_embed: {side}x{side} -> {grid[0]}x{grid[1]} patch grid ({prefix} prefix token(s) kept) by timm's "
        "resample_abs_pos_embed (bicubic, antialiased)"
    )
    return out


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


def _build_features(
    arch: str, kwargs: dict[str, Any], features: dict[str, Any], state: dict | None, layout: tuple,
    report: LoadReport,
) -> torch.nn.Module:
    """``features_only`` as timm does it: the full model is checked and loaded, then timm wraps and prunes it.

    The contract is applied to the full model (on the meta device); timm's own builder then receives the
    checked weights as its pretrained state dict, loads them into the full model and wraps it in the
    architecture's feature extractor (``FeatureListNet``, ``FeatureGetterNet``...), which prunes what no
    requested output needs.
    """
    import timm

    if state is None:
        return timm.create_model(arch, **kwargs, **features)
    with torch.device("meta"):
        full = timm.create_model(arch, **kwargs)
    _check_strictly(full, state, *layout, report)
    heads = _head_keys(state, layout[0])
    loaded = {k: v for k, v in state.items() if k not in heads}
    report.dropped += sorted(heads - set(report.dropped))
    report.missing = sorted(set(report.missing) - _head_keys(report.missing, layout[0]))
    source = layout[2]
    report.classifier = (
        f"none (features_only=True: timm's feature extractor has no classifier; source had {source or 'none'})"
    )
    # num_classes=-1 in the overlay never equals the extractor's 0, so timm loads without its classifier
    # check; input_size states the channels the (already adapted) first conv has, so timm leaves it alone
    size = tuple(full.pretrained_cfg.get("input_size") or (3, 224, 224))
    overlay = dict(state_dict=loaded, source="", num_classes=-1, input_size=(kwargs["in_chans"], *size[1:]))
    model = timm.create_model(arch, **{**kwargs, "pretrained": True}, pretrained_cfg_overlay=overlay, **features)
    for module in model.modules():  # the weights are in the model now: keep no second copy in a config
        cfg = getattr(module, "pretrained_cfg", None)
        if isinstance(cfg, dict):
            cfg.pop("state_dict", None)
    indices = tuple(getattr(getattr(model, "feature_info", None), "out_indices", None) or ()) or "timm's default"
    report.adapted.append(
        f"features_only: timm built the full model, loaded it, then wrapped it in {type(model).__name__} "
        f"(out_indices {indices}); layers after the last output and the classifier are pruned"
    )
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
        report.classifier = f"kept ({_classes(source_classes)})"
        weight = state.get(f"{heads[0]}.weight")
        if weight is not None and not weight.is_meta and not bool(weight.count_nonzero()):
            report.classifier = (
                f"kept ({_classes(source_classes)}; its weights are all zeros, so every input gets the same "
                "output: an untrained head)"
            )
    else:
        for key in sorted(source_heads):
            del state[key]
        report.dropped += sorted(source_heads)
        size = own[f"{heads[0]}.weight"].shape[0] if f"{heads[0]}.weight" in own else 0
        origin = f"source had {source_classes}" if source_heads else "source had none"
        report.classifier = f"re-initialised ({_classes(size)}; {origin})" if size else f"none ({origin})"
    weight_key = f"{conv}.weight" if conv else None
    if weight_key in state and weight_key in own and state[weight_key].shape[1] != own[weight_key].shape[1]:
        before = state[weight_key].shape[1]
        state[weight_key] = adapt_input_conv(own[weight_key].shape[1], state[weight_key], base_chans=before)
        how = "summed" if own[weight_key].shape[1] == 1 else "repeated and rescaled"
        report.adapted.append(f"{weight_key}: {before} -> {own[weight_key].shape[1]} input channels ({how})")
    unexpected = sorted(set(state) - set(own))
    missing = set(own) - set(state)
    fresh = sorted(k for k in missing if k in target_heads or fresh_allowed(k))
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
            + stem_hint({k: (state[k].shape, own[k].shape) for k in wrong})
            + pool_hint(unexpected, blocking),
            arch=report.arch,
            unexpected=unexpected,
            missing=blocking,
        )
    report.missing = fresh
    return fresh


def _classes(count: int | None) -> str:
    return f"{count} class" if count == 1 else f"{count} classes"


def _short(keys: list[str], limit: int = 12) -> str:
    more = f" … (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def _fill_cfg(
    model: torch.nn.Module, overrides: dict | None, classes: int, chans: int, keep_labels: bool,
    img_size: int | tuple[int, int] | None = None,
) -> dict[str, Any]:
    """The model's ``pretrained_cfg`` with medhub's overrides, head size, channels and (if built with one) size."""
    cfg = dict(getattr(model, "pretrained_cfg", {}) or {})
    for key in ("url", "hf_hub_id", "file", "tag", "state_dict", "source"):
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
