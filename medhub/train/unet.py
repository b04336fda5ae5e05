"""A small U-Net decoder on any timm encoder (ResNet, ConvNeXt, Swin, ...) via ``forward_intermediates``.

The encoder is the classification model medhub built (head removed); its ``feature_info`` gives the
channels of each stage. The decoder upsamples the deepest map stage by stage, concatenating the skip
connection of the matching stride, and ends with a 1-channel logit map at the input resolution.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def _block(in_ch: int, out_ch: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True),
        nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True),
    )


class UNet(nn.Module):
    """U-Net: ``encoder.forward_intermediates`` features -> decoder blocks -> ``out_channels`` logits.

    Args:
        encoder: a timm model with ``feature_info`` and ``forward_intermediates`` (timm >= 1.0).
        out_channels: output maps (1 for a binary mask).
        decoder_channels: width of each decoder stage, deepest first.
    """

    def __init__(self, encoder: nn.Module, out_channels: int = 1,
                 decoder_channels: tuple[int, ...] = (256, 128, 64, 32, 16)) -> None:
        super().__init__()
        if not hasattr(encoder, "forward_intermediates"):
            raise TypeError(f"{type(encoder).__name__} has no forward_intermediates: not usable as a U-Net encoder")
        self.encoder = encoder
        info = list(encoder.feature_info)
        self.skip_channels = [int(f["num_chs"]) for f in info]
        self.reductions = [int(f["reduction"]) for f in info]
        blocks, in_ch = [], self.skip_channels[-1]
        skips = self.skip_channels[:-1][::-1]
        for i, out_ch in enumerate(decoder_channels[: len(skips) + 1]):
            skip = skips[i] if i < len(skips) else 0
            blocks.append(_block(in_ch + skip, out_ch))
            in_ch = out_ch
        self.blocks = nn.ModuleList(blocks)
        self.head = nn.Conv2d(in_ch, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        features = self.encoder.forward_intermediates(x, intermediates_only=True)
        features = [f if f.shape[1] == c else f.permute(0, 3, 1, 2) for f, c in zip(features, self.skip_channels, strict=False)]
        y = features[-1]
        skips = features[:-1][::-1]
        for i, block in enumerate(self.blocks):
            if i < len(skips):
                y = F.interpolate(y, size=skips[i].shape[-2:], mode="bilinear", align_corners=False)
                y = torch.cat([y, skips[i]], dim=1)
            else:
                y = F.interpolate(y, scale_factor=2, mode="bilinear", align_corners=False)
            y = block(y)
        return F.interpolate(self.head(y), size=size, mode="bilinear", align_corners=False)


def dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 - soft Dice over the batch (the benchmark's loss for lung and pneumothorax segmentation)."""
    prob = torch.sigmoid(logits).flatten(1)
    truth = target.float().flatten(1)
    inter = (prob * truth).sum(1)
    return 1 - ((2 * inter + eps) / (prob.sum(1) + truth.sum(1) + eps)).mean()
