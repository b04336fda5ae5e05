"""Every format: a checkpoint built and saved the way its original project does, converted with
``fmt="auto"`` and with its explicit name, loaded strictly into timm, and compared feature for feature."""

from __future__ import annotations

import original_models as om
import pytest
import torch

from medhub.build import create_model
from medhub.convert import convert_file

torch.set_num_threads(1)

RESNET = ("resnet18", {})
VIT = ("vit_small_patch16_224", {k: v for k, v in om.VIT.items()})
CONVNEXT = ("convnext_tiny", dict(om.CONVNEXT))
SWIN = ("swin_tiny_patch4_window7_224", dict(om.SWIN))
SWIN192 = ("swin_tiny_patch4_window7_224", {**om.SWIN, "img_size": 192, "window_size": 6})
DENSENET = ("densenet121", dict(om.DENSENET))


def pooled(model, x):
    return model(x)


def logits(model, x):
    return model(x)


def fmap(model, x):
    return model.forward_features(x)


def pooled_head(model, x):
    return model.forward_head(model.forward_features(x), pre_logits=True)


def sigmoid(model, x):
    return torch.sigmoid(model(x))


# id: (builder, format name, (arch, kwargs), input size, how to read the timm model, num_classes)
CASES = {
    "moco_v2": (om.moco_checkpoint, "moco", RESNET, 64, pooled, None),
    "moco_v1_pcl": (om.moco_v1_checkpoint, "moco", RESNET, 64, pooled, None),
    "timm_train": (om.timm_train_checkpoint, "timm", RESNET, 64, logits, None),
    "swav": (om.swav_checkpoint, "swav", RESNET, 64, pooled, None),
    "barlowtwins_training": (om.barlowtwins_checkpoint, "barlowtwins", RESNET, 64, pooled, None),
    "barlowtwins_release": (om.barlowtwins_release, "barlowtwins", RESNET, 64, pooled, None),
    "simsiam": (om.simsiam_checkpoint, "simsiam", RESNET, 64, pooled, None),
    "pycontrast_pirl": (lambda: om.pycontrast_checkpoint(True), "pycontrast", RESNET, 64, pooled, None),
    "pycontrast_infomin": (lambda: om.pycontrast_checkpoint(False), "pycontrast", RESNET, 64, pooled, None),
    "dino_vit": (lambda: om.dino_checkpoint("vit"), "dino", VIT, 32, pooled, None),
    "dino_resnet": (lambda: om.dino_checkpoint("resnet"), "dino", RESNET, 64, pooled, None),
    "mae": (om.mae_checkpoint, "mae", VIT, 32, fmap, None),
    "mocov3_vit": (om.mocov3_checkpoint, "mocov3_vit", VIT, 32, pooled, None),
    "convnext_official": (om.convnext_checkpoint, "convnext_official", CONVNEXT, 64, logits, None),
    "convnext_official_features": (
        lambda: _features(om.convnext_checkpoint()),
        "convnext_official",
        CONVNEXT,
        64,
        pooled_head,
        None,
    ),
    "swin_official": (om.swin_checkpoint, "swin_official", SWIN, 224, logits, None),
    "simmim_swin_native": (om.simmim_checkpoint, "simmim_swin", SWIN192, 192, pooled, None),
    "jlianglab_resnet": (lambda: om.jlianglab_checkpoint("resnet"), "jlianglab", RESNET, 64, sigmoid, None),
    "jlianglab_swin": (lambda: om.jlianglab_checkpoint("swin"), "jlianglab", SWIN, 224, sigmoid, None),
    "jlianglab_convnext": (om.jlianglab_convnext_checkpoint, "jlianglab", CONVNEXT, 64, logits, None),
    "radimagenet": (om.radimagenet_checkpoint, "radimagenet", RESNET, 64, fmap, None),
    "detectron_backbone": (om.detector_checkpoint, "detectron_backbone", RESNET, 64, fmap, None),
    "torchvision_densenet_legacy": (om.densenet_legacy_checkpoint, "torchvision", DENSENET, 64, logits, None),
}


def _features(built):
    obj, model = built
    return obj, model.forward_features


# A raw torchvision backbone carries no trace of how it was trained: auto-detection names it torchvision.
AUTO_AS = {"barlowtwins_release": "torchvision"}


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float((a - b).norm() / b.norm())


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Build and torch.save each original checkpoint once per module; cache the reference outputs."""
    cache = {}

    def get(case_id):
        if case_id not in cache:
            builder, _, _, size, _, _ = CASES[case_id]
            obj, reference = builder()
            path = tmp_path_factory.mktemp("ckpt") / f"{case_id}.pth.tar"
            torch.save(obj, path)
            x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
            with torch.no_grad():
                cache[case_id] = (path, x, reference(x))
        return cache[case_id]

    return get


@pytest.mark.parametrize("how", ["auto", "explicit"])
@pytest.mark.parametrize("case_id", list(CASES))
def test_original_checkpoint_matches_timm(case_id, how, saved):
    _, fmt, (arch, kwargs), _, read, num_classes = CASES[case_id]
    path, x, expected = saved(case_id)
    state, report = convert_file(path, fmt="auto" if how == "auto" else fmt, arch=arch, **kwargs)
    assert report.fmt == (AUTO_AS.get(case_id, fmt) if how == "auto" else fmt), report.summary()
    assert report.detected is (how == "auto")
    model, load_report = create_model(arch, state, num_classes=num_classes, conversion=report, **kwargs)
    assert load_report.unexpected == []
    with torch.no_grad():
        got = read(model, x)
    assert relative_error(got, expected) < 1e-4, report.summary()


def test_moco_keeps_query_encoder_and_drops_the_rest(saved):
    path, _, _ = saved("moco_v2")
    state, report = convert_file(path, arch="resnet18")
    assert report.prefix == "module.encoder_q."
    assert any(k.startswith("module.encoder_k.") for k in report.dropped)
    assert {"module.queue", "module.queue_ptr"} <= set(report.dropped)
    assert "module.encoder_q.fc.0.weight" in report.dropped
    assert not any(k.startswith("fc.") for k in state)
    assert report.metadata["epoch"] == "200"


def test_pycontrast_uses_model_not_model_ema(saved):
    path, x, expected = saved("pycontrast_pirl")
    obj = torch.load(path, weights_only=False)
    ema_only = {"model": obj["model_ema"], "opt": obj["opt"]}
    state_ema, _ = convert_file(_save(path.parent / "ema.pth", ema_only), fmt="pycontrast", arch="resnet18")
    state, report = convert_file(path, fmt="pycontrast", arch="resnet18")
    assert report.container == "model"
    assert any(k.startswith("module.head_jig") for k in report.dropped)
    assert not torch.equal(state["conv1.weight"], state_ema["conv1.weight"])


def test_dino_takes_teacher_not_student(saved):
    path, _, _ = saved("dino_vit")
    _, report = convert_file(path, arch="vit_small_patch16_224", **VIT[1])
    assert report.container == "teacher" and report.prefix == "backbone."
    assert report.metadata["args"] == "<Namespace>"


def test_swin_official_moves_downsample_and_drops_buffers(saved):
    path, _, _ = saved("swin_official")
    state, report = convert_file(path, fmt="swin_official", arch=SWIN[0], **SWIN[1])
    assert report.renamed["layers.0.downsample.reduction.weight"] == "layers.1.downsample.reduction.weight"
    assert report.renamed["head.weight"] == "head.fc.weight"
    assert not any(k.endswith(("relative_position_index", "attn_mask")) for k in state)
    assert any(k.endswith("attn_mask") for k in report.dropped)


def _save(path, obj):
    torch.save(obj, path)
    return path
