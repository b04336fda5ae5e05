"""Segmentation networks of the benchmark papers, built with segmentation_models_pytorch (smp) on timm encoders.

The released code builds its networks with smp (BenchmarkTransferLearning @ 5656fec):

* **U-Net** for ResNet-50 (2021 paper; also the 2025 paper's ResNet-50 runs): ``smp.Unet('resnet50')``
  (``Version1/engine.py:198-201``; ``Version2/models.py:288-293``), decoder channels 256-128-64-32-16
  (``Version1/segmentation_models_pytorch/unet/model.py:56``), nearest-neighbour x2 upsampling in every
  decoder block (``unet/decoder.py:36``) and a 3x3 segmentation head (``unet/model.py:81-86``).
* **UperNet** for ConvNeXt and Swin (2025 paper): the repository's own ``UperNet_convnext`` /
  ``UperNet_swin`` (``Version2/convnext.py:236-259``; ``Version2/swin_transformer.py:756-785``). medhub uses
  smp's ``UPerNet`` with the released pyramid/FPN width (the first feature map's channels, ``fpn_out =
  feature_channels[0]``) and the backbones' released drop-path and layer-scale settings
  (:data:`RELEASED_BACKBONE_KWARGS`). Where smp's UperNet differs from the released one, see
  :data:`UPERNET_DIFFERENCES` (also printed in ``docs/protocols.md``).

The encoder is smp's ``tu-<timm arch>`` encoder; its weights come from :func:`medhub.load` (registry ids,
files, folders) or :func:`medhub.build.create_model` (``random:``), i.e. through medhub's strict load
contract, and are then copied tensor by tensor into the encoder by :func:`load_encoder`, which refuses any
encoder tensor left unfilled or any shape that differs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from medhub.errors import UsageError

log = logging.getLogger(__name__)

DECODERS = ("unet", "upernet")

# U-Net settings of the released smp fork (Version1/segmentation_models_pytorch/unet/model.py:56,81-86;
# unet/decoder.py:36); Version2 ships the same fork.
UNET_DECODER_CHANNELS = (256, 128, 64, 32, 16)
UNET_INTERPOLATION = "nearest"
UNET_HEAD_KERNEL = 3

# Backbone settings the released UperNet code sets when it builds the encoder:
# Version2/convnext.py:240-248 (ConvNeXt: drop_path_rate 0.4 base / 0.3 small / 0.4 tiny, layer-scale init 1.0)
# Version2/swin_transformer.py:759-773 (Swin: drop_path_rate 0.1 for base, small and tiny).
RELEASED_BACKBONE_KWARGS: dict[str, dict[str, float]] = {
    "convnext_base": {"drop_path_rate": 0.4, "ls_init_value": 1.0},
    "convnext_small": {"drop_path_rate": 0.3, "ls_init_value": 1.0},
    "convnext_tiny": {"drop_path_rate": 0.4, "ls_init_value": 1.0},
    "swin_base_patch4_window7_224": {"drop_path_rate": 0.1},
    "swin_small_patch4_window7_224": {"drop_path_rate": 0.1},
    "swin_tiny_patch4_window7_224": {"drop_path_rate": 0.1},
}

# The released UperNet's pyramid/FPN width is the channels of its first feature map (fpn_out =
# feature_channels[0]: Version2/convnext.py:242-250 -> 128 for ConvNeXt-B, 96 for -S/-T;
# Version2/swin_transformer.py:763-776 -> 256 for Swin-B, 192 for -S/-T, because the released Swin returns
# each stage *after* its patch merging, so its first map is 2 x embed_dim at stride 8).
RELEASED_UPERNET_WIDTH: dict[str, int] = {
    "convnext_base": 128, "convnext_small": 96, "convnext_tiny": 96,
    "swin_base_patch4_window7_224": 256, "swin_small_patch4_window7_224": 192,
    "swin_tiny_patch4_window7_224": 192,
}

UPERNET_DIFFERENCES: tuple[str, ...] = (
    "pyramid pooling bins: smp (1, 2, 3, 6); released (1, 2, 4, 6) (Version2/convnext.py:207)",
    "pyramid branch width: smp the decoder width per bin and a 3x3 conv-BN-ReLU to the decoder width; released "
    "in_channels/4 per bin, a 3x3 conv-BN-ReLU back to in_channels (1024 for ConvNeXt-B) and Dropout2d(0.1), then "
    "a plain 1x1 conv to the FPN width (Version2/convnext.py:206-233,181-182)",
    "FPN laterals: smp a 1x1 conv-BN-ReLU on every level; released none on the first level (already at the FPN "
    "width) and a plain 1x1 conv with bias on the others (Version2/convnext.py:181-182,192)",
    "FPN smoothing: smp one 3x3 conv-BN-ReLU per level; released a single 3x3 conv shared by all levels "
    "(nn.ModuleList([conv] * 3), Version2/convnext.py:183-184)",
    "bilinear resizing: smp align_corners=False inside the decoder and an x4 UpsamplingBilinear2d "
    "(align_corners=True) after a 1x1 head; released align_corners=True inside, a 3x3 head and a final "
    "align_corners=False resize to the input (Version2/convnext.py:198,204,251,258)",
    "feature norms: smp a LayerNorm on each feature map, as the released ConvNeXt's norm0-3 "
    "(Version2/convnext.py:121-125); the released Swin has none",
    "Swin feature maps: smp (timm) takes each stage before its patch merging (strides 4, 8, 16, 32; 128-1024 "
    "channels for Swin-B); the released Swin takes them after it (strides 8, 16, 32, 32; 256, 512, 1024, 1024), "
    "so its decoder works at stride 8, medhub's at stride 4 (Version2/swin_transformer.py:618-631,763)",
    "size (1 output map, measured by building both): ConvNeXt-B decoder and head 20.9 M parameters released (its "
    "pyramid bottleneck, a 3x3 conv 2048->1024, alone 18.9 M) vs 3.4 M in smp; Swin-B 23.5 M vs 10.1 M; the "
    "backbones are the same up to the released ConvNeXt's four output norms (3,840 parameters, in smp's decoder)",
)


@dataclass
class SegmentationSpec:
    """What :func:`build_segmentation_network` builds: decoder, timm encoder and the settings applied."""

    decoder: str
    arch: str
    encoder_kwargs: dict[str, Any] = field(default_factory=dict)
    decoder_kwargs: dict[str, Any] = field(default_factory=dict)
    source: str = ""

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready view for the plan."""
        data = {"decoder": self.decoder, "encoder": f"tu-{self.arch}", "encoder_kwargs": dict(self.encoder_kwargs),
                "decoder_kwargs": {k: list(v) if isinstance(v, tuple) else v for k, v in self.decoder_kwargs.items()},
                "library": "segmentation_models_pytorch", "source": self.source}
        if self.decoder == "upernet":
            data["differences_from_released"] = list(UPERNET_DIFFERENCES)
        return data


def architecture_family(arch: str) -> str:
    """``resnet``, ``densenet``, ``convnext``, ``swin`` or ``other`` for a timm architecture name (convnext_base)."""
    name = arch.lower().split("/")[-1]
    for family in ("convnext", "swin", "resnet", "densenet"):
        if name.startswith(family):
            return family
    return "other"


def default_decoder(family: str) -> str:
    """The released decoder of an architecture family: UperNet for ConvNeXt and Swin, U-Net otherwise.

    ``Version2/models.py:228-293``: ``convnext_upernet`` / ``swin_upernet`` for ConvNeXt / Swin, ``unet`` for
    ResNet-50.
    """
    return "upernet" if family in ("convnext", "swin") else "unet"


def segmentation_spec(arch: str, decoder: str) -> SegmentationSpec:
    """The released decoder settings for ``arch`` under ``decoder`` (``unet`` or ``upernet``).

    Raises:
        UsageError: an unknown decoder.
    """
    if decoder not in DECODERS:
        raise UsageError(f"unknown segmentation decoder '{decoder}'; use one of {', '.join(DECODERS)}")
    encoder_kwargs = dict(RELEASED_BACKBONE_KWARGS.get(arch, {}))
    if decoder == "unet":
        return SegmentationSpec("unet", arch, encoder_kwargs, {
            "decoder_channels": UNET_DECODER_CHANNELS, "decoder_interpolation": UNET_INTERPOLATION,
            "head_kernel_size": UNET_HEAD_KERNEL},
            "smp.Unet as in Version1/engine.py:198-201 (decoder 256-128-64-32-16, nearest, 3x3 head)")
    width = RELEASED_UPERNET_WIDTH.get(arch)
    source = ("UperNet widths and backbone settings of Version2/convnext.py:236-251 and "
              "Version2/swin_transformer.py:756-777")
    if width is None:
        width = 256
        source = "no released UperNet for this backbone: smp's default width 256 (medhub's choice)"
    return SegmentationSpec("upernet", arch, encoder_kwargs, {"decoder_channels": width}, source)


def build_segmentation_network(backbone: nn.Module, spec: SegmentationSpec, *, classes: int = 1) -> nn.Module:
    """smp U-Net or UPerNet on the timm encoder ``tu-<spec.arch>``, its encoder filled from ``backbone``.

    Args:
        backbone: the timm classification model medhub built and loaded (strict contract), head or not.
        spec: from :func:`segmentation_spec`.
        classes: output maps (1: a binary mask as logits).

    Returns:
        The smp model: ``(B, C, H, W)`` float -> ``(B, classes, H, W)`` logits (no activation).

    Raises:
        UsageError: an architecture smp's timm encoder cannot take, or an encoder tensor the backbone lacks.
    """
    import segmentation_models_pytorch as smp

    in_chans = _input_channels(backbone)
    common = dict(encoder_name=f"tu-{spec.arch}", encoder_weights=None, in_channels=in_chans, classes=classes,
                  activation=None, **spec.encoder_kwargs)
    try:
        if spec.decoder == "unet":
            kw = spec.decoder_kwargs
            network = smp.Unet(decoder_channels=tuple(kw["decoder_channels"]),
                               decoder_interpolation=kw["decoder_interpolation"], **common)
        else:
            network = smp.UPerNet(decoder_channels=int(spec.decoder_kwargs["decoder_channels"]), **common)
    except (RuntimeError, ValueError, KeyError, TypeError) as exc:
        raise UsageError(f"segmentation_models_pytorch cannot build a {spec.decoder} on tu-{spec.arch} ({exc}); "
                         "use a ResNet, ConvNeXt or Swin checkpoint") from exc
    filled = load_encoder(network.encoder.model, backbone)
    network.medhub_segmentation = {**spec.as_dict(), "encoder_tensors_loaded": filled}
    network.pretrained_cfg = dict(getattr(backbone, "pretrained_cfg", None) or {})
    return network


def _input_channels(network: nn.Module) -> int:
    first = next((m for m in network.modules() if isinstance(m, nn.Conv2d)), None)
    return first.in_channels if first is not None else 3


def _source_key(key: str, source: dict[str, torch.Tensor]) -> str | None:
    """The classification model's name for a feature-extractor key (timm flattens ``stages.0`` to ``stages_0``)."""
    if key in source:
        return key
    head, _, rest = key.partition(".")
    if "_" in head:
        stem, _, index = head.rpartition("_")
        candidate = f"{stem}.{index}.{rest}" if rest else f"{stem}.{index}"
        if candidate in source:
            return candidate
    return None


def load_encoder(encoder: nn.Module, backbone: nn.Module) -> int:
    """Copy ``backbone``'s tensors into smp's timm feature extractor ``encoder``; every encoder tensor must be filled.

    Returns the number of tensors copied. Tensors of ``backbone`` the feature extractor does not hold (the
    classifier and the final norm, which timm's ``features_only`` prunes) are left out and logged.

    Raises:
        UsageError: an encoder tensor without a source of the same shape.
    """
    source = backbone.state_dict()
    target = encoder.state_dict()
    mapped: dict[str, torch.Tensor] = {}
    missing, wrong = [], []
    for key, tensor in target.items():
        name = _source_key(key, source)
        if name is None:
            missing.append(key)
        elif tuple(source[name].shape) != tuple(tensor.shape):
            wrong.append(f"{key} {tuple(source[name].shape)} vs {tuple(tensor.shape)}")
        else:
            mapped[key] = source[name]
    if missing or wrong:
        detail = "; ".join([*(f"missing {k}" for k in missing[:3]), *wrong[:3]])
        raise UsageError(f"the backbone does not fit smp's encoder ({len(missing)} missing, {len(wrong)} of another "
                         f"shape: {detail}); use the architecture the checkpoint was saved from (--arch)")
    encoder.load_state_dict(mapped, strict=True)
    used = {_source_key(k, source) for k in target}
    left = sorted(k for k in source if k not in used)
    if left:
        log.info("segmentation encoder: %d backbone tensors not used by the feature extractor (e.g. %s)",
                 len(left), ", ".join(left[:4]))
    return len(mapped)
