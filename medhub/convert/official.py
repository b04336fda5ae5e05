"""The original ConvNeXt (facebookresearch) and Swin (microsoft) layouts, and SimMIM's Swin encoder.

Swin: the original code downsamples at the end of a stage (``layers.i.downsample``), timm at the start
of the next one (``layers.{i+1}.downsample``); ``head`` becomes ``head.fc``; the ``relative_position_index``
and ``attn_mask`` buffers are dropped (timm recomputes them). When the target window differs from the
source (SimMIM pre-trains at 192 px with window 6; the benchmark fine-tunes at 224 px with window 7), each
relative-position bias table is resized by SimMIM's own method: a bicubic spline through geometrically
spaced source offsets, evaluated at the integer target offsets.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from medhub.convert._core import ConversionReport, Rules, Target, rename_keys
from medhub.errors import ConversionError

CONVNEXT_RENAMES = (
    (r"^downsample_layers\.0\.", "stem."),
    (r"^downsample_layers\.(\d+)\.(\d+)\.", r"stages.\1.downsample.\2."),
    (r"^stages\.(\d+)\.(\d+)\.", r"stages.\1.blocks.\2."),
    (r"\.dwconv\.", ".conv_dw."),
    (r"\.pwconv(\d)\.", r".mlp.fc\1."),
    (r"\.grn\.gamma$", ".mlp.grn.weight"),
    (r"\.grn\.beta$", ".mlp.grn.bias"),
    (r"^head\.", "head.fc."),
    (r"^norm\.", "head.norm."),
)


def _convnext_hook(
    state: dict[str, torch.Tensor], target: Target | None, report: ConversionReport
) -> dict[str, torch.Tensor]:
    reshaped = 0
    for key, value in list(state.items()):
        if ".mlp.grn." in key and value.ndim > 1:  # ConvNeXt-V2 GRN (1,1,1,C) -> (C,)
            state[key] = value.reshape(value.shape[-1])
            reshaped += 1
        elif (
            target is not None
            and key in target
            and not key.startswith("head.")
            and value.ndim == 2
            and tuple(value.shape) != tuple(target[key])
            and value.numel() == math.prod(target[key])
        ):
            state[key] = value.reshape(target[key])  # conv_mlp variants: Linear -> 1x1 conv
            reshaped += 1
    if reshaped:
        report.adapted.append(f"reshaped {reshaped} tensors to timm's layout (GRN / 1x1-conv MLP)")
    return state


def swin_layout_hook(
    state: dict[str, torch.Tensor], target: Target | None, report: ConversionReport
) -> dict[str, torch.Tensor]:
    """Original Swin layout -> timm: drop buffers, move PatchMerging, rename head, resize bias tables."""
    buffers = [k for k in state if k.endswith(("relative_position_index", "attn_mask"))]
    for key in buffers:
        del state[key]
    report.dropped.extend(report.prefix + k for k in buffers)
    if "layers.0.downsample.reduction.weight" in state:
        state = rename_keys(
            state,
            (
                (r"^layers\.(\d+)\.downsample\.", lambda m: f"layers.{int(m.group(1)) + 1}.downsample."),
                (r"^head\.", "head.fc."),
            ),
            report,
        )
    if target is not None:
        resize_relative_position_tables(state, target, report.adapted)
    return state


def resize_relative_position_tables(state: dict[str, torch.Tensor], target: Target, adapted: list[str]) -> None:
    """Resize every ``relative_position_bias_table`` whose length differs from the target's, in place.

    One line per distinct resize is appended to ``adapted`` (a report's list).
    """
    resized = set()
    for key, value in list(state.items()):
        if not key.endswith("relative_position_bias_table") or key not in target:
            continue
        rows, heads = target[key]
        if tuple(value.shape) == (rows, heads):
            continue
        if value.shape[1] != heads:
            raise ConversionError(
                f"{key}: the source has {value.shape[1]} attention heads, the target {heads}; "
                "choose the architecture (num_heads) the checkpoint was trained with",
                key=key,
            )
        state[key] = geometric_resize_table(value, int(math.isqrt(rows)))
        resized.add((int(math.isqrt(value.shape[0])), int(math.isqrt(rows))))
    for src, dst in sorted(resized):
        adapted.append(
            f"relative_position_bias_table {src}x{src} -> {dst}x{dst} (window {(src + 1) // 2} -> "
            f"{(dst + 1) // 2}) by SimMIM's geometric-progression bicubic interpolation"
        )


def geometric_resize_table(table: torch.Tensor, dst_size: int) -> torch.Tensor:
    """Resize a ``((2w-1)**2, heads)`` bias table to ``(dst_size**2, heads)`` the way SimMIM does.

    Source offsets are spaced geometrically so the outermost lands on the target's outermost integer
    offset; a not-a-knot bicubic spline through them is evaluated at the integer target offsets
    (clamped to the source range, as FITPACK does).
    """
    src_size = int(math.isqrt(table.shape[0]))
    if src_size * src_size != table.shape[0]:
        raise ConversionError(f"a relative-position table of {table.shape[0]} rows is not square")
    ratio = _progression_ratio(src_size // 2, dst_size // 2)
    offsets, current = [], 1.0
    for i in range(src_size // 2):
        offsets.append(current)
        current += ratio ** (i + 1)
    knots = np.array([-o for o in reversed(offsets)] + [0.0] + offsets)
    half = dst_size // 2
    points = np.clip(np.arange(-half, half + 0.1, 1.0), knots[0], knots[-1])
    matrix = torch.from_numpy(_spline_matrix(knots, points))  # (dst, src)
    grid = table.double().T.reshape(-1, src_size, src_size)  # (heads, y, x)
    out = matrix @ grid @ matrix.T
    return out.reshape(table.shape[1], -1).T.contiguous().to(table.dtype)


def _progression_ratio(terms: int, target: float) -> float:
    """Bisect q in (1.01, 1.5) so that 1 + q + ... + q**(terms-1) stays just below ``target``."""
    left, right = 1.01, 1.5
    q = left
    while right - left > 1e-6:
        q = (left + right) / 2.0
        if (1.0 - q**terms) / (1.0 - q) > target:
            right = q
        else:
            left = q
    return q  # SimMIM keeps the last midpoint it tried


def _spline_matrix(knots: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Matrix ``A`` with ``A @ y`` = the not-a-knot cubic spline through ``(knots, y)`` at ``points``."""
    n = len(knots)
    h = np.diff(knots)
    # second derivatives M solve  lhs @ M = rhs @ y
    lhs, rhs = np.zeros((n, n)), np.zeros((n, n))
    for i in range(1, n - 1):
        lhs[i, i - 1 : i + 2] = h[i - 1], 2 * (h[i - 1] + h[i]), h[i]
        rhs[i, i - 1 : i + 2] = 6 / h[i - 1], -6 / h[i - 1] - 6 / h[i], 6 / h[i]
    # not-a-knot: the third derivative is continuous at the second and the second-to-last knot
    lhs[0, :3] = h[1], -(h[0] + h[1]), h[0]
    lhs[-1, -3:] = h[-1], -(h[-2] + h[-1]), h[-2]
    second = np.linalg.solve(lhs, rhs)  # (n, n): M = second @ y
    out = np.zeros((len(points), n))
    for row, t in enumerate(points):
        k = int(np.clip(np.searchsorted(knots, t, side="right") - 1, 0, n - 2))
        a, b, hk = knots[k + 1] - t, t - knots[k], h[k]
        out[row] += second[k] * a**3 / (6 * hk) + second[k + 1] * b**3 / (6 * hk)
        out[row] -= second[k] * hk * a / 6 + second[k + 1] * hk * b / 6
        out[row, k] += a / hk
        out[row, k + 1] += b / hk
    return out


CONVNEXT_OFFICIAL = Rules(
    name="convnext_official",
    summary="facebookresearch/ConvNeXt: downsample_layers, stages.i.j, dwconv/pwconv, norm, head",
    containers=("model", "state_dict", "model_ema"),
    prefixes=("module.", ""),
    renames=CONVNEXT_RENAMES,
    hook=_convnext_hook,
)

SWIN_OFFICIAL = Rules(
    name="swin_official",
    summary="microsoft/Swin-Transformer: downsample at stage end, head, relative_position_index/attn_mask",
    containers=("model", "state_dict"),
    prefixes=("module.", ""),
    hook=swin_layout_hook,
)

SIMMIM_SWIN = Rules(
    name="simmim_swin",
    summary="SimMIM Swin: `encoder.` Swin (window 6 / 192 px allowed); decoder and mask_token dropped",
    containers=("model", "state_dict"),
    prefixes=("module.encoder.", "encoder."),
    drop=("decoder.", "encoder.mask_token"),
    hook=swin_layout_hook,
)

RULES = (CONVNEXT_OFFICIAL, SWIN_OFFICIAL, SIMMIM_SWIN)
