"""Review of the wrapper search (issue 14) with other checkpoints of the same kinds: a knowledge-distillation
file holding a larger network of the same family, a mean-teacher file that is not DINO, and a network saved
with a calibration buffer beside it (TorchXRayVision's ``op_threshs``). Outputs are compared with the
original network."""

from __future__ import annotations

import original_models as om
import pytest
import timm
import torch
import torchvision
from test_load_wrappers import X, _same, _save  # the same input and helpers as the issue's own tests

import medhub
from medhub.cli import main
from medhub.errors import ConversionError, UnsafeCheckpointError


@pytest.fixture(scope="module")
def net():
    return om.randomize(timm.create_model("resnet18", num_classes=2), 60)


@pytest.mark.parametrize("order", ["student_first", "teacher_first"])
def test_a_distillation_teacher_of_a_deeper_variant_is_not_a_rival(tmp_path, net, order):
    """A ResNet-34 teacher names every ResNet-18 tensor too, but 98 of its tensors are not ResNet-18's: the
    student (which they all fit) is the ResNet-18, in any order of the entries."""
    teacher = om.randomize(timm.create_model("resnet34", num_classes=2), 61)
    entries = [("student", net.state_dict()), ("teacher_model", teacher.state_dict())]
    ckpt = dict(entries if order == "student_first" else entries[::-1])
    model = medhub.load(_save(tmp_path / "kd.pth", ckpt), arch="resnet18")
    assert _same(model, net)
    assert model.medhub_load_report.conversion.container == "student"
    assert _same(medhub.load(tmp_path / "kd.pth", arch="resnet34"), teacher)


def test_a_mean_teacher_file_is_not_called_dino_and_is_refused_with_both_named(tmp_path, net):
    """{'student', 'teacher'} with plain network keys (no DINO backbone./head.) is two networks with no
    documented order: refused naming both, each loads when chosen."""
    teacher = om.randomize(timm.create_model("resnet18", num_classes=2), 62)
    path = _save(tmp_path / "mt.pth", {"student": net.state_dict(), "teacher": teacher.state_dict(), "epoch": 9})
    with pytest.raises(ConversionError) as info:
        medhub.load(path, arch="resnet18")
    message = str(info.value)
    assert "prefix='student/'" in message and "prefix='teacher/'" in message and "\n" not in message
    model = medhub.load(path, arch="resnet18", prefix="teacher/")
    assert _same(model, teacher)
    assert "dino" not in model.medhub_load_report.conversion.fmt


def test_a_buffer_beside_the_network_is_refused_with_the_key_map_that_drops_it(tmp_path, capsys):
    """TorchXRayVision's DenseNet keeps ``op_threshs`` (its calibration thresholds) beside features/classifier:
    the refusal names the key_map that drops it, and that key_map loads the network."""
    ref = om.randomize(torchvision.models.densenet121(num_classes=3), 63)
    state = {**ref.state_dict(), "op_threshs": torch.rand(3)}
    path = _save(tmp_path / "xrv.pth", state)
    with pytest.raises(ConversionError) as info:
        medhub.load(path, arch="densenet121")
    message = str(info.value)
    assert "key_map={r'^op_threshs$': ''}" in message and "--key-map '^op_threshs$='" in message
    assert _same(medhub.load(path, arch="densenet121", key_map={r"^op_threshs$": ""}), ref)
    assert main(["convert", str(path), "--arch", "densenet121", "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "--key-map '^op_threshs$='" in err and "Traceback" not in err
    assert main(["convert", str(path), "--arch", "densenet121", "-o", str(tmp_path / "out"),
                 "--key-map", "^op_threshs$="]) == 0  # fmt: skip


class _System:
    """A pickle payload that would run a shell command when unpickled."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_a_refused_pickle_names_the_global_it_needs(tmp_path):
    """torch 2.x says 'Trying to load unsupported GLOBAL posix.system ...': the refusal names posix.system,
    never the word 'unsupported' as if it were the object."""
    marker = tmp_path / "pwned"
    path = _save(tmp_path / "last.ckpt", {"state_dict": {"w": torch.ones(1)}, "hyper_parameters": _System(marker)})
    with pytest.raises(UnsafeCheckpointError) as info:
        medhub.load(path, arch="resnet18")
    assert info.value.culprit.endswith(".system") and f"'{info.value.culprit}'" in str(info.value)
    assert not marker.exists()


@pytest.mark.parametrize(
    "content",
    [b"hello world", b"<html><body>404 Not Found</body></html>", bytes(range(256)) * 4, b""],
    ids=["text", "html_page", "binary", "empty"],
)
def test_a_file_that_is_no_checkpoint_is_refused_in_one_line(tmp_path, capsys, content):
    """A download that saved an error page or garbage as .pth: one line saying the file is not a readable
    checkpoint (not a traceback, not 'needs a Python object'); the CLI exits 2."""
    path = tmp_path / "model.pth"
    path.write_bytes(content)
    said = "empty" if not content else "not a readable PyTorch checkpoint"
    with pytest.raises(ConversionError, match=said):
        medhub.load(path, arch="resnet18")
    assert main(["convert", str(path), "--arch", "resnet18", "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert said in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("arch", "option", "value"),
    [("deit_tiny_distilled_patch16_224", "global_pool", "avg"), ("resnet18", "depth", 3)],
    ids=["distilled_deit_avg_pool", "unknown_option"],
)
def test_an_option_timm_refuses_for_the_architecture_is_one_line(tmp_path, capsys, arch, option, value):
    """timm asserts that a distilled DeiT pools tokens, and a ResNet takes no depth=: one line naming the
    option, exit 2 on the CLI, no traceback."""
    path = _save(tmp_path / "w.pth", {"state_dict": {"conv1.weight": torch.ones(1)}})
    with pytest.raises(medhub.errors.UsageError, match=f"{option}="):
        medhub.load(path, arch=arch, **{option: value})
    code = main(["convert", str(path), "--arch", arch, "--model-arg", f"{option}={value}", "-o", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1 and option in err


def test_half_precision_weights_load_as_stored_and_the_report_says_so(tmp_path, net):
    """A model saved after .half() (AMP users do): the float32 model computes with exactly the stored
    float16 values, and the load report says the tensors were float16."""
    half = {k: v.half() if v.is_floating_point() else v for k, v in net.state_dict().items()}
    model = medhub.load(_save(tmp_path / "half.pth", {"model": half}), arch="resnet18")
    ref = timm.create_model("resnet18", num_classes=2).eval()
    ref.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in half.items()})
    with torch.no_grad():
        assert torch.equal(model(X), ref(X))
    assert any("float16" in line and "float32" in line for line in model.medhub_load_report.load.adapted)
