"""timm options that change the key set or the shapes: img_size / patch_size (position and patch embeddings
resampled with timm's own functions), features_only / out_indices, global_pool="avg" on ViTs, in_chans.

The reference for every resample is timm's own pipeline: ``timm.create_model(..., pretrained=True,
pretrained_cfg_overlay=dict(file=PATH))`` runs the architecture's checkpoint filter (the same resampling
functions) and, for ``features_only``, builds the full model, loads it, then prunes it."""

from __future__ import annotations

import original_models as om
import pytest
import timm
import torch
import torchvision
from timm.layers import resample_abs_pos_embed

import medhub
from medhub.build import create_model
from medhub.errors import ConversionError

torch.set_num_threads(1)

DINO_KW = dict(patch_size=14, embed_dim=48, depth=2, num_heads=3)
VIT_KW = dict(embed_dim=48, depth=2, num_heads=3)


def timm_own(arch: str, path, **kwargs) -> torch.nn.Module:
    """What timm itself makes of a timm-named checkpoint file (its filter_fn resamples, then it loads)."""
    overlay = dict(file=str(path))
    if "num_classes" in kwargs:  # the file's head size, so that timm keeps that head
        overlay["num_classes"] = kwargs["num_classes"]
    return timm.create_model(arch, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs).eval()


def _save(path, obj):
    torch.save(obj, path)
    return path


@pytest.fixture(scope="module")
def dinov2_file(tmp_path_factory):
    """The released DINOv2 backbone layout (bare state dict with mask_token), scaled down: 56 px, patch 14."""
    torch.manual_seed(0)
    src = timm.create_model("vit_small_patch14_dinov2", img_size=56, num_classes=0, **DINO_KW)
    om.randomize(src, 3)
    state = dict(src.state_dict())
    state["mask_token"] = torch.zeros(1, 48)
    return _save(tmp_path_factory.mktemp("dinov2") / "dinov2_vits14_pretrain.pth", state), state


def test_dinov2_backbone_loads_at_another_img_size_like_timm(dinov2_file):
    path, state = dinov2_file
    model = medhub.load(path, arch="vit_small_patch14_dinov2", img_size=28, **DINO_KW)
    expected = resample_abs_pos_embed(state["pos_embed"], new_size=(2, 2), num_prefix_tokens=1)
    assert torch.equal(model.pos_embed.detach(), expected)
    reference = timm_own("vit_small_patch14_dinov2", path, img_size=28, num_classes=0, **DINO_KW)
    x = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        assert torch.allclose(model(x), reference(x), atol=1e-5)
    summary = model.medhub_load_report
    assert any("pos_embed" in a and "4x4 -> 2x2" in a and "resample_abs_pos_embed" in a for a in summary.load.adapted)
    assert model.pretrained_cfg["input_size"] == (3, 28, 28)


def test_dinov2_is_not_called_an_mae_encoder_decoder(dinov2_file):
    path, _ = dinov2_file
    model = medhub.load(path, arch="vit_small_patch14_dinov2", img_size=56, **DINO_KW)
    conversion = model.medhub_load_report.conversion
    assert conversion.fmt == "dinov2" and "MAE" not in conversion.reason
    assert "mask_token" in conversion.dropped


def test_distilled_deit_keeps_its_two_prefix_tokens_when_resampled(tmp_path):
    arch = "deit_tiny_distilled_patch16_224"
    src = om.randomize(timm.create_model(arch, img_size=64, num_classes=4, **VIT_KW), 4)
    path = _save(tmp_path / "deit.pth", src.state_dict())
    model = medhub.load(path, arch=arch, img_size=32, **VIT_KW)
    expected = resample_abs_pos_embed(src.pos_embed.detach(), new_size=(2, 2), num_prefix_tokens=2)
    assert torch.equal(model.pos_embed.detach(), expected)
    reference = timm_own(arch, path, img_size=32, num_classes=4, **VIT_KW)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x), reference(x), atol=1e-5)
    assert model.medhub_load_report.load.classifier == "kept (4 classes)"


def test_register_tokens_model_without_class_embedding_is_resampled(tmp_path):
    arch = "vit_small_patch14_reg4_dinov2"
    src = om.randomize(timm.create_model(arch, img_size=56, num_classes=0, **DINO_KW), 5)
    path = _save(tmp_path / "reg.pth", src.state_dict())
    model = medhub.load(path, arch=arch, img_size=42, **DINO_KW)
    expected = resample_abs_pos_embed(src.pos_embed.detach(), new_size=(3, 3), num_prefix_tokens=0)
    assert torch.equal(model.pos_embed.detach(), expected)


def test_patch_size_change_resamples_patch_and_position_embeddings_like_timm(tmp_path):
    arch = "vit_small_patch16_224"
    src = om.randomize(timm.create_model(arch, img_size=32, num_classes=0, **VIT_KW), 6)
    path = _save(tmp_path / "vit16.pth", src.state_dict())
    model = medhub.load(path, arch=arch, img_size=32, patch_size=8, **VIT_KW)
    assert model.patch_embed.proj.weight.shape[-2:] == (8, 8) and model.pos_embed.shape[1] == 1 + 16
    reference = timm_own(arch, path, img_size=32, patch_size=8, num_classes=0, **VIT_KW)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x), reference(x), atol=1e-4)
    adapted = model.medhub_load_report.load.adapted
    assert any("patch_embed.proj.weight" in a and "16x16 -> 8x8" in a for a in adapted)


def test_img_size_with_in_chans_1_on_a_vit(tmp_path):
    arch = "vit_small_patch16_224"
    src = om.randomize(timm.create_model(arch, img_size=64, num_classes=0, **VIT_KW), 7)
    path = _save(tmp_path / "vit.pth", src.state_dict())
    model = medhub.load(path, arch=arch, img_size=32, in_chans=1, **VIT_KW)
    assert model.patch_embed.proj.weight.shape[1] == 1
    assert torch.allclose(model.patch_embed.proj.weight, src.patch_embed.proj.weight.sum(1, keepdim=True))
    assert model.pretrained_cfg["input_size"] == (1, 32, 32)


def test_create_model_resamples_a_state_dict_given_directly():
    """The registry path converts at the entry's size, then builds at the caller's: create_model resamples."""
    arch = "vit_small_patch16_224"
    src = om.randomize(timm.create_model(arch, img_size=64, num_classes=3, **VIT_KW), 8)
    model, report = create_model(arch, src.state_dict(), img_size=32, **VIT_KW)
    expected = resample_abs_pos_embed(src.pos_embed.detach(), new_size=(2, 2), num_prefix_tokens=1)
    assert torch.equal(model.pos_embed.detach(), expected)
    assert any("pos_embed" in a for a in report.adapted) and report.classifier == "kept (3 classes)"


def test_a_non_square_position_grid_is_refused_with_what_to_pass():
    arch = "vit_small_patch16_224"
    state = dict(om.randomize(timm.create_model(arch, img_size=32, num_classes=0, **VIT_KW), 9).state_dict())
    state["pos_embed"] = torch.randn(1, 1 + 6, 48)
    with pytest.raises(ConversionError, match="pos_embed.*6 patch positions.*img_size"):
        create_model(arch, state, img_size=64, **VIT_KW)


# ---- features_only / out_indices ------------------------------------------------------------------------


def _tv_resnet_file(tmp_path):
    torch.manual_seed(0)
    ref = om.randomize(torchvision.models.resnet18(), 12)
    return _save(tmp_path / "resnet18.pth", ref.state_dict()), ref


def _stages(m, x):
    x = m.relu(m.bn1(m.conv1(x)))
    outs = [x]
    x = m.maxpool(x)
    for layer in (m.layer1, m.layer2, m.layer3, m.layer4):
        x = layer(x)
        outs.append(x)
    return outs


def test_features_only_from_a_checkpoint_with_a_classifier(tmp_path):
    path, ref = _tv_resnet_file(tmp_path)
    model = medhub.load(path, arch="resnet18", features_only=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        feats, expected = model(x), _stages(ref, x)
    assert len(feats) == 5
    for got, want in zip(feats, expected):
        assert torch.allclose(got, want, atol=1e-5)
    report = model.medhub_load_report.load
    assert "features_only" in report.classifier and "kept" not in report.classifier
    assert any("FeatureListNet" in a for a in report.adapted)


def test_out_indices_prunes_like_timm(tmp_path):
    path, ref = _tv_resnet_file(tmp_path)
    model = medhub.load(path, arch="resnet18", features_only=True, out_indices=(1, 3), in_chans=1)
    gray = torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        feats = model(gray)
        expected = _stages(ref, gray.expand(-1, 3, -1, -1))
    assert [f.shape[1] for f in feats] == [64, 256]
    assert torch.allclose(feats[0], expected[1], atol=1e-4) and torch.allclose(feats[1], expected[3], atol=1e-4)
    assert not hasattr(model, "layer4") and not hasattr(model, "fc")


def test_features_only_vit_is_timm_s_feature_getter(tmp_path):
    arch = "vit_small_patch16_224"
    src = om.randomize(timm.create_model(arch, img_size=32, num_classes=5, **VIT_KW), 13)
    path = _save(tmp_path / "vit.pth", src.state_dict())
    model = medhub.load(path, arch=arch, img_size=32, features_only=True, out_indices=(1,), **VIT_KW)
    reference = timm_own(arch, path, img_size=32, features_only=True, out_indices=(1,), **VIT_KW)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        got, want = model(x), reference(x)
    assert len(got) == len(want) == 1 and torch.allclose(got[0], want[0], atol=1e-5)


# ---- global_pool="avg" on ViTs (MAE's fine-tuning recipe) ------------------------------------------------


def test_global_pool_avg_uses_a_new_fc_norm_and_says_norm_is_unused(tmp_path):
    ckpt, _ = om.mae_checkpoint()
    path = _save(tmp_path / "mae_pretrain_vit_small.pth", ckpt)
    kwargs = {k: v for k, v in om.VIT.items()}
    model = medhub.load(path, arch="vit_small_patch16_224", global_pool="avg", num_classes=2, **kwargs)
    load = model.medhub_load_report.load
    assert {"norm.weight", "norm.bias"} <= set(load.dropped)
    assert any("global_pool='avg'" in a and "fc_norm" in a for a in load.adapted)
    assert sorted(load.missing) == ["fc_norm.bias", "fc_norm.weight", "head.bias", "head.weight"]
    assert torch.equal(model.fc_norm.weight.detach(), torch.ones(48))
    # the pooled features: the blocks' tokens (no final norm), averaged over patches, through a new LayerNorm
    token_model = medhub.load(path, arch="vit_small_patch16_224", **kwargs)
    token_model.norm = torch.nn.Identity()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        tokens = token_model.forward_features(x)
        expected = torch.nn.functional.layer_norm(tokens[:, 1:].mean(1), (48,), eps=1e-6)
        got = model.forward_head(model.forward_features(x), pre_logits=True)
    assert torch.allclose(got, expected, atol=1e-5)


def test_fc_norm_weights_into_a_token_pool_vit_point_to_global_pool(tmp_path):
    arch = "vit_small_patch16_224"
    src = om.randomize(timm.create_model(arch, img_size=32, global_pool="avg", num_classes=2, **VIT_KW), 14)
    path = _save(tmp_path / "finetuned.pth", src.state_dict())
    with pytest.raises(ConversionError, match="global_pool='avg'"):
        medhub.load(path, arch=arch, img_size=32, **VIT_KW)
    model = medhub.load(path, arch=arch, img_size=32, global_pool="avg", **VIT_KW)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x), src.eval()(x), atol=1e-5)


# ---- in_chans on every path -----------------------------------------------------------------------------


def test_in_chans_on_convert_file_and_a_one_channel_source(tmp_path):
    from medhub.convert import convert_file

    path, _ = _tv_resnet_file(tmp_path)
    state, _ = convert_file(path, arch="resnet18", in_chans=1)  # the first conv is adapted by the build
    assert state["conv1.weight"].shape[1] == 3
    gray = om.randomize(torchvision.models.resnet18(num_classes=2), 15)
    gray.conv1 = torch.nn.Conv2d(1, 64, 7, 2, 3, bias=False)
    gray_path = _save(tmp_path / "gray.pth", gray.state_dict())
    model = medhub.load(gray_path, arch="resnet18")
    assert model.conv1.in_channels == 1 and model.pretrained_cfg["input_size"][0] == 1
    x = torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        assert torch.allclose(model(x), gray.eval()(x), atol=1e-5)


# ---- the contract stays strict -------------------------------------------------------------------------


def test_options_do_not_loosen_the_contract(tmp_path):
    path, _ = _tv_resnet_file(tmp_path)
    with pytest.raises(ConversionError, match="do not fit 'resnet34'"):
        medhub.load(path, arch="resnet34", features_only=True)
    arch = "vit_small_patch16_224"
    src = om.randomize(timm.create_model(arch, img_size=64, num_classes=0, **VIT_KW), 16)
    vit = _save(tmp_path / "vit.pth", src.state_dict())
    with pytest.raises(ConversionError, match="do not fit .* with other shapes"):
        medhub.load(vit, arch=arch, img_size=32, embed_dim=96, depth=2, num_heads=3)
    with pytest.raises(medhub.errors.UsageError, match="out_indices only applies with features_only=True"):
        medhub.load(path, arch="resnet18", out_indices=(1, 2))


def test_a_timm_swin_at_another_window_has_its_tables_resized_and_reported(tmp_path):
    arch, kw = "swin_tiny_patch4_window7_224", dict(om.SWIN)
    src = om.randomize(timm.create_model(arch, num_classes=0, **kw), 17)
    path = _save(tmp_path / "swin.pth", src.state_dict())
    model = medhub.load(path, arch=arch, img_size=192, window_size=6, **kw)
    adapted = model.medhub_load_report.load.adapted
    assert any("relative_position_bias_table 13x13 -> 11x11 (window 7 -> 6)" in a for a in adapted)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 192, 192)).shape == (1, 96)


def test_out_indices_as_a_count_of_last_blocks_on_a_vit(tmp_path):
    arch, kw = "vit_small_patch16_224", dict(embed_dim=48, depth=4, num_heads=3)
    src = om.randomize(timm.create_model(arch, img_size=32, num_classes=0, **kw), 18)
    path = _save(tmp_path / "vit4.pth", src.state_dict())
    model = medhub.load(path, arch=arch, img_size=32, features_only=True, out_indices=2, **kw)
    assert any("out_indices (2, 3)" in a for a in model.medhub_load_report.load.adapted)
    reference = timm_own(arch, path, img_size=32, features_only=True, out_indices=2, **kw)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(model(x), reference(x)))
