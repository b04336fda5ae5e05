"""`medhub convert` writes a folder timm loads with `local-dir:`; outputs equal the original model's."""

from __future__ import annotations

import json
import subprocess
import sys

import original_models as om
import timm
import torch

from medhub.cli import main
from medhub.export import read_model_folder, write_model_folder

torch.set_num_threads(1)


def test_cli_convert_moco_then_timm_local_dir(tmp_path, capsys):
    ckpt, reference = om.moco_checkpoint()
    src = tmp_path / "moco_v2_800ep_pretrain.pth.tar"
    torch.save(ckpt, src)
    out = tmp_path / "out"
    assert main(["convert", str(src), "--arch", "resnet18", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "format: moco (detected" in printed and "module.encoder_q." in printed
    assert (out / "model.safetensors").is_file()
    config = json.loads((out / "config.json").read_text())
    assert config["architecture"] == "resnet18" and config["num_classes"] == 0
    assert (
        config["pretrained_cfg"]["first_conv"] == "conv1" and config["pretrained_cfg"]["classifier"] == "fc"
    )
    assert config["medhub"]["source_format"] == "moco"
    model = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(model(x), reference(x), rtol=1e-4, atol=1e-5)
    tuned = timm.create_model(f"local-dir:{out}", pretrained=True, num_classes=5, in_chans=1)
    assert tuned.fc.out_features == 5 and tuned.conv1.in_channels == 1


def test_cli_convert_swin_official_with_model_args_keeps_head(tmp_path, capsys):
    ckpt, reference = om.swin_checkpoint()
    src = tmp_path / "swin.pth"
    torch.save(ckpt, src)
    out = tmp_path / "swin_out"
    args = [
        "convert",
        str(src),
        "--arch",
        "swin_tiny_patch4_window7_224",
        "--format",
        "swin_official",
        "-o",
        str(out),
        "--label-names",
        "a,b,c,d,e,f,g",
        "--json",
    ]
    for key, value in om.SWIN.items():
        args += ["--model-arg", f"{key}={json.dumps(list(value) if isinstance(value, tuple) else value)}"]
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["conversion"]["fmt"] == "swin_official" and report["load"]["classifier"].startswith("kept")
    model = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    assert model.pretrained_cfg["label_names"] == list("abcdefg")
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.allclose(model(x), reference(x), rtol=1e-4, atol=1e-5)


def test_cli_errors_are_one_line_exit_2(tmp_path):
    ckpt, _ = om.moco_checkpoint()
    src = tmp_path / "m.pth"
    torch.save(ckpt, src)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "medhub",
            "convert",
            str(src),
            "--arch",
            "resnet34",
            "-o",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("medhub: error: the converted weights do not fit 'resnet34'")
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o" / "model.safetensors").exists()


def test_write_and_read_model_folder_roundtrip(tmp_path):
    state = {"a": torch.arange(6.0).view(2, 3), "b": torch.ones(2)}
    state["c"] = state["a"]  # shared storage is written as separate tensors
    write_model_folder(
        tmp_path / "m",
        state,
        arch="resnet18",
        num_classes=2,
        label_names=["x", "y"],
        pretrained_cfg={"mean": (0.5,), "std": (0.25,), "input_size": (1, 64, 64)},
        extra={"license": "cc-by-nc-4.0"},
    )
    loaded, config = read_model_folder(tmp_path / "m")
    assert torch.equal(loaded["c"], state["a"]) and config["label_names"] == ["x", "y"]
    assert config["pretrained_cfg"]["mean"] == [0.5] and config["medhub"]["license"] == "cc-by-nc-4.0"
    assert not list((tmp_path / "m").glob(".*.tmp"))
