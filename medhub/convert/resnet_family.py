"""Formats whose keys are (nearly) timm's already: timm, torchvision, RadImageNet, detector backbones, and
the JLiang lab's own DataParallel training checkpoints."""

from __future__ import annotations

import re

import torch

from medhub.convert._core import ConversionReport, Rules, Target, rename_keys
from medhub.convert.official import swin_layout_hook

# torchvision < 0.4 DenseNet names: `denselayer1.norm.1.weight` -> timm/torchvision `denselayer1.norm1.weight`
DENSENET_LEGACY = (r"^(features\.denseblock\d+\.denselayer\d+\.)(norm|relu|conv)\.([12])\.", r"\1\2\3.")

# The lab wraps its classifier as nn.Sequential(nn.Linear(...), nn.Sigmoid()) (`--activate Sigmoid`).
SIGMOID_HEADS = (
    (r"^fc\.0\.", "fc."),
    (r"^classifier\.0\.", "classifier."),
    (r"^head\.fc\.0\.", "head.fc."),
    (r"^head\.0\.", "head."),
)


def _jlianglab_hook(
    state: dict[str, torch.Tensor], target: Target | None, report: ConversionReport
) -> dict[str, torch.Tensor]:
    state = rename_keys(state, SIGMOID_HEADS + (DENSENET_LEGACY,), report)
    if any(re.match(r"^layers\.\d+\.blocks\.\d+\.attn\.", k) for k in state):
        report.notes.append("Swin in the original Microsoft layout (the lab's swin_transformer.py)")
        state = swin_layout_hook(state, target, report)
    return state


TIMM = Rules(
    name="timm",
    summary="timm state dict (optionally under state_dict/model, DataParallel or torch.compile wrappers)",
    containers=("state_dict", "model", "state_dict_ema", "model_ema"),
    prefixes=("module._orig_mod.", "module.", "_orig_mod.", ""),
)

TORCHVISION = Rules(
    name="torchvision",
    summary="torchvision classification weights, including legacy DenseNet `norm.1` keys",
    containers=("state_dict", "model", "model_ema"),  # references/classification/train.py: model, then its EMA
    prefixes=("module.", ""),
    renames=(DENSENET_LEGACY,),
)

RADIMAGENET = Rules(
    name="radimagenet",
    summary="RadImageNet ResNet-50: nn.Sequential of torchvision children as `backbone.{0,1,4,5,6,7}`",
    containers=("state_dict", "model"),
    prefixes=("module.backbone.", "backbone."),
    drop=("fc.", "classifier.", "head."),
    renames=(
        (r"^0\.", "conv1."),
        (r"^1\.", "bn1."),
        (r"^4\.", "layer1."),
        (r"^5\.", "layer2."),
        (r"^6\.", "layer3."),
        (r"^7\.", "layer4."),
    ),
)

DETECTRON_BACKBONE = Rules(
    name="detectron_backbone",
    summary="ResNet body of a torchvision detector (`backbone.body.`, FrozenBN); FPN and heads dropped",
    containers=("model", "state_dict"),
    prefixes=("module.backbone.body.", "backbone.body."),
    drop=("backbone.fpn.", "rpn.", "roi_heads.", "head.", "anchor_generator."),
)

JLIANGLAB = Rules(
    name="jlianglab",
    summary="JLiang lab training checkpoint {'epoch','lossMIN','state_dict',...}: `module.`, Sigmoid head `fc.0`",
    containers=("state_dict", "model"),
    prefixes=("module.", ""),
    hook=_jlianglab_hook,
)

RULES = (TIMM, TORCHVISION, RADIMAGENET, DETECTRON_BACKBONE, JLIANGLAB)
