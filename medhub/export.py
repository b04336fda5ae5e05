"""A model folder timm loads as it is: ``model.safetensors`` + ``config.json``.

``timm.create_model("local-dir:<folder>", pretrained=True)`` (or ``hf-hub:<org>/<name>`` once uploaded)
rebuilds the architecture from ``config.json`` (``architecture``, ``num_classes``, ``model_args``) and
loads the weights. The ``medhub`` block records provenance (source format, conversion summary). Both files
are written atomically. Research software, not a medical device.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from medhub._io import atomic_write_bytes, atomic_write_text
from medhub.errors import ConversionError

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
_CFG_KEYS = (
    "input_size",
    "test_input_size",
    "fixed_input_size",
    "interpolation",
    "crop_pct",
    "crop_mode",
    "mean",
    "std",
    "first_conv",
    "classifier",
    "pool_size",
    "license",
    "num_classes",
    "label_names",
)


def write_model_folder(
    out_dir: str | Path,
    state_dict: dict[str, torch.Tensor],
    *,
    arch: str,
    num_classes: int,
    label_names: list[str] | None = None,
    pretrained_cfg: dict[str, Any] | None = None,
    model_args: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``model.safetensors`` and ``config.json`` into ``out_dir`` and return the folder.

    Args:
        out_dir: destination folder (created).
        state_dict: timm-named weights.
        arch: timm architecture name.
        num_classes: classifier size (0 for a headless backbone).
        label_names: class names, one per output.
        pretrained_cfg: mean/std, input_size, interpolation, crop_pct, first_conv, classifier...
        model_args: extra ``timm.create_model`` arguments the weights need (``depths``, ``img_size``...).
        extra: the ``medhub`` block (source format, conversion report, licence...).
    """
    from safetensors.torch import save

    out = Path(out_dir)
    if label_names is not None and len(label_names) != num_classes:
        raise ConversionError(f"{len(label_names)} label names for {num_classes} classes; give one per class")
    out.mkdir(parents=True, exist_ok=True)
    cfg = {k: _jsonable(v) for k, v in (pretrained_cfg or {}).items() if k in _CFG_KEYS}
    cfg["num_classes"] = num_classes
    cfg.pop("label_names", None)
    config: dict[str, Any] = {"architecture": arch, "num_classes": num_classes}
    if label_names:
        config["label_names"] = list(label_names)
    config["pretrained_cfg"] = cfg
    if model_args:
        config["model_args"] = _jsonable(model_args)
    config["medhub"] = {"note": "Research software, not a medical device.", **_jsonable(extra or {})}
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state_dict.items()}
    atomic_write_bytes(out / WEIGHTS_NAME, save(tensors, metadata={"format": "pt"}))
    atomic_write_text(out / CONFIG_NAME, json.dumps(config, indent=2) + "\n")
    return out


def read_model_folder(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a folder written by :func:`write_model_folder`: ``(state_dict, config)``."""
    from safetensors.torch import load_file

    folder = Path(path)
    weights, config = folder / WEIGHTS_NAME, folder / CONFIG_NAME
    for needed in (weights, config):
        if not needed.is_file():
            raise ConversionError(
                f"{folder} has no {needed.name}; a model folder needs {WEIGHTS_NAME} and "
                f"{CONFIG_NAME} (write one with `medhub convert`)",
                path=str(folder),
            )
    try:
        cfg = json.loads(config.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ConversionError(
            f"{config} is not valid JSON ({exc.msg}, line {exc.lineno})", path=str(config)
        ) from None
    return load_file(str(weights)), cfg


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)
