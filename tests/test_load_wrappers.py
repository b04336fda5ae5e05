"""Checkpoints inside training wrappers, as people save them: any nesting of containers (state_dict, model,
net, Lightning .ckpt, EMA / teacher / student entries) and wrapper prefixes (module., _orig_mod., model.,
user attributes), found by matching the architecture's key set; prefix= / key_map= from the caller; two
different networks in one file refused with both named. Outputs are compared with the original network."""

from __future__ import annotations

import re

import original_models as om
import pytest
import timm
import torch
import torchvision

import medhub
from medhub.cli import main
from medhub.convert import convert_file
from medhub.errors import ConversionError, UsageError

torch.set_num_threads(1)
X = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))


def _save(path, obj):
    torch.save(obj, path)
    return path


def _same(model, reference, x=X):
    with torch.no_grad():
        return torch.allclose(model(x), reference(x), atol=1e-5)


@pytest.fixture(scope="module")
def net():
    """A fine-tuned timm ResNet-18 with a 2-class head (distinct random values everywhere)."""
    return om.randomize(timm.create_model("resnet18", num_classes=2), 40)


def _prefixed(state, prefix):
    return {prefix + k: v for k, v in state.items()}


# ---- the field cases -------------------------------------------------------------------------------------


def test_chexnet_dataparallel_wrapper_with_legacy_densenet_and_sequential_head(tmp_path):
    torch.manual_seed(0)
    ref = om.randomize(torchvision.models.densenet121(), 41)
    ref.classifier = torch.nn.Linear(1024, 14)
    om.randomize(ref.classifier, 42)
    legacy = {}
    for k, v in ref.state_dict().items():
        k = re.sub(r"(denselayer\d+\.)(norm|conv)([12])\.", r"\1\2.\3.", k)
        k = k.replace("classifier.", "classifier.0.")
        legacy["module.densenet121." + k] = v
    path = _save(tmp_path / "model.pth.tar", {"epoch": 1, "arch": "densenet121", "state_dict": legacy, "best_loss": 0.1})
    model = medhub.load(path, arch="densenet121")
    assert _same(model, ref)
    conversion, load = model.medhub_load_report.conversion, model.medhub_load_report.load
    assert conversion.container == "state_dict" and conversion.prefix == "module.densenet121."
    assert "prefix 'module.densenet121.' (searched)" in conversion.found
    assert conversion.renamed["module.densenet121.classifier.0.weight"] == "classifier.weight"
    assert load.classifier == "kept (14 classes)"


def test_lightning_ckpt_with_model_prefix(tmp_path, net):
    ckpt = {"epoch": 9, "global_step": 1230, "pytorch-lightning_version": "2.4.0",
            "state_dict": _prefixed(net.state_dict(), "model."), "loops": {}, "callbacks": {},
            "optimizer_states": [{"state": {0: {"exp_avg": torch.zeros(3)}}}], "lr_schedulers": [],
            "hparams_name": "kwargs", "hyper_parameters": {"arch": "resnet18", "lr": 1e-3}}  # fmt: skip
    model = medhub.load(_save(tmp_path / "epoch=9-step=1230.ckpt", ckpt), arch="resnet18")
    assert _same(model, net)
    conversion = model.medhub_load_report.conversion
    assert conversion.prefix == "model." and conversion.container == "state_dict"
    assert "PyTorch Lightning" in conversion.reason
    assert conversion.metadata["pytorch-lightning_version"] == "2.4.0"
    assert model.medhub_load_report.load.classifier == "kept (2 classes)"


# ---- other members of the kind ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "wrap",
    [
        pytest.param(lambda s: {"state_dict": _prefixed(s, "module._orig_mod.")}, id="dataparallel+compile"),
        pytest.param(lambda s: {"model": _prefixed(s, "_orig_mod.module.")}, id="compile+dataparallel"),
        pytest.param(lambda s: {"net": _prefixed(s, "backbone.")}, id="net-entry+backbone"),
        pytest.param(lambda s: {"checkpoint": {"model": _prefixed(s, "encoder.")}, "step": 5}, id="nested"),
        pytest.param(lambda s: {"state_dict": _prefixed(s, "model.model.")}, id="lightning-around-autogluon"),
        pytest.param(lambda s: _prefixed(s, "module.network."), id="flat"),
    ],
)
def test_any_nesting_of_containers_and_prefixes(tmp_path, net, wrap):
    model = medhub.load(_save(tmp_path / "w.pth", wrap(net.state_dict())), arch="resnet18")
    assert _same(model, net)
    assert model.medhub_load_report.load.classifier == "kept (2 classes)"


def test_a_dropout_linear_sequential_head_is_read_as_the_classifier(tmp_path, net):
    state = {("fc.1." + k[3:] if k.startswith("fc.") else k): v for k, v in net.state_dict().items()}
    tutorial = {"epoch": 4, "model_state_dict": state, "optimizer_state_dict": {"state": {}, "param_groups": []}}
    model = medhub.load(_save(tmp_path / "best.pt", tutorial), arch="resnet18")
    assert _same(model, net) and model.medhub_load_report.load.classifier == "kept (2 classes)"
    assert model.medhub_load_report.conversion.container == "model_state_dict"


def test_swa_averaged_model_counter_is_dropped(tmp_path, net):
    swa = torch.optim.swa_utils.AveragedModel(net)
    model = medhub.load(_save(tmp_path / "swa.pth", swa.state_dict()), arch="resnet18")
    assert _same(model, net) and "n_averaged" in model.medhub_load_report.conversion.dropped


def test_other_modules_of_the_wrapper_are_dropped_and_said(tmp_path, net):
    state = {**_prefixed(net.state_dict(), "model."), "criterion.pos_weight": torch.ones(2),
             "metric.total": torch.tensor(3)}  # fmt: skip
    model = medhub.load(_save(tmp_path / "w.ckpt", {"state_dict": state}), arch="resnet18")
    assert _same(model, net)
    conversion = model.medhub_load_report.conversion
    assert {"criterion.pos_weight", "metric.total"} <= set(conversion.dropped)
    assert any("outside prefix 'model.'" in n for n in conversion.notes)


def test_a_user_head_outside_the_backbone_is_mapped_with_prefix_and_key_map(tmp_path):
    """self.encoder = timm backbone, self.head = nn.Linear: searched, the backbone loads and its head is named
    as dropped; with prefix='model.' and key_map head. -> fc. the fine-tuned head is kept too."""
    backbone = om.randomize(timm.create_model("resnet18", num_classes=0), 43)
    head = om.randomize(torch.nn.Linear(512, 3), 44)
    state = {**_prefixed(backbone.state_dict(), "model.encoder."), **_prefixed(head.state_dict(), "model.head.")}
    path = _save(tmp_path / "wrapper.ckpt", {"state_dict": state, "pytorch-lightning_version": "2.4.0"})
    model = medhub.load(path, arch="resnet18")
    assert model.medhub_load_report.conversion.prefix == "model.encoder."
    assert {"model.head.weight", "model.head.bias"} <= set(model.medhub_load_report.conversion.dropped)
    assert model.medhub_load_report.load.classifier == "none (source had none)"
    model = medhub.load(path, arch="resnet18", prefix="model.", key_map={r"^encoder\.": "", r"^head\.": "fc."})
    conversion = model.medhub_load_report.conversion
    assert "(given)" in conversion.found and conversion.key_map == [r"^encoder\. -> ", r"^head\. -> fc."]
    assert conversion.renamed["model.head.weight"] == "fc.weight"
    assert model.medhub_load_report.load.classifier == "kept (3 classes)"
    with torch.no_grad():
        assert torch.allclose(model(X), head(backbone(X)), atol=1e-5)


def test_two_different_networks_are_refused_with_both_named(tmp_path, net):
    ema = om.randomize(timm.create_model("resnet18", num_classes=2), 45)
    state = {**_prefixed(net.state_dict(), "model."), **_prefixed(ema.state_dict(), "model_ema.module.")}
    path = _save(tmp_path / "ema.ckpt", {"state_dict": state, "pytorch-lightning_version": "2.4.0"})
    with pytest.raises(ConversionError) as info:
        medhub.load(path, arch="resnet18")
    message = str(info.value)
    assert "2 different networks" in message and "prefix='model.'" in message
    assert "prefix='model_ema.module.'" in message and "\n" not in message
    assert _same(medhub.load(path, arch="resnet18", prefix="model_ema.module."), ema)
    assert _same(medhub.load(path, arch="resnet18", prefix="model."), net)


def test_teacher_and_student_entries_of_an_unknown_trainer_are_refused(tmp_path, net):
    other = om.randomize(timm.create_model("resnet18", num_classes=2), 46)
    path = _save(tmp_path / "kd.pth", {"ema": net.state_dict(), "online": other.state_dict()})
    with pytest.raises(ConversionError, match="prefix='ema/'.*prefix='online/'"):
        medhub.load(path, arch="resnet18")
    assert _same(medhub.load(path, arch="resnet18", prefix="online/"), other)


def test_timm_train_checkpoint_keeps_state_dict_and_names_the_ema(tmp_path, net):
    ema = om.randomize(timm.create_model("resnet18", num_classes=2), 47)
    ckpt = {"epoch": 3, "arch": "resnet18", "version": 2, "state_dict": net.state_dict(),
            "state_dict_ema": ema.state_dict()}  # fmt: skip
    path = _save(tmp_path / "last.pth.tar", ckpt)
    model = medhub.load(path, arch="resnet18")
    assert _same(model, net)
    assert "prefix='state_dict_ema/'" in model.medhub_load_report.conversion.found
    assert _same(medhub.load(path, arch="resnet18", prefix="state_dict_ema/"), ema)


def test_the_same_weights_under_two_names_are_one_network(tmp_path, net):
    state = {**_prefixed(net.state_dict(), "model."), **_prefixed(net.state_dict(), "net.")}
    model = medhub.load(_save(tmp_path / "alias.pth", {"state_dict": state}), arch="resnet18")
    assert _same(model, net)
    assert "same weights also appear" in model.medhub_load_report.conversion.found


def test_a_wrong_prefix_or_key_map_says_what_to_do(tmp_path, net):
    path = _save(tmp_path / "w.pth", {"state_dict": _prefixed(net.state_dict(), "model.")})
    with pytest.raises(ConversionError, match="no tensor of the file is under prefix 'backbone.'"):
        medhub.load(path, arch="resnet18", prefix="backbone.")
    with pytest.raises(UsageError, match="not a valid regular expression"):
        medhub.load(path, arch="resnet18", key_map={"([": "x"})
    with pytest.raises(UsageError, match="checkpoint file"):
        medhub.load("resnet50_imagenet1k", prefix="model.")


def test_convert_file_without_arch_takes_a_given_prefix(tmp_path, net):
    path = _save(tmp_path / "w.pth", {"state_dict": _prefixed(net.state_dict(), "model.")})
    state, report = convert_file(path, prefix="model.")
    assert set(state) == set(net.state_dict()) and report.prefix == "model."


def test_cli_convert_prefix_and_key_map(tmp_path, net, capsys):
    backbone = om.randomize(timm.create_model("resnet18", num_classes=0), 48)
    head = om.randomize(torch.nn.Linear(512, 3), 49)
    state = {**_prefixed(backbone.state_dict(), "encoder."), **_prefixed(head.state_dict(), "head.")}
    src = _save(tmp_path / "wrapper.pth", {"net": state})
    out = tmp_path / "out"
    argv = ["convert", str(src), "--arch", "resnet18", "-o", str(out), "--prefix", "", "--key-map", r"^encoder\.=",
            "--key-map", r"^head\.=fc."]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "key_map: ^encoder\\. -> ; ^head\\. -> fc." in printed and "kept (3 classes)" in printed
    model = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    with torch.no_grad():
        assert torch.allclose(model(X), head(backbone(X)), atol=1e-5)
    assert main(["convert", str(src), "--arch", "resnet18", "-o", str(out), "--key-map", "no-equals-sign"]) == 2
    assert "--key-map" in capsys.readouterr().err


def test_torchvision_reference_training_checkpoint_keeps_model_over_its_ema(tmp_path):
    """torchvision's references/classification/train.py saves model, optimizer, ..., and model_ema (an
    AveragedModel: `module.` keys and an `n_averaged` counter)."""
    net = om.randomize(torchvision.models.resnet18(num_classes=3), 61)
    ema = torch.optim.swa_utils.AveragedModel(om.randomize(torchvision.models.resnet18(num_classes=3), 62))
    ckpt = {"model": net.state_dict(), "optimizer": {}, "lr_scheduler": {}, "epoch": 89, "model_ema": ema.state_dict()}
    path = _save(tmp_path / "checkpoint.pth", ckpt)
    model = medhub.load(path, arch="resnet18")
    assert _same(model, net)
    assert "prefix='model_ema/module.'" in model.medhub_load_report.conversion.found
    assert _same(medhub.load(path, arch="resnet18", prefix="model_ema/module."), ema.module)


def test_a_head_under_the_wrapper_s_own_name_is_refused_with_the_key_map_to_pass(tmp_path, net):
    state = {("model.classifier." + k[3:] if k.startswith("fc.") else "model." + k): v for k, v in net.state_dict().items()}
    path = _save(tmp_path / "w.ckpt", {"state_dict": state})
    with pytest.raises(ConversionError, match=r"pass key_map=\{r'\^classifier\\\.': 'fc\.'\}"):
        medhub.load(path, arch="resnet18")
    assert _same(medhub.load(path, arch="resnet18", key_map={r"^classifier\.": "fc."}), net)


def test_a_known_layout_inside_a_lightning_module_keeps_its_rules(tmp_path):
    """A Lightning module holding MoCo as self.model: the query encoder is kept, the key encoder, queue and
    projection MLP dropped, as for MoCo's own file."""
    ckpt, reference = om.moco_checkpoint()
    state = {"model." + k[len("module."):]: v for k, v in ckpt["state_dict"].items()}
    path = _save(tmp_path / "moco.ckpt", {"state_dict": state, "pytorch-lightning_version": "2.4.0", "epoch": 5})
    state_dict, report = convert_file(path, arch="resnet18")
    assert report.fmt == "moco" and "under the wrapper prefix 'model.'" in report.reason
    assert report.prefix == "model.encoder_q." and "model.queue" in report.dropped
    model = medhub.load(path, arch="resnet18")
    with torch.no_grad():
        assert torch.allclose(model(X), reference(X), atol=1e-5)


def test_key_map_to_an_empty_name_drops_a_projection_head(tmp_path, net):
    """A SimCLR-style wrapper: backbone plus a 2-layer projector under the same prefix as the network."""
    backbone = {k: v for k, v in net.state_dict().items() if not k.startswith("fc.")}
    state = {**backbone, "fc.0.weight": torch.randn(64, 512), "fc.0.bias": torch.zeros(64),
             "fc.2.weight": torch.randn(16, 64), "fc.2.bias": torch.zeros(16)}  # fmt: skip
    path = _save(tmp_path / "simclr.pth", {"state_dict": _prefixed(state, "module.")})
    with pytest.raises(ConversionError, match="4 unexpected: fc.0.bias"):
        medhub.load(path, arch="resnet18")
    model = medhub.load(path, arch="resnet18", key_map={r"^fc\.\d+\..*": ""})
    conversion = model.medhub_load_report.conversion
    assert {"module.fc.0.weight", "module.fc.2.bias"} <= set(conversion.dropped)
    assert model.medhub_load_report.load.classifier == "none (source had none)"
    pooled = timm.create_model("resnet18", num_classes=0)
    pooled.load_state_dict(backbone)
    assert _same(model, pooled.eval())
