"""medhub.load end to end: registry overlays whose sources are real local servers, the cache, offline mode.

The url-source checkpoint is made the way MoCo v2 makes it (torchvision ResNet query/key encoders with an
MLP head, a queue, DataParallel's ``module.`` prefix, saved inside ``{'epoch', 'arch', 'state_dict',
'optimizer'}``) and served over HTTP from 127.0.0.1. Nothing reaches the internet.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from http_files import FileServer
from PIL import Image

import medhub
from medhub.cli import main as cli
from medhub.errors import (
    ChecksumError,
    OfflineError,
    UnknownModelError,
    UnsafeCheckpointError,
    UsageError,
    WeightsUnavailableError,
)

torch.set_num_threads(1)

MOCO_ID = "resnet18_mocov2_testdata"
PREP = {
    "input_size": [3, 64, 64],
    "mean": [0.5, 0.5, 0.5],
    "std": [0.25, 0.25, 0.25],
    "interpolation": "bilinear",
    "crop_pct": 1.0,
}


class MoCo(torch.nn.Module):
    """The module layout of facebookresearch/moco's ``MoCo`` builder (v2: MLP head)."""

    def __init__(self, dim: int = 128, queue: int = 256) -> None:
        super().__init__()
        import torchvision

        self.encoder_q = torchvision.models.resnet18(num_classes=dim)
        self.encoder_k = torchvision.models.resnet18(num_classes=dim)
        for encoder in (self.encoder_q, self.encoder_k):
            hidden = encoder.fc.weight.shape[1]
            encoder.fc = torch.nn.Sequential(torch.nn.Linear(hidden, hidden), torch.nn.ReLU(), encoder.fc)
        self.register_buffer("queue", torch.randn(dim, queue))
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))


@pytest.fixture(scope="module")
def moco(tmp_path_factory):
    """A served folder holding a MoCo v2 checkpoint, its sha256, and the query encoder's backbone."""
    torch.manual_seed(0)
    model = MoCo()
    for module in model.modules():  # non-trivial BN statistics, so a lost buffer shows in the outputs
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    folder = tmp_path_factory.mktemp("served")
    state = {f"module.{k}": v for k, v in model.state_dict().items()}  # saved from DataParallel
    checkpoint = {
        "epoch": 200,
        "arch": "resnet18",
        "state_dict": state,
        "optimizer": {"state": {}, "param_groups": []},
    }
    torch.save(checkpoint, folder / "moco_v2_200ep_pretrain.pth.tar")
    digest = hashlib.sha256((folder / "moco_v2_200ep_pretrain.pth.tar").read_bytes()).hexdigest()
    backbone = model.encoder_q.eval()
    backbone.fc = torch.nn.Identity()
    return folder, digest, backbone


def entry(url: str, sha256: str | None = None, **extra) -> dict:
    source = {"kind": "url", "url": url, "format": "moco"}
    if sha256:
        source["sha256"] = sha256
    return {
        "arch": "resnet18",
        "family": "resnet",
        "objective": "mocov2",
        "lineage": [{"dataset": "testdata", "objective": "mocov2", "epochs": 200}],
        "sources": [source],
        "preprocessing": PREP,
        "head": {"classifier": "fc", "first_conv": "conv1", "num_classes": 0},
        **extra,
    }


def overlay(tmp_path: Path, monkeypatch, checkpoints: dict) -> Path:
    """Write a registry overlay file and point MEDHUB_REGISTRY at it."""
    path = tmp_path / "overlay.yaml"
    path.write_text(yaml.safe_dump({"version": 1, "checkpoints": checkpoints}))
    monkeypatch.setenv("MEDHUB_REGISTRY", str(path))
    return path


def xray(channels: int = 3) -> torch.Tensor:
    """A real chest X-ray from ../shared/data, through medhub's own eval transforms."""
    from conftest import DATA

    image = Image.open(next(iter(sorted((DATA / "nih_cxr14_1000_64px" / "NIH1000" / "test").rglob("*.png")))))
    cfg = {"input_size": (channels, 64, 64), "mean": PREP["mean"], "std": PREP["std"], "crop_pct": 1.0}
    return medhub.transforms(cfg)(image).unsqueeze(0)


def test_url_source_loads_then_loads_offline_from_cache(moco, tmp_path, monkeypatch, shared_data):
    folder, digest, backbone = moco
    x = xray()
    with FileServer(folder) as server:
        overlay(tmp_path, monkeypatch, {MOCO_ID: entry(server.url("moco_v2_200ep_pretrain.pth.tar"), digest)})
        model = medhub.load(MOCO_ID).eval()
        assert len(server.requests) == 1
    with torch.no_grad():
        expected = backbone(x)
        torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)
    report = model.medhub_load_report
    assert report.source.startswith("url http://127.0.0.1") and report.conversion.fmt == "moco"
    assert report.conversion.prefix == "module.encoder_q."
    assert model.pretrained_cfg["mean"] == (0.5, 0.5, 0.5) and model.pretrained_cfg["input_size"] == (
        3,
        64,
        64,
    )
    cache = Path(os.environ["MEDHUB_HOME"])
    assert len(list((cache / "converted" / MOCO_ID).glob("*.safetensors"))) == 1
    assert not list((cache / "downloads").rglob("*.tar")), "the original file is removed once converted"

    # the server is gone: offline mode (and local_files_only) load from the converted cache
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    again = medhub.load(MOCO_ID).eval()
    monkeypatch.delenv("HF_HUB_OFFLINE")
    also = medhub.load(MOCO_ID, local_files_only=True).eval()
    with torch.no_grad():
        torch.testing.assert_close(again(x), expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(also(x), expected, rtol=1e-5, atol=1e-5)
    assert again.medhub_load_report.source == report.source


def test_offline_and_not_cached_says_what_is_missing(tmp_path, monkeypatch):
    overlay(tmp_path, monkeypatch, {MOCO_ID: entry("http://127.0.0.1:9/moco.pth.tar")})
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OfflineError) as caught:
        medhub.load(MOCO_ID)
    message = str(caught.value)
    assert "\n" not in message
    assert (
        "url http://127.0.0.1:9/moco.pth.tar: not cached" in message and f"medhub fetch {MOCO_ID}" in message
    )


def test_wrong_sha256_is_caught_and_nothing_is_cached(moco, tmp_path, monkeypatch):
    folder, digest, _ = moco
    wrong = hashlib.sha256(b"not the checkpoint").hexdigest()
    with FileServer(folder) as server:
        overlay(tmp_path, monkeypatch, {MOCO_ID: entry(server.url("moco_v2_200ep_pretrain.pth.tar"), wrong)})
        with pytest.raises(ChecksumError, match=f"expected {wrong}, got {digest}"):
            medhub.load(MOCO_ID)
    cache = Path(os.environ["MEDHUB_HOME"])
    assert not [p for p in cache.rglob("*") if p.is_file() and not p.name.endswith(".lock")]


def test_num_classes_and_one_channel_input(moco, tmp_path, monkeypatch, shared_data):
    folder, digest, backbone = moco
    with FileServer(folder) as server:
        overlay(tmp_path, monkeypatch, {MOCO_ID: entry(server.url("moco_v2_200ep_pretrain.pth.tar"), digest)})
        model = medhub.load(MOCO_ID, num_classes=5, in_chans=1).eval()
    x = medhub.transforms(model)(Image.open(next((shared_data / "nih_cxr14_1000_64px").rglob("*.png"))))
    assert x.shape == (1, 64, 64)
    with torch.no_grad():
        out = model(x.unsqueeze(0))
    assert out.shape == (1, 5) and torch.isfinite(out).all()
    # in_chans=1 sums the RGB filters of the pretrained first conv
    torch.testing.assert_close(model.conv1.weight, backbone.conv1.weight.sum(dim=1, keepdim=True))
    assert model.pretrained_cfg["input_size"] == (1, 64, 64) and model.pretrained_cfg["mean"] == (0.5,)
    assert model.pretrained_cfg["num_classes"] == 5


def test_every_source_failing_gives_one_message(tmp_path, monkeypatch):
    (tmp_path / "empty").mkdir()
    with FileServer(tmp_path / "empty") as server:
        body = entry(server.url("gone.pth.tar"))
        body["sources"].append(
            {"kind": "manual", "url": "https://example.org/ask-the-authors", "format": "moco"}
        )
        overlay(tmp_path, monkeypatch, {MOCO_ID: body})
        with pytest.raises(WeightsUnavailableError) as caught:
            medhub.load(MOCO_ID)
    message = str(caught.value)
    assert "\n" not in message
    assert "url http://127.0.0.1" in message and "HTTP 404" in message
    assert "download the file by hand from https://example.org/ask-the-authors" in message


def test_pretrained_false_builds_without_fetching(tmp_path, monkeypatch):
    overlay(tmp_path, monkeypatch, {MOCO_ID: entry("http://127.0.0.1:9/never-fetched.pth.tar")})
    model = medhub.load(MOCO_ID, pretrained=False, num_classes=3)
    assert model.fc.out_features == 3 and model.pretrained_cfg["std"] == (0.25, 0.25, 0.25)
    assert model.medhub_load_report.source is None


def test_recipe_only_alias_is_one_line():
    with pytest.raises(WeightsUnavailableError) as caught:
        medhub.load("swin_base_imagenet21k_chestx")
    message = str(caught.value)
    assert "\n" not in message and "no published weights" in message
    assert "medhub adapt swin_base_imagenet21k chestxray14" in message
    assert "swin_base_imagenet1k_mimiccxr" in message


def test_unknown_id_suggests():
    with pytest.raises(UnknownModelError, match="did you mean resnet50_imagenet1k") as caught:
        medhub.load("resnet50_imagenet1")
    assert isinstance(caught.value, KeyError)


def test_bare_file_needs_arch_and_missing_path_is_clear(moco):
    folder, _, _ = moco
    with pytest.raises(UsageError, match="arch="):
        medhub.load(folder / "moco_v2_200ep_pretrain.pth.tar")
    with pytest.raises(UsageError, match="no such file"):
        medhub.load("./nowhere/weights.pth", arch="resnet18")


def test_local_file_loads_with_arch(moco):
    folder, _, backbone = moco
    model = medhub.load(folder / "moco_v2_200ep_pretrain.pth.tar", arch="resnet18", num_classes=0).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), backbone(x), rtol=1e-5, atol=1e-5)
    assert model.medhub_load_report.conversion.detected


def test_transforms_follow_the_entry(tmp_path, monkeypatch, shared_data):
    overlay(tmp_path, monkeypatch, {MOCO_ID: entry("http://127.0.0.1:9/x.pth.tar")})
    image = Image.open(next((shared_data / "nih_cxr14_1000_64px").rglob("*.png"))).convert("L")
    eval_tf, train_tf = medhub.transforms(MOCO_ID), medhub.transforms(MOCO_ID, train=True)
    x = eval_tf(image)
    assert x.shape == (3, 64, 64) and train_tf(image).shape == (3, 64, 64)
    # grayscale replicated to 3 channels, then normalised with the entry's mean/std
    torch.testing.assert_close(x[0], x[1])
    raw = torch.from_numpy(np.asarray(image.resize((64, 64)), dtype=np.float32)) / 255
    torch.testing.assert_close(x[0], (raw - 0.5) / 0.25, atol=0.02, rtol=0)
    names = [type(t).__name__ for t in train_tf.transforms]
    assert "RandomResizedCrop" in names and "CenterCrop" not in names


class _Payload:
    """Unpickling this would create a file: proof of code execution."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_malicious_pickle_from_a_url_is_refused_and_not_kept(tmp_path, monkeypatch):
    served, marker = tmp_path / "served", tmp_path / "pwned"
    served.mkdir()
    torch.save(
        {"state_dict": {"conv1.weight": torch.zeros(1)}, "hook": _Payload(marker)}, served / "evil.pth"
    )
    with FileServer(served) as server:
        overlay(tmp_path, monkeypatch, {MOCO_ID: entry(server.url("evil.pth"))})
        with pytest.raises(UnsafeCheckpointError):
            medhub.load(MOCO_ID)
    assert not marker.exists()
    cache = Path(os.environ["MEDHUB_HOME"])
    assert not [p for p in cache.rglob("*") if p.is_file() and not p.name.endswith(".lock")]


def test_fetch_command_caches_for_offline_use(moco, tmp_path, monkeypatch, capsys):
    folder, digest, backbone = moco
    with FileServer(folder) as server:
        overlay(tmp_path, monkeypatch, {MOCO_ID: entry(server.url("moco_v2_200ep_pretrain.pth.tar"), digest)})
        assert cli(["fetch", MOCO_ID, "--json", "--no-progress"]) == 0
    row = yaml.safe_load(capsys.readouterr().out)[0]
    assert row["id"] == MOCO_ID and row["source"].startswith("url ") and row["path"].endswith(".safetensors")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = medhub.load(MOCO_ID).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), backbone(x), rtol=1e-5, atol=1e-5)
    assert cli(["fetch", "resnet18_mocov2_testdat"]) == 2
    assert capsys.readouterr().err.strip().count("\n") == 0
