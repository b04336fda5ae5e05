"""The opt-in CIFAR-style ResNet stem (MedMNIST v2's 28 px network): shape, training record, reload, refusals."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from medhub.cli import main
from medhub.errors import UsageError
from medhub.registry import load_registry
from medhub.reproduce import reproduce
from medhub.train.network import build_network
from medhub.train.protocol import CIFAR_STEM_NOTE, make_plan

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_cifar_stem_keeps_28px_resolution():
    network = build_network("random:resnet18", num_outputs=2, in_chans=1, stem="cifar")
    conv = network.conv1
    assert (conv.kernel_size, conv.stride, conv.padding, conv.bias) == ((3, 3), (1, 1), (1, 1), None)
    assert conv.in_channels == 1 and conv.out_channels == 64
    assert isinstance(network.maxpool, nn.Identity)
    # timm's ResNet init: kaiming normal, fan_out (64 * 3 * 3), relu gain -> std sqrt(2 / 576) ~ 0.059
    assert 0.045 < float(conv.weight.detach().std()) < 0.075
    assert network.pretrained_cfg["stem"] == "cifar" and network.pretrained_cfg["first_conv"] == "conv1"
    network.eval()
    with torch.no_grad():
        assert network.forward_features(torch.zeros(2, 1, 28, 28)).shape == (2, 512, 4, 4)
        plain = build_network("random:resnet18", num_outputs=2, in_chans=1).eval()
        assert plain.forward_features(torch.zeros(2, 1, 28, 28)).shape == (2, 512, 1, 1)


def test_plan_stem_is_the_recipe_default_and_its_absence_is_an_override():
    task = load_registry().get_task("breastmnist")
    default = make_plan(task, model="random:resnet18", epochs=1)
    assert default.stem == "cifar" and "stem" not in default.overrides and CIFAR_STEM_NOTE not in default.notes
    without = make_plan(task, model="random:resnet18", epochs=1, cifar_stem=False)
    assert without.stem is None and without.overrides["stem"]["value"] == "standard" and CIFAR_STEM_NOTE in without.notes
    assert make_plan(task, model="random:resnet18", epochs=1, img_size=64).stem is None  # torchvision's at --resize
    assert make_plan(task, model="random:test_resnet", epochs=1).stem is None  # no single-conv ResNet stem
    assert make_plan(task, model="resnet50_imagenet1k", epochs=1).stem is None  # not a random: ResNet


def test_reproduce_with_cifar_stem_and_reload(tmp_path, shared_data):
    out = tmp_path / "out"
    report = reproduce("random:resnet18", "breastmnist", data_dir=shared_data / "breastmnist", epochs=1,
                       label_fraction=0.1, out=out, progress=False, device="cpu", cifar_stem=True)
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk["protocol"]["stem"] == "cifar" and "stem" not in on_disk["protocol"]["overrides"]
    assert report["runs"][0]["epochs"] == 1
    assert '"stem": "cifar"' in (out / "report.md").read_text()
    best = out / "run0" / "best.safetensors"
    reloaded = build_network(str(best), num_outputs=2, in_chans=None, arch="resnet18", stem="cifar").eval()
    assert reloaded.conv1.kernel_size == (3, 3) and isinstance(reloaded.maxpool, nn.Identity)
    reference = build_network("random:resnet18", num_outputs=2, in_chans=1, stem="cifar")
    reference.load_state_dict(load_file(str(best)), strict=True)
    batch = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(reloaded(batch), reference.eval()(batch))
    with pytest.raises(UsageError, match="--cifar-stem"):  # without the stem it must not load into timm's stem
        build_network(str(best), num_outputs=2, in_chans=None, arch="resnet18")
    again = tmp_path / "again"
    assert main(["reproduce", str(best), "breastmnist", "--arch", "resnet18", "--out", str(again)]) == 2
    assert not again.exists()
    import medhub
    from medhub.errors import ConversionError

    with pytest.raises(ConversionError, match="CIFAR-style stem"):  # the plain loader names the way out
        medhub.load(str(best), arch="resnet18")


@pytest.mark.parametrize("model, words", [("random:test_vit", "needs a timm ResNet"),
                                          ("resnet50_imagenet1k", "discard the pretrained stem")])
def test_cli_refuses_cifar_stem(model, words, tmp_path, capsys):
    assert main(["reproduce", model, "breastmnist", "--cifar-stem", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert words in err and "--cifar-stem" in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_benchmark_grid_forwards_the_stem():
    from medhub.grid.cells import expand_grid

    cell = expand_grid(["random:resnet18"], ["breastmnist"], [1.0], runs=1, settings={"cifar_stem": True})[0]
    assert cell.settings == {"cifar_stem": True} and cell.key.endswith("cifar_stem=true")
