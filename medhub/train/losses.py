"""Segmentation losses of the benchmark's released code."""

from __future__ import annotations

import torch
from torch.nn import functional as F


def soft_dice_batch(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """``1 - (2 Σ p·t + smooth) / (Σ t + Σ p + smooth)`` with the sums over the whole batch at once.

    One Dice over every pixel of every image in the batch (not a mean of per-image Dice), ``p = sigmoid(logits)``,
    smooth 1: ``torch_dice_coef_loss`` of BTL ``Version1/utils.py:114-118`` (``Version2/utils.py:114-118``).

    Args:
        logits: ``(B, 1, H, W)`` raw network outputs.
        target: ``(B, 1, H, W)`` 0/1 masks.

    Returns:
        A scalar tensor in ``[0, 1)``.
    """
    prob = torch.sigmoid(logits.float()).flatten()
    truth = target.float().flatten()
    return 1.0 - (2.0 * (prob * truth).sum() + smooth) / (truth.sum() + prob.sum() + smooth)


def segmentation_loss(name: str, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``soft_dice_batch`` (alias ``dice``) or ``bce`` (binary cross-entropy on the sigmoid, DRIVE's loss).

    ``bce``: ``torch.nn.BCELoss`` on sigmoid outputs in the released code (``Version1/main_segmentation.py:91``),
    computed here from logits (the same value, numerically safer).
    """
    if name == "bce":
        return F.binary_cross_entropy_with_logits(logits.float(), target.float())
    return soft_dice_batch(logits, target)
