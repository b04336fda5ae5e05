"""Self-supervised checkpoints: keep the backbone the original project publishes, drop everything else.

MoCo v1/v2, PCL and CLSA keep the query encoder; MoCo-v3 the base encoder; DINO the teacher backbone;
SimSiam the encoder without its projector; PyContrast the ``model`` entry (never ``model_ema``); DINOv2 the
backbone (its iBOT ``mask_token`` dropped, register tokens laid out as timm's). Projection
heads, predictors, prototypes, momentum encoders, queues, decoders and mask tokens are dropped.
"""

from __future__ import annotations

import torch

from medhub.convert._core import ConversionReport, Rules, Target

MOCO = Rules(
    name="moco",
    summary="MoCo v1/v2, PCL, CLSA: `module.encoder_q.` query encoder; encoder_k, queue and fc MLP dropped",
    containers=("state_dict", "model"),
    prefixes=("module.encoder_q.", "encoder_q."),
    drop=("encoder_k.", "queue", "encoder_q.fc."),
)

SWAV = Rules(
    name="swav",
    summary="SwAV, DeepCluster-v2, SeLa-v2: `module.` ResNet; projection_head and prototypes dropped",
    containers=("state_dict", "model"),
    prefixes=("module.", ""),
    drop=("projection_head.", "prototypes."),
)

BARLOWTWINS = Rules(
    name="barlowtwins",
    summary="Barlow Twins: raw torchvision backbone, or a training checkpoint with `module.backbone.`",
    containers=("model", "state_dict"),
    prefixes=("module.backbone.", "backbone.", "module.", ""),
    drop=("projector.", "bn."),
)

SIMSIAM = Rules(
    name="simsiam",
    summary="SimSiam: `module.encoder.`; the projector `encoder.fc` and the predictor dropped",
    containers=("state_dict", "model"),
    prefixes=("module.encoder.", "encoder."),
    drop=("encoder.fc.", "predictor."),
)

PYCONTRAST = Rules(
    name="pycontrast",
    summary="PyContrast InsDis/PIRL/InfoMin: the `model` entry (not model_ema), `module.encoder.`; heads dropped",
    containers=("model", "model_ema"),
    prefixes=("module.encoder.", "encoder."),
    drop=("head.", "head_jig", "jigsaw"),
)

DINO = Rules(
    name="dino",
    summary="DINO: teacher backbone of a full checkpoint (`teacher`, `backbone.`), or a raw backbone; ViT or ResNet",
    containers=("teacher", "state_dict", "model", "student"),
    prefixes=("module.backbone.", "backbone.", "module.", ""),
    drop=("head.",),
)

MAE = Rules(
    name="mae",
    summary="MAE: `model` entry; decoder and mask_token dropped",
    containers=("model", "state_dict"),
    prefixes=("module.", ""),
    drop=("decoder", "mask_token"),
)

MOCOV3_VIT = Rules(
    name="mocov3_vit",
    summary="MoCo-v3 ViT: `module.base_encoder.`; its head MLP, momentum encoder and predictor dropped",
    containers=("state_dict", "model"),
    prefixes=("module.base_encoder.", "base_encoder."),
    drop=("momentum_encoder.", "predictor.", "base_encoder.head."),
)


def _dinov2_hook(state: dict[str, torch.Tensor], target: Target | None, report: ConversionReport) -> dict:
    """Drop the iBOT ``mask_token``; register tokens -> timm's ``reg_token`` (its class token then carries the
    first position; the position table loses that entry), as timm's ``_convert_dinov2`` lays them out."""
    if "mask_token" in state:
        del state["mask_token"]
        report.dropped.append(report.prefix + "mask_token")
    if "register_tokens" not in state:
        return state
    pos = state["pos_embed"]
    state["reg_token"] = state.pop("register_tokens")
    state["cls_token"] = state["cls_token"] + pos[:, :1]
    state["pos_embed"] = pos[:, 1:]
    report.renamed[report.prefix + "register_tokens"] = "reg_token"
    report.adapted.append(
        "register tokens: cls_token + pos_embed[0] -> cls_token, pos_embed[1:] -> pos_embed (timm's no_embed_class layout)"
    )
    return state


DINOV2 = Rules(
    name="dinov2",
    summary="DINOv2 backbone (hub .pth or the teacher of a training checkpoint): mask_token and heads dropped",
    containers=("teacher", "model", "state_dict", "student"),
    prefixes=("backbone.", ""),
    drop=("dino_head.", "ibot_head."),
    preferred_prefixes=("teacher.", "student."),
    renames=((r"^(blocks\.\d+\.mlp\.)w12\.", r"\1fc1."), (r"^(blocks\.\d+\.mlp\.)w3\.", r"\1fc2.")),
    hook=_dinov2_hook,
)

RULES = (MOCO, SWAV, BARLOWTWINS, SIMSIAM, PYCONTRAST, DINO, DINOV2, MAE, MOCOV3_VIT)
