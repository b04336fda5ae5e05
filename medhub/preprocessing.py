"""A checkpoint's input contract as a timm ``pretrained_cfg``, and the torchvision transforms that honour it.

The transforms follow timm's evaluation recipe (resize the short side to ``size / crop_pct``, centre crop,
normalise) and a light training recipe (random resized crop and horizontal flip; no colour jitter, which
rarely suits medical images). Images are first converted to the channel count the network expects, so a
grayscale X-ray feeds a 3-channel network and an RGB file feeds a 1-channel one.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from medhub.errors import UsageError

if TYPE_CHECKING:  # pragma: no cover
    from medhub.schema import Checkpoint

INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos", "box", "hamming")


def fit_stats(values: tuple[float, ...] | list[float], channels: int) -> tuple[float, ...]:
    """Per-channel mean or std for ``channels`` inputs: averaged to one, or cycled to more."""
    values = tuple(float(v) for v in values)
    if len(values) == channels:
        return values
    if channels == 1:
        return (sum(values) / len(values),)
    return tuple(values[i % len(values)] for i in range(channels))


def pretrained_cfg_for(
    entry: Checkpoint, *, num_classes: int | None = None, in_chans: int | None = None
) -> dict[str, Any]:
    """The timm ``pretrained_cfg`` of a registry entry, for a model with ``num_classes``/``in_chans``."""
    prep, head = entry.preprocessing, entry.head
    channels = in_chans or prep.input_size[0]
    classes = head.num_classes if num_classes is None else num_classes
    cfg: dict[str, Any] = {
        "architecture": entry.arch,
        "medhub_id": entry.id,
        "input_size": (channels, *prep.input_size[1:]),
        "mean": fit_stats(prep.mean, channels),
        "std": fit_stats(prep.std, channels),
        "interpolation": prep.interpolation,
        "crop_pct": prep.crop_pct,
        "crop_mode": "center",
        "num_classes": classes or 0,
        "first_conv": head.first_conv,
        "classifier": head.classifier,
        "license": entry.licence.weights,
    }
    if head.label_names and classes == head.num_classes:
        cfg["label_names"] = tuple(head.label_names)
    return cfg


class ToChannels:
    """Convert a PIL image (or an HxW[xC] uint8 array) to ``L`` for one channel or ``RGB`` for three."""

    def __init__(self, channels: int) -> None:
        if channels not in (1, 3):
            raise UsageError(
                f"image transforms support 1 or 3 input channels, not {channels}; pass in_chans=1 or 3"
            )
        self.mode = "L" if channels == 1 else "RGB"

    def __call__(self, image: Any) -> Any:
        from PIL import Image

        if not isinstance(image, Image.Image):
            image = Image.fromarray(image)
        return image if image.mode == self.mode else image.convert(self.mode)

    def __repr__(self) -> str:
        return f"ToChannels(mode={self.mode!r})"


def build_transforms(cfg: dict[str, Any], *, train: bool = False) -> Any:
    """torchvision ``Compose`` for a ``pretrained_cfg`` (input_size, mean, std, interpolation, crop_pct).

    >>> cfg = {"input_size": (1, 224, 224), "mean": (0.5,), "std": (0.25,), "interpolation": "bilinear"}
    >>> build_transforms(cfg).transforms[0]
    ToChannels(mode='L')
    """
    from torchvision import transforms as T

    channels, height, width = cfg.get("input_size", (3, 224, 224))
    interpolation = str(cfg.get("interpolation") or "bicubic")
    if interpolation not in INTERPOLATIONS:
        raise UsageError(f"unknown interpolation '{interpolation}'; use one of {', '.join(INTERPOLATIONS)}")
    mode = T.InterpolationMode(interpolation)
    steps: list[Any] = [ToChannels(channels)]
    if train:
        steps += [T.RandomResizedCrop((height, width), interpolation=mode), T.RandomHorizontalFlip()]
    else:
        crop_pct = float(cfg.get("crop_pct") or 1.0)
        if height == width:
            resize: Any = math.floor(height / crop_pct)
        else:
            resize = (math.floor(height / crop_pct), math.floor(width / crop_pct))
        steps += [T.Resize(resize, interpolation=mode), T.CenterCrop((height, width))]
    steps += [T.ToTensor(), T.Normalize(fit_stats(cfg["mean"], channels), fit_stats(cfg["std"], channels))]
    return T.Compose(steps)
