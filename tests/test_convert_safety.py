"""Reading checkpoints never runs their code; foreign runtimes are refused with steps to follow."""

from __future__ import annotations

import argparse
import fractions
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from medhub.convert import FORMATS, convert_file, convert_state, read_checkpoint
from medhub.errors import ConversionError, UnsafeCheckpointError


class Evil:
    """A pickle payload whose __reduce__ would create a marker file when unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_malicious_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"conv1.weight": torch.zeros(1)}, "payload": Evil(marker)}, path)
    assert not marker.exists()
    with pytest.raises(UnsafeCheckpointError, match="never runs code") as info:
        read_checkpoint(path)
    assert info.value.culprit and info.value.culprit in str(info.value)
    with pytest.raises(UnsafeCheckpointError):
        convert_file(path, arch="resnet18")
    assert not marker.exists()


def test_raw_pickle_with_reduce_is_refused(tmp_path):
    marker = tmp_path / "pwned2"
    path = tmp_path / "evil.bin"
    path.write_bytes(pickle.dumps({"w": Evil(marker)}))
    with pytest.raises((UnsafeCheckpointError, ConversionError)):
        read_checkpoint(path)
    assert not marker.exists()


def test_argparse_namespace_is_admitted_but_nothing_else(tmp_path):
    path = tmp_path / "mae.pth"
    torch.save(
        {"model": {"cls_token": torch.ones(1, 1, 4)}, "args": argparse.Namespace(lr=1e-3), "epoch": 3}, path
    )
    obj = read_checkpoint(path)
    assert obj["args"].lr == 1e-3
    path2 = tmp_path / "other.pth"
    torch.save({"model": {}, "cfg": fractions.Fraction(1, 3)}, path2)
    with pytest.raises(UnsafeCheckpointError, match="fractions.Fraction"):
        read_checkpoint(path2)


def test_whole_model_object_is_refused_with_advice(tmp_path):
    path = tmp_path / "model.pth"
    torch.save(torch.nn.Linear(2, 2), path)
    with pytest.raises(UnsafeCheckpointError, match="state_dict"):
        read_checkpoint(path)


def test_safetensors_and_missing_files(tmp_path):
    path = tmp_path / "w.safetensors"
    save_file({"fc.weight": torch.ones(2, 3)}, str(path))
    assert torch.equal(read_checkpoint(path)["fc.weight"], torch.ones(2, 3))
    with pytest.raises(ConversionError, match="does not exist"):
        read_checkpoint(tmp_path / "nope.pth")
    truncated = tmp_path / "cut.pth"
    torch.save({"a": torch.ones(1000)}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:200])
    with pytest.raises(ConversionError, match="download completed"):
        read_checkpoint(truncated)


def test_byol_and_simclr_are_refused_with_instructions(tmp_path):
    pkl = tmp_path / "pretrain_res50x1.pkl"
    pkl.write_bytes(b"\x80\x04N.")
    with pytest.raises(ConversionError, match="dm-haiku") as info:
        convert_file(pkl, arch="resnet50")
    assert info.value.fmt == "byol_haiku"
    tf_dir = tmp_path / "ResNet50_1x"
    tf_dir.mkdir()
    (tf_dir / "model.ckpt-225206.index").write_bytes(b"")
    with pytest.raises(ConversionError, match="simclr-converter"):
        convert_file(tf_dir, arch="resnet50")
    with pytest.raises(ConversionError, match="TensorFlow"):
        convert_state({}, "simclr_tf")
    assert {"byol_haiku", "simclr_tf"} <= set(FORMATS)


def test_unknown_format_lists_the_choices(tmp_path):
    with pytest.raises(ConversionError, match="moco"):
        convert_state({"a": torch.ones(1)}, "mocov9")


def test_npz_object_arrays_refused_and_non_vit_arch_refused(tmp_path):
    bad = tmp_path / "obj.npz"
    np.savez(bad, x=np.array([{"a": 1}], dtype=object))
    with pytest.raises(UnsafeCheckpointError):
        read_checkpoint(bad)
    plain = tmp_path / "w.npz"
    np.savez(plain, x=np.ones(3, dtype=np.float32))
    assert read_checkpoint(plain)["x"].shape == (3,)
    with pytest.raises(ConversionError, match="VisionTransformer"):
        convert_file(plain, arch="resnet18")


def test_prefix_bug_of_the_paper_code_is_caught():
    """A MoCo file whose keys keep `encoder_q.` after a bare `module.` strip is reported, not loaded."""
    state = {"module.encoder_q.conv1.weight": torch.ones(1), "module.fc.weight": torch.ones(1)}
    with pytest.raises(ConversionError, match="wrapper name|expects every backbone key"):
        convert_state({"state_dict": state}, "swav")
