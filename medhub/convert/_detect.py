"""``fmt="auto"``: name the checkpoint family from its top-level entries and key names, with the evidence."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from medhub.convert._core import is_state_dict
from medhub.convert._locate import shared_prefix
from medhub.errors import ConversionError

_CONTAINERS = ("state_dict", "model", "teacher", "network", "state_dict_ema", "model_ema")


def weight_keys(obj: Mapping) -> list[str]:
    """Keys of the weights dict inside a checkpoint, with DataParallel / torch.compile wrappers removed.

    The first of the usual container entries that holds weights, else the largest dict of tensors anywhere
    in the file (``{'net': ...}``, ``{'checkpoint': {'model': ...}}``).
    """
    from medhub.convert._locate import tensor_dicts

    current = obj
    for _ in range(3):
        if is_state_dict(current):
            break
        entry = next((c for c in _CONTAINERS if isinstance(current.get(c), Mapping)), None)
        if entry is None:
            found = sorted(tensor_dicts(obj), key=lambda item: -len(item[1]))
            if not found:
                return []
            current = found[0][1]
            break
        current = current[entry]
    return [re.sub(r"^(module\.|_orig_mod\.)+", "", k) for k in map(str, current)]


def detect_path_format(path: str | Path) -> tuple[str, str] | None:
    """Formats recognisable from the path alone (foreign runtimes, JAX archives), else ``None``."""
    path = Path(path)
    if path.is_dir() and (any(path.glob("*.index")) or (path / "checkpoint").is_file()):
        return "simclr_tf", f"{path.name} is a TensorFlow checkpoint folder (.index files)"
    name = path.name.lower()
    if name.endswith(".ckpt.index") or re.search(r"\.ckpt-\d+(\.index|\.data-\d+-of-\d+)?$", name):
        return "simclr_tf", f"{path.name} is a TensorFlow checkpoint file"
    if name.endswith(".pkl"):
        return "byol_haiku", f"{path.name} is a raw Python pickle (.pkl), as BYOL's Haiku checkpoints are"
    if name.endswith(".npz"):
        return "jax_npz", f"{path.name} is a numpy archive (JAX/big_vision ViT weights)"
    return None


def detect_format(obj: Any, path: str | Path | None = None) -> tuple[str, str]:
    """Guess the format of a loaded checkpoint.

    Returns:
        ``(format name, reason)``; the reason names the entries or keys that decided it.

    Raises:
        ConversionError: when the object holds no weights at all.
    """
    if path is not None and (found := detect_path_format(path)):
        return found
    if not isinstance(obj, Mapping):
        raise ConversionError(
            f"the checkpoint holds a {type(obj).__name__}, not a dict of weights; "
            "save `model.state_dict()` instead"
        )
    top = set(map(str, obj))
    if {"teacher", "student"} <= top and _dino_teacher(obj["teacher"]):
        return "dino", "entries 'teacher' and 'student' (a DINO training checkpoint; the teacher is kept)"
    if {"lossMIN", "state_dict"} <= top:
        return (
            "jlianglab",
            "entries 'lossMIN' and 'state_dict' (a JLiang-lab BenchmarkTransferLearning checkpoint)",
        )
    if "state_dict_ema" in top or {"version", "arch", "state_dict"} <= top:
        return (
            "timm",
            "entries 'state_dict'/'state_dict_ema'/'version' (a timm train.py checkpoint; not the EMA)",
        )
    keys = weight_keys(obj)
    if not keys:
        raise ConversionError(f"no weights found in the checkpoint (entries: {', '.join(sorted(top)[:10])})")
    fmt, reason = _by_keys(keys, top)
    wrapper = shared_prefix(keys)
    if fmt == "timm" and wrapper:  # a known layout inside a wrapper module (a Lightning `model.` around MoCo)
        inner, why = _by_keys([k[len(wrapper) :] for k in keys], top)
        if inner != "timm":
            fmt, reason = inner, f"{why}, under the wrapper prefix '{wrapper}'"
    if "pytorch-lightning_version" in top:
        reason = f"a PyTorch Lightning checkpoint (its 'state_dict' entry); {reason}"
    return fmt, reason


def _dino_teacher(entry: Any) -> bool:
    """True when a ``teacher`` entry is laid out as DINO's MultiCropWrapper (``backbone.*``/``head.*``); a
    mean-teacher file's plain network keys are not DINO, and its two copies have no documented order."""
    return isinstance(entry, Mapping) and any(
        re.sub(r"^(module\.|_orig_mod\.)+", "", str(k)).startswith(("backbone.", "head.")) for k in entry
    )


def _has(keys: list[str], *prefixes: str) -> bool:
    return any(k.startswith(prefixes) for k in keys)


def _by_keys(keys: list[str], top: set[str]) -> tuple[str, str]:  # noqa: C901 - a flat decision list
    if _has(keys, "encoder_q."):
        return "moco", "keys 'encoder_q.*' (MoCo-style query/key encoders; the query encoder is kept)"
    if _has(keys, "base_encoder."):
        return "mocov3_vit", "keys 'base_encoder.*' and 'momentum_encoder.*' (MoCo-v3)"
    if _has(keys, "projection_head.", "prototypes."):
        return "swav", "keys 'projection_head.*'/'prototypes.*' (SwAV, DeepCluster-v2 or SeLa-v2)"
    if _has(keys, "backbone.body."):
        return "detectron_backbone", "keys 'backbone.body.*' (a torchvision detector's ResNet body)"
    if any(re.match(r"backbone\.\d+\.", k) for k in keys):
        return "radimagenet", "keys 'backbone.<index>.*' (RadImageNet's nn.Sequential ResNet)"
    if _has(keys, "encoder.") and _has(keys, "predictor."):
        return "simsiam", "keys 'encoder.*' and 'predictor.*' (SimSiam)"
    if _has(keys, "encoder.") and ({"model_ema", "opt"} & top or _has(keys, "head_jig", "jigsaw")):
        return (
            "pycontrast",
            "keys 'encoder.*' with 'head*' under 'model' (PyContrast; 'model' is kept, not model_ema)",
        )
    if _has(keys, "encoder.layers.") and _has(keys, "decoder.", "encoder.mask_token"):
        return "simmim_swin", "keys 'encoder.layers.*' with 'decoder.*'/'encoder.mask_token' (SimMIM Swin)"
    if _has(keys, "encoder.blocks.") and _has(keys, "decoder.", "encoder.mask_token"):
        raise ConversionError(
            "an 'encoder.blocks.*' checkpoint (SimMIM ViT/BEiT-style) is not supported yet; "
            "convert the Swin variant or use timm's beit loader"
        )
    if _has(keys, "decoder_embed", "decoder_blocks") and _has(keys, "blocks."):
        return "mae", "ViT keys with 'decoder_*' (an MAE encoder-decoder; decoder and mask_token dropped)"
    if any(re.search(r"(^|\.)(dino_head|ibot_head)\.", k) for k in keys) or (
        _has(keys, "blocks.", "backbone.blocks.") and _has(keys, "mask_token", "register_tokens", "backbone.mask_token")
    ):
        return "dinov2", (
            "ViT keys with 'mask_token'/'register_tokens' and no decoder (a DINOv2 backbone; its iBOT mask "
            "token is dropped)"
        )
    if _has(keys, "backbone.") and _has(keys, "projector."):
        return "barlowtwins", "keys 'backbone.*' and 'projector.*' (Barlow Twins training checkpoint)"
    if _has(keys, "backbone.") and (_has(keys, "head.mlp.", "head.last_layer.") or "teacher" in top):
        return "dino", "keys 'backbone.*' with a DINO head 'head.mlp'/'head.last_layer' (MultiCropWrapper; head dropped)"
    if _has(keys, "downsample_layers."):
        return "convnext_official", "keys 'downsample_layers.*' and 'stages.i.j.dwconv' (original ConvNeXt)"
    if any(re.match(r"layers\.\d+\.blocks\.\d+\.attn\.relative_position_index", k) for k in keys) or (
        "layers.0.downsample.reduction.weight" in keys
    ):
        return (
            "swin_official",
            "Swin keys with downsampling at the end of each stage (original Microsoft layout)",
        )
    if any(re.search(r"denselayer\d+\.(norm|conv|relu)\.[12]\.", k) for k in keys):
        return "torchvision", "legacy DenseNet keys 'denselayerN.norm.1' (old torchvision)"
    if "conv1.weight" in keys and "layer1.0.conv1.weight" in keys:
        return "torchvision", (
            "torchvision ResNet names with no wrapper (as Barlow Twins, DINO-ResNet and "
            "VICRegL publish theirs; identical to timm's)"
        )
    return "timm", (
        "no foreign layout recognised; keys taken as timm/torchvision names (the wrapper prefix is searched)"
    )
