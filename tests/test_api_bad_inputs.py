"""The Python API refuses what the CLI refuses: numeric bounds, unknown ids, unusable paths, broken overlays,
before anything is downloaded or written; a failed run removes what it created."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import medhub
from medhub.build import create_model
from medhub.errors import DataError, DownloadError, RegistryError, UnknownModelError, UsageError
from medhub.registry import clear_cache, load_registry
from medhub.reproduce import reproduce


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"num_classes": -2}, r"num_classes must be >= 0 and <= 100000, got -2"),
    ({"in_chans": 0}, r"in_chans must be >= 1 and <= 64, got 0"),
])
def test_load_checks_bounds_before_any_download(kwargs, message, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing may be fetched
    with pytest.raises(UsageError, match=message):
        medhub.load("resnet50_imagenet1k", **kwargs)


def test_create_model_refuses_zero_channels_instead_of_building_rgb():
    with pytest.raises(UsageError, match="in_chans must be >= 1"):
        create_model("resnet18", None, in_chans=0)
    model, _ = create_model("resnet18", None, in_chans=1, num_classes=2)
    assert model.conv1.in_channels == 1


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"img_size": 100000}, r"--img-size must be >= 8 and <= 2048, got 100000"),
    ({"epochs": 0}, r"--epochs must be >= 1"),
    ({"runs": 0}, r"--runs must be >= 1"),
    ({"lr": float("nan")}, r"--lr must be > 0"),
    ({"label_fraction": 0}, r"--label-fraction must be > 0 and <= 1"),
])
def test_reproduce_bounds_write_nothing(kwargs, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UsageError, match=message):
        reproduce("random:resnet18", "breastmnist", **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_unknown_checkpoint_writes_no_plan(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UnknownModelError):
        reproduce("no_such_checkpoint", "breastmnist")
    assert list(tmp_path.iterdir()) == []  # no ./medhub-results/.../plan.json


def test_resume_with_nothing_to_resume(tmp_path, monkeypatch, caplog):
    empty = tmp_path / "out"
    empty.mkdir()
    with pytest.raises(UsageError, match="holds no run to continue; drop --resume"):
        reproduce("random:resnet18", "breastmnist", out=empty, resume=True)
    monkeypatch.setenv("MEDHUB_RESULTS", str(tmp_path / "results"))
    from medhub.reproduce import _output_dir

    with caplog.at_level("WARNING", logger="medhub.reproduce"):
        new = _output_dir("random:resnet18", "breastmnist", None, True)
    assert not new.exists()
    assert any("no unfinished run" in r.getMessage() and "starting a new one" in r.getMessage()
               for r in caplog.records)


def test_a_failed_run_removes_its_folder_and_leaves_no_lock_in_the_data_dir(tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "breastmnist.npz").write_bytes(b"")  # a zero-byte custom .npz
    out = tmp_path / "out"
    with pytest.raises(DataError, match=r"breastmnist\.npz: md5 d41d8cd98f00b204e9800998ecf8427e differs"):
        reproduce("random:resnet18", "breastmnist", data_dir=data_dir, out=out, epochs=1)
    assert not out.exists()
    assert sorted(p.name for p in data_dir.iterdir()) == ["breastmnist.npz"]
    from medhub.data.medmnist import read_npz  # a custom task's .npz (no md5 recorded): the reader's message

    with pytest.raises(DataError, match=r"not a readable \.npz file \(empty file\)"):
        read_npz(data_dir / "breastmnist.npz", "breastmnist")


def test_a_failed_download_leaves_no_lock(tmp_path):
    from medhub.hub.download import download_url

    with pytest.raises(DownloadError):
        download_url((tmp_path / "nowhere.npz").as_uri(), tmp_path / "dest" / "file.npz", progress=False)
    assert list((tmp_path / "dest").iterdir()) == []


def test_transformer_refused_at_a_size_it_cannot_take_names_the_sizes(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(UsageError) as caught:
        reproduce("random:inception_v3", "breastmnist", out=out)
    assert "inception_v3 cannot run on 28 px inputs" in str(caught.value)
    assert caught.value.sizes and 28 not in caught.value.sizes and 224 in caught.value.sizes
    assert not out.exists()


@pytest.mark.parametrize("arch", ["deit_tiny_patch16_224", "swin_tiny_patch4_window7_224"])
def test_vision_transformers_run_at_the_medmnist_size(arch, tmp_path, one_torch_thread):
    """Each ViT/DeiT/Swin is built for 28 px (timm's img_size), and the plan says so."""
    report = reproduce(f"random:{arch}", "breastmnist", epochs=1, label_fraction=0.1, batch_size=32,
                       out=tmp_path / "out", progress=False)
    assert 0.0 <= report["mean"] <= 1.0
    notes = " ".join(report["protocol"]["notes"])
    assert f"{arch} is built for 28 px with timm's img_size=28" in notes and "not upsampled" in notes


def test_empty_overlay_is_refused(tmp_path, monkeypatch):
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    monkeypatch.setenv("MEDHUB_REGISTRY", str(empty))
    clear_cache()
    with pytest.raises(RegistryError, match="this registry overlay defines nothing"):
        load_registry()


def test_overlay_with_an_arch_timm_does_not_know_is_refused_on_read(tmp_path, monkeypatch):
    import yaml

    from medhub.registry import builtin_registry_path

    body = dict(yaml.safe_load(builtin_registry_path().read_text())["checkpoints"]["resnet50_imagenet1k"])
    body.update(arch="resnet5O", aliases=[])  # a typo: letter O for zero
    overlay = tmp_path / "mine.yaml"
    overlay.write_text(yaml.safe_dump({"checkpoints": {"my_net": body}}))
    monkeypatch.setenv("MEDHUB_REGISTRY", str(overlay))
    clear_cache()
    with pytest.raises(RegistryError, match=r"checkpoint 'my_net' has arch 'resnet5O', which timm does not know "
                                            r"\(similar: .*resnet50"):
        load_registry()
    # the list of timm names is kept per timm version: the next read imports nothing
    assert any(p.name.startswith("timm-models-") for p in Path(os.environ["MEDHUB_HOME"]).iterdir())
