"""The strict load contract of medhub.build.create_model, and the SimMIM window 6 -> 7 table resize."""

from __future__ import annotations

import math

import original_models as om
import pytest
import torch

from medhub.build import architecture_spec, architecture_state_keys, create_model
from medhub.convert import convert_file, convert_state
from medhub.convert.official import geometric_resize_table
from medhub.errors import ConversionError, UsageError

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def resnet_state():
    model = om.randomize(om.tv_resnet(num_classes=7), 30)
    return model.state_dict(), model


def test_same_head_is_kept_and_outputs_match(resnet_state):
    state, original = resnet_state
    model, report = create_model("resnet18", state, pretrained_cfg={"label_names": list("abcdefg")})
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(model(x), original(x), atol=1e-5)
    assert report.classifier == "kept (7 classes)"
    assert model.pretrained_cfg["num_classes"] == 7
    assert model.pretrained_cfg["label_names"] == list("abcdefg")
    assert model.pretrained_cfg["mean"] == (0.485, 0.456, 0.406)


def test_num_classes_5_and_in_chans_1(resnet_state):
    state, original = resnet_state
    model, report = create_model("resnet18", state, num_classes=5, in_chans=1)
    assert model.fc.out_features == 5 and model.conv1.in_channels == 1
    assert torch.allclose(model.conv1.weight, state["conv1.weight"].sum(1, keepdim=True))
    assert torch.equal(model.layer4[1].bn2.running_var, state["layer4.1.bn2.running_var"])
    assert {"fc.weight", "fc.bias"} <= set(report.dropped)
    assert report.missing == ["fc.bias", "fc.weight"]
    assert "summed" in report.adapted[0]
    assert model.pretrained_cfg["input_size"][0] == 1 and len(model.pretrained_cfg["mean"]) == 1
    assert "label_names" not in model.pretrained_cfg
    # gray input replicated to RGB gives the original features
    gray = torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        feats = model.forward_head(model.forward_features(gray), pre_logits=True)
        ref = om.pooled(original)(gray.expand(-1, 3, -1, -1))
    assert torch.allclose(feats, ref, atol=1e-4)


def test_in_chans_4_repeats_and_rescales(resnet_state):
    state, _ = resnet_state
    model, report = create_model("resnet18", state, in_chans=4)
    w = state["conv1.weight"]
    expected = torch.cat([w, w[:, :1]], 1) * 3 / 4
    assert torch.allclose(model.conv1.weight, expected)
    assert "repeated and rescaled" in report.adapted[0]


def test_headless_source_gets_no_classifier_unless_asked():
    state = {k: v for k, v in om.tv_resnet().state_dict().items() if not k.startswith("fc.")}
    model, report = create_model("resnet18", state)
    assert model.num_classes == 0 and "none" in report.classifier
    model, report = create_model("resnet18", state, num_classes=3)
    assert model.fc.out_features == 3 and "source had none" in report.classifier


def test_wrong_architecture_lists_unexpected_and_missing_keys(resnet_state):
    state, _ = resnet_state
    with pytest.raises(ConversionError) as info:
        create_model("resnet34", state)
    message = str(info.value)
    assert "missing keys" in message and "layer1.2.conv1.weight" in message
    assert info.value.missing and not info.value.unexpected
    with pytest.raises(ConversionError, match="unexpected keys: .*layer1.2"):
        create_model("resnet18", {**state, "layer1.2.conv1.weight": torch.ones(1)})
    with pytest.raises(ConversionError, match="another shape"):
        create_model("resnet18", {**state, "layer1.0.conv1.weight": torch.ones(64, 64, 1, 1)})


def test_a_missing_backbone_tensor_is_an_error_not_a_silent_init(resnet_state):
    state, _ = resnet_state
    broken = dict(state)
    del broken["layer2.0.bn1.running_mean"]
    with pytest.raises(ConversionError, match="layer2.0.bn1.running_mean"):
        create_model("resnet18", broken)


def test_convert_file_checks_keys_against_arch(tmp_path):
    ckpt, _ = om.moco_checkpoint()
    path = tmp_path / "moco.pth.tar"
    torch.save(ckpt, path)
    with pytest.raises(ConversionError, match="do not fit 'resnet34'.*missing"):
        convert_file(path, arch="resnet34")
    with pytest.raises(UsageError, match="no architecture"):
        convert_file(path, arch="resnet18x")


def test_architecture_spec_names_head_and_stem():
    spec = architecture_spec("swin_tiny_patch4_window7_224", **om.SWIN)
    assert spec.classifier == ("head.fc",) and spec.first_conv == "patch_embed.proj"
    assert "head.fc.weight" in architecture_state_keys("swin_tiny_patch4_window7_224", **om.SWIN)


def _simmim_reference(table: torch.Tensor, dst: int) -> torch.Tensor:
    """SimMIM's utils.remap_pretrained_keys_swin, with scipy's FITPACK spline in place of interp2d."""
    from scipy.interpolate import RectBivariateSpline

    src = int(math.isqrt(table.shape[0]))
    left, right = 1.01, 1.5
    while right - left > 1e-6:
        q = (left + right) / 2.0
        if (1.0 - q ** (src // 2)) / (1.0 - q) > dst // 2:
            right = q
        else:
            left = q
    dis, cur = [], 1
    for i in range(src // 2):
        dis.append(cur)
        cur += q ** (i + 1)
    x = [-d for d in reversed(dis)] + [0] + dis
    t = dst // 2.0
    dx = torch.arange(-t, t + 0.1, 1.0).clamp(x[0], x[-1]).numpy()
    cols = []
    for head in range(table.shape[1]):
        z = table[:, head].view(src, src).double().numpy()
        cols.append(torch.from_numpy(RectBivariateSpline(x, x, z, kx=3, ky=3, s=0)(dx, dx)).reshape(-1, 1))
    return torch.cat(cols, -1).float()


def test_window6_table_resized_like_simmim():
    table = torch.randn(11 * 11, 3)
    out = geometric_resize_table(table, 13)
    assert out.shape == (13 * 13, 3)
    assert torch.allclose(out, _simmim_reference(table, 13), atol=1e-4)
    centre = table.view(11, 11, 3)[5, 5]
    assert torch.allclose(out.view(13, 13, 3)[6, 6], centre, atol=1e-5)  # offset 0 stays put


def test_simmim_192_window6_loads_into_224_window7(tmp_path):
    ckpt, _ = om.simmim_checkpoint()
    arch, kwargs = "swin_tiny_patch4_window7_224", dict(om.SWIN)
    spec = architecture_spec(arch, **kwargs)
    state, report = convert_state(ckpt, target=spec.shapes)
    assert report.fmt == "simmim_swin"
    assert any("window 6 -> 7" in a for a in report.adapted)
    model, _ = create_model(arch, state, num_classes=2, **kwargs)
    key = "layers.0.blocks.0.attn.relative_position_bias_table"
    src = ckpt["model"]["encoder." + key]
    assert torch.allclose(model.state_dict()[key], _simmim_reference(src, 13), atol=1e-4)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 224, 224)).shape == (1, 2)


def test_one_channel_model_folder_round_trips(tmp_path):
    """A 1-channel model written by medhub (its config repeats in_chans) loads back with equal outputs."""
    import medhub
    from medhub.export import write_model_folder

    source, _ = create_model("resnet18", None, num_classes=2, in_chans=1)
    write_model_folder(
        tmp_path / "gray", source.state_dict(), arch="resnet18", num_classes=2, label_names=["a", "b"],
        pretrained_cfg={"input_size": (1, 64, 64), "mean": (0.5,), "std": (0.25,)}, model_args={"in_chans": 1},
    )  # fmt: skip
    loaded = medhub.load(tmp_path / "gray")
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        assert torch.allclose(loaded(x), source.eval()(x), atol=1e-6)
    assert loaded.pretrained_cfg["input_size"][0] == 1


def test_a_model_built_for_another_size_says_so_in_its_config():
    """Swin built with img_size=192 only takes 192 px: its pretrained_cfg (and so its transforms) says 192."""
    from PIL import Image

    from medhub.preprocessing import build_transforms

    kwargs = {"img_size": 192, "window_size": 6, "embed_dim": 32, "depths": (1, 1, 1, 1), "num_heads": (1, 1, 1, 1)}
    model, _ = create_model("swin_tiny_patch4_window7_224", None, num_classes=2, in_chans=1, **kwargs)
    assert model.pretrained_cfg["input_size"] == (1, 192, 192)
    assert "test_input_size" not in model.pretrained_cfg
    image = build_transforms(model.pretrained_cfg)(Image.new("L", (260, 300), 128))
    with torch.no_grad():
        assert model(image.unsqueeze(0)).shape == (1, 2)
