"""Heads told truthfully, and format detection naming the real source."""

from __future__ import annotations

import json

import original_models as om
import timm
import torch

import medhub
from medhub.build import create_model
from medhub.cli import main
from medhub.convert import convert_file

torch.set_num_threads(1)


def _save(path, obj):
    torch.save(obj, path)
    return path


def test_an_all_zero_head_is_reported_as_such(tmp_path):
    net = om.randomize(timm.create_model("resnet18", num_classes=3), 50)
    with torch.no_grad():
        net.fc.weight.zero_()
    model = medhub.load(_save(tmp_path / "zero.pth", net.state_dict()), arch="resnet18")
    assert model.medhub_load_report.load.classifier.startswith("kept (3 classes; its weights are all zeros")


def test_num_classes_none_uses_the_file_s_own_head_of_any_size(tmp_path):
    net = om.randomize(timm.create_model("resnet18", num_classes=1), 51)
    model = medhub.load(_save(tmp_path / "binary.pth", net.state_dict()), arch="resnet18")
    assert model.fc.out_features == 1 and model.medhub_load_report.load.classifier == "kept (1 class)"
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(model(x), net(x), atol=1e-5)


def test_a_new_head_is_never_called_kept(tmp_path):
    net = om.randomize(timm.create_model("resnet18", num_classes=3), 52)
    state = net.state_dict()
    _, report = create_model("resnet18", state, num_classes=5)
    assert report.classifier == "re-initialised (5 classes; source had 3)"
    headless = {k: v for k, v in state.items() if not k.startswith("fc.")}
    _, report = create_model("resnet18", headless, num_classes=3)
    assert report.classifier == "re-initialised (3 classes; source had none)"
    # a folder written by `medhub convert --num-classes 4` holds a random head: loading it says so
    src, out = _save(tmp_path / "ssl.pth", headless), tmp_path / "out"
    assert main(["convert", str(src), "--arch", "resnet18", "-o", str(out), "--num-classes", "4"]) == 0
    assert json.loads((out / "config.json").read_text())["medhub"]["classifier"].startswith("re-initialised")
    classifier = medhub.load(out).medhub_load_report.load.classifier
    assert classifier.startswith("kept (4 classes") and "never trained" in classifier


def test_a_timm_vit_backbone_under_encoder_is_not_refused_as_simmim(tmp_path):
    vit = om.randomize(timm.create_model("vit_small_patch16_224", num_classes=0, **om.VIT), 53)
    state = {f"encoder.{k}": v for k, v in vit.state_dict().items()}
    state.update({"head.weight": torch.randn(2, 48), "head.bias": torch.zeros(2)})
    _, report = convert_file(_save(tmp_path / "w.pth", {"state_dict": state}), arch="vit_small_patch16_224", **om.VIT)
    assert report.fmt == "timm" and report.prefix == "encoder." and "head.weight" in report.dropped


def test_a_user_backbone_attribute_is_not_called_dino(tmp_path):
    net = om.randomize(timm.create_model("resnet18", num_classes=0), 54)
    state = {**{f"backbone.{k}": v for k, v in net.state_dict().items()}, "classifier.weight": torch.randn(2, 512)}
    _, report = convert_file(_save(tmp_path / "w.pth", state), arch="resnet18")
    assert report.fmt == "timm" and "DINO" not in report.reason and report.prefix == "backbone."


def test_a_dinov2_training_checkpoint_keeps_the_teacher_backbone(tmp_path):
    kw = dict(patch_size=14, embed_dim=48, depth=2, num_heads=3, img_size=56)
    teacher = om.randomize(timm.create_model("vit_small_patch14_dinov2", num_classes=0, **kw), 55)
    state = {f"backbone.{k}": v for k, v in teacher.state_dict().items()}
    state.update({"backbone.mask_token": torch.zeros(1, 48), "dino_head.mlp.0.weight": torch.randn(8, 48),
                  "ibot_head.mlp.0.weight": torch.randn(8, 48)})  # fmt: skip
    model = medhub.load(_save(tmp_path / "teacher_checkpoint.pth", {"teacher": state}), arch="vit_small_patch14_dinov2", **kw)
    conversion = model.medhub_load_report.conversion
    assert conversion.fmt == "dinov2" and conversion.container == "teacher" and conversion.prefix == "backbone."
    assert {"backbone.mask_token", "dino_head.mlp.0.weight"} <= set(conversion.dropped)
    x = torch.randn(1, 3, 56, 56)
    with torch.no_grad():
        assert torch.allclose(model(x), teacher(x), atol=1e-5)


def test_dinov2_register_tokens_laid_out_as_timm(tmp_path):
    """The released *_reg4 backbone keeps register_tokens apart and pos_embed over cls + patches."""
    kw = dict(patch_size=14, embed_dim=48, depth=2, num_heads=3, img_size=56)
    arch = "vit_small_patch14_reg4_dinov2"
    original = om.randomize(timm.create_model(arch, num_classes=0, **kw), 56)
    state = dict(original.state_dict())
    cls_pos = torch.randn(1, 1, 48)
    released = {k: v for k, v in state.items() if k not in ("reg_token", "cls_token", "pos_embed")}
    released.update({"register_tokens": state["reg_token"], "cls_token": state["cls_token"] - cls_pos,
                     "pos_embed": torch.cat([cls_pos, state["pos_embed"]], 1), "mask_token": torch.zeros(1, 48)})  # fmt: skip
    model = medhub.load(_save(tmp_path / "dinov2_vits14_reg4_pretrain.pth", released), arch=arch, **kw)
    assert model.medhub_load_report.conversion.fmt == "dinov2"
    x = torch.randn(1, 3, 56, 56)
    with torch.no_grad():
        assert torch.allclose(model(x), original(x), atol=1e-5)


def test_a_dinov2_training_state_keeps_the_teacher_prefix_over_the_student(tmp_path):
    kw = dict(patch_size=14, embed_dim=48, depth=2, num_heads=3, img_size=56)
    arch = "vit_small_patch14_dinov2"
    teacher = om.randomize(timm.create_model(arch, num_classes=0, **kw), 57)
    student = om.randomize(timm.create_model(arch, num_classes=0, **kw), 58)
    model_state = {}
    for role, net in (("teacher", teacher), ("student", student)):
        model_state.update({f"{role}.backbone.{k}": v for k, v in net.state_dict().items()})
        model_state.update({f"{role}.backbone.mask_token": torch.zeros(1, 48), f"{role}.dino_head.last_layer.weight": torch.randn(8, 48)})
    path = _save(tmp_path / "model_0012499.rank_0.pth", {"model": model_state, "iteration": 12499})
    model = medhub.load(path, arch=arch, **kw)
    conversion = model.medhub_load_report.conversion
    assert conversion.fmt == "dinov2" and conversion.prefix == "teacher.backbone."
    assert "prefix='model/student.backbone.'" in conversion.found
    x = torch.randn(1, 3, 56, 56)
    with torch.no_grad():
        assert torch.allclose(model(x), teacher(x), atol=1e-5)


def test_an_ema_entry_no_format_documents_is_refused(tmp_path):
    net = om.randomize(timm.create_model("resnet18", num_classes=2), 59)
    ema = om.randomize(timm.create_model("resnet18", num_classes=2), 60)
    path = _save(tmp_path / "ckpt.pth", {"state_dict": net.state_dict(), "ema_state_dict": ema.state_dict()})
    try:
        medhub.load(path, arch="resnet18")
    except medhub.errors.ConversionError as exc:
        assert "prefix='state_dict/'" in str(exc) and "prefix='ema_state_dict/'" in str(exc)
    else:
        raise AssertionError("two different networks must be refused")
