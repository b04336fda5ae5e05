"""Batched geometric augmentation: random resized crop, flips and rotation as one resample per batch.

torchvision's transforms work one image at a time and resample twice (a bilinear resize for the crop, then
a nearest-neighbour rotation). :class:`GeometricAugment` draws every sample's parameters at once, folds
crop, flip and rotation into one 2x3 affine matrix per sample and resamples the whole batch with a single
bilinear :func:`torch.nn.functional.grid_sample` (masks: nearest). It runs on whatever device the batch is
on, and its randomness comes only from the generator it is given, so a batch is a function of its seed.

Parameter distributions follow torchvision: RandomResizedCrop draws the area fraction uniformly from
``crop_scale`` and the log aspect ratio uniformly from ``log(crop_ratio)``, tries ten times for a window
that fits and otherwise falls back to the largest centred window with a clamped ratio; flips have p=0.5;
the angle is uniform in ``[-degrees, degrees]``, corners filled with 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.nn import functional as F

_CROP_TRIES = 10


@dataclass(frozen=True)
class GeometricAugment:
    """Crop + flips + rotation for a ``(B, C, H, W)`` uint8 batch, resampled once to ``size`` x ``size``.

    Args:
        size: output side in pixels.
        crop_scale: area fraction range of the random crop; ``None`` keeps the whole image.
        crop_ratio: aspect-ratio range (width / height) of the random crop.
        crop_p: probability that a sample is cropped at all (segmentation protocols crop a quarter of them).
        hflip: random horizontal flip (p=0.5).
        vflip: random vertical flip (p=0.5).
        degrees: rotation range; 0 for none.
    """

    size: int
    crop_scale: tuple[float, float] | None = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    crop_p: float = 1.0
    hflip: bool = False
    vflip: bool = False
    degrees: float = 0.0

    def __call__(self, images: torch.Tensor, masks: torch.Tensor | None = None,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Augmented ``(images, masks)``; masks are ``(B, H, W)`` or ``(B, 1, H, W)`` label maps, or ``None``."""
        batch, _, height, width = images.shape
        theta = self.matrices(batch, height, width, generator).to(images.device)
        # a one-pixel replicated frame, sampled with zero padding: edge pixels extend to the image's border
        # (as cropping first would) and beyond it the fill is 0, without a separate mask pass
        theta[:, 0] *= width / (width + 2)
        theta[:, 1] *= height / (height + 2)
        grid = _sampling_grid(theta, self.size)
        out = _warp(images, grid, "bilinear")
        if not images.is_floating_point():
            out = out.add_(0.5).clamp_(0, 255).to(images.dtype)  # round half up, back to the input's type
        if masks is None:
            return out, None
        flat = masks.unsqueeze(1) if masks.ndim == 3 else masks
        warped = _warp(flat, grid, "nearest").to(masks.dtype)
        return out, (warped.squeeze(1) if masks.ndim == 3 else warped)

    def matrices(self, batch: int, height: int, width: int,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """``(batch, 2, 3)`` maps from output to input coordinates (normalised, ``align_corners=False``)."""
        left, top, crop_w, crop_h = self.crop_windows(batch, height, width, generator)
        # crop: output [-1, 1] spans the window; its centre and half-extent in the input's normalised frame
        centre_x = (2 * left + crop_w) / width - 1
        centre_y = (2 * top + crop_h) / height - 1
        scale_x, scale_y = crop_w / width, crop_h / height
        flip_x = _signs(batch, self.hflip, generator)
        flip_y = _signs(batch, self.vflip, generator)
        angle = (torch.rand(batch, generator=generator, dtype=torch.float64) * 2 - 1) * math.radians(self.degrees)
        cos, sin = torch.cos(angle), torch.sin(angle)
        # input = centre + diag(scale) @ diag(flip) @ rotation(angle) @ output: rotate, then flip, then crop
        theta = torch.zeros(batch, 2, 3, dtype=torch.float64)
        theta[:, 0, 0] = scale_x * flip_x * cos
        theta[:, 0, 1] = -scale_x * flip_x * sin
        theta[:, 1, 0] = scale_y * flip_y * sin
        theta[:, 1, 1] = scale_y * flip_y * cos
        theta[:, 0, 2] = centre_x
        theta[:, 1, 2] = centre_y
        return theta.float()

    def crop_windows(self, batch: int, height: int, width: int, generator: torch.Generator | None = None):
        """Per-sample crop windows ``(left, top, width, height)`` in pixels, as float64 tensors."""
        full = (torch.zeros(batch, dtype=torch.float64), torch.zeros(batch, dtype=torch.float64),
                torch.full((batch,), float(width), dtype=torch.float64),
                torch.full((batch,), float(height), dtype=torch.float64))
        if self.crop_scale is None:
            return full
        area = height * width
        low, high = self.crop_scale
        target = area * (low + (high - low) * torch.rand(batch, _CROP_TRIES, generator=generator, dtype=torch.float64))
        log_low, log_high = math.log(self.crop_ratio[0]), math.log(self.crop_ratio[1])
        ratio = torch.exp(log_low + (log_high - log_low) * torch.rand(batch, _CROP_TRIES, generator=generator,
                                                                       dtype=torch.float64))
        w = torch.sqrt(target * ratio).round()
        h = torch.sqrt(target / ratio).round()
        fits = (w > 0) & (h > 0) & (w <= width) & (h <= height)
        first = torch.where(fits.any(1), fits.float().argmax(1), torch.full((batch,), -1))
        pick = first.clamp(min=0).unsqueeze(1)
        w, h = w.gather(1, pick).squeeze(1), h.gather(1, pick).squeeze(1)
        w_fallback, h_fallback = _centre_fallback(height, width, self.crop_ratio)
        found = first >= 0
        w = torch.where(found, w, torch.full_like(w, w_fallback))
        h = torch.where(found, h, torch.full_like(h, h_fallback))
        left = torch.floor(torch.rand(batch, generator=generator, dtype=torch.float64) * (width - w + 1))
        top = torch.floor(torch.rand(batch, generator=generator, dtype=torch.float64) * (height - h + 1))
        left = torch.where(found, left, (width - w) // 2)
        top = torch.where(found, top, (height - h) // 2)
        if self.crop_p < 1:
            keep = torch.rand(batch, generator=generator, dtype=torch.float64) < self.crop_p
            left, top, w, h = (torch.where(keep, a, b) for a, b in zip((left, top, w, h), full, strict=True))
        return left, top, w, h


def _warp(batch: torch.Tensor, grid: torch.Tensor, mode: str) -> torch.Tensor:
    """Float resample of ``batch`` (B, C, H, W) inside a one-pixel replicated frame (zeros beyond it)."""
    framed = F.pad(batch.float(), (1, 1, 1, 1), mode="replicate")
    return F.grid_sample(framed, grid, mode=mode, padding_mode="zeros", align_corners=False)


def _sampling_grid(theta: torch.Tensor, size: int) -> torch.Tensor:
    """``F.affine_grid(theta, (B, 1, size, size), align_corners=False)`` by broadcasting (several times faster)."""
    centres = (torch.arange(size, dtype=theta.dtype, device=theta.device) * 2 + 1) / size - 1
    x = centres.view(1, 1, size)
    y = centres.view(1, size, 1)
    grid = torch.empty(theta.shape[0], size, size, 2, dtype=theta.dtype, device=theta.device)
    for axis in (0, 1):
        row = theta[:, axis].view(-1, 3, 1, 1)
        torch.add(row[:, 0] * x, row[:, 1] * y, out=grid[..., axis]).add_(row[:, 2])
    return grid


def _signs(batch: int, enabled: bool, generator: torch.Generator | None) -> torch.Tensor:
    """-1 (flipped) or +1 per sample, each with p=0.5 when ``enabled``."""
    if not enabled:
        return torch.ones(batch, dtype=torch.float64)
    return torch.where(torch.rand(batch, generator=generator) < 0.5, -1.0, 1.0).to(torch.float64)


def _centre_fallback(height: int, width: int, ratio: tuple[float, float]) -> tuple[float, float]:
    """torchvision's fallback window when ten tries fail: the whole image with its ratio clamped."""
    in_ratio = width / height
    if in_ratio < min(ratio):
        return float(width), float(round(width / min(ratio)))
    if in_ratio > max(ratio):
        return float(round(height * max(ratio))), float(height)
    return float(width), float(height)
