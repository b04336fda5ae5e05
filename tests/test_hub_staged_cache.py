"""An offline Hub cache staged by hand (copied folders, refs written with `echo`): it loads, and what is
wrong with it is named file by file. A real ``medhub serve`` on 127.0.0.1 fills the cache first."""

from __future__ import annotations

import os
import shutil

import pytest
import timm
import torch

import medhub
from medhub.errors import CacheError, OfflineError
from medhub.export import write_model_folder
from medhub.hub import hf_file

torch.set_num_threads(1)


@pytest.fixture
def staged(hub, tmp_path, monkeypatch):
    """A repo cached online into one folder, copied by hand into another; returns (repo, staged, refs/main, model)."""
    from huggingface_hub import HfApi

    model = timm.create_model("resnet18", num_classes=3).eval()
    folder = write_model_folder(tmp_path / "up", model.state_dict(), arch="resnet18", num_classes=3)
    repo = hub.new_repo_id("staged")
    api = HfApi(endpoint=os.environ["HF_ENDPOINT"])
    api.create_repo(repo)
    api.upload_folder(folder_path=str(folder), repo_id=repo)
    medhub.load(f"hf-hub:{repo}", cache_dir=tmp_path / "online")
    shutil.copytree(tmp_path / "online", tmp_path / "staged", symlinks=True)
    ref = next((tmp_path / "staged").rglob("refs/main"))
    ref.write_text(ref.read_text().strip() + "\n")  # `echo <sha> > refs/main`
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return repo, tmp_path / "staged", ref, model


def test_a_hand_staged_ref_with_a_newline_loads_offline(staged):
    repo, cache, _, original = staged
    model = medhub.load(f"hf-hub:{repo}", cache_dir=cache)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(model(x), original(x), atol=1e-6)
    assert hf_file(repo, "config.json", revision="main", cache_dir=cache / "huggingface").is_file()


def test_a_ref_that_is_not_a_commit_is_named(staged):
    repo, cache, ref, _ = staged
    ref.write_text("v1.0\n")
    with pytest.raises(OfflineError, match=f"{ref} holds 'v1.0\\\\n', not a 40-character commit hash"):
        medhub.load(f"hf-hub:{repo}", cache_dir=cache)


def test_a_ref_to_a_snapshot_that_was_not_copied_is_named(staged):
    repo, cache, ref, _ = staged
    ref.write_text("0" * 40 + "\n")
    with pytest.raises(OfflineError, match=f"{ref} points to commit 0{{40}}, but .*snapshots/0{{40}} does not exist"):
        medhub.load(f"hf-hub:{repo}", cache_dir=cache)


def test_a_missing_ref_and_a_missing_blob_are_named(staged):
    repo, cache, ref, _ = staged
    with pytest.raises(OfflineError, match="refs/v2 does not exist .*main"):
        medhub.load(f"hf-hub:{repo}@v2", cache_dir=cache)
    weights = next((ref.parent.parent / "snapshots").rglob("model.safetensors"))
    weights.resolve().unlink()  # the admin copied the snapshot links but not this blob
    with pytest.raises(OfflineError, match="model.safetensors in the local Hub cache points to .*blobs"):
        medhub.load(f"hf-hub:{repo}", cache_dir=cache)


def test_a_registry_entry_on_a_staged_cache_names_the_wrong_ref(hub, tmp_path, monkeypatch):
    """The registry path (one Hub file per source) reads the same refs, and a wrong one stops the search."""
    import yaml
    from huggingface_hub import HfApi

    model = timm.create_model("resnet18", num_classes=3).eval()
    folder = write_model_folder(tmp_path / "up", model.state_dict(), arch="resnet18", num_classes=3)
    repo = hub.new_repo_id("staged-entry")
    api = HfApi(endpoint=os.environ["HF_ENDPOINT"])
    api.create_repo(repo)
    api.upload_folder(folder_path=str(folder), repo_id=repo)
    entry = {"arch": "resnet18", "family": "resnet", "objective": "supervised",
             "lineage": [{"dataset": "testdata", "objective": "supervised"}],
             "sources": [{"kind": "timm_hf", "repo": repo, "format": "timm"}],
             "preprocessing": {"input_size": [3, 64, 64], "mean": [0.5] * 3, "std": [0.5] * 3},
             "head": {"classifier": "fc", "first_conv": "conv1", "num_classes": 3}}  # fmt: skip
    registry = tmp_path / "overlay.yaml"
    registry.write_text(yaml.safe_dump({"version": 1, "checkpoints": {"resnet18_stagedtest": entry}}))
    monkeypatch.setenv("MEDHUB_REGISTRY", str(registry))
    medhub.load("resnet18_stagedtest", cache_dir=tmp_path / "online")
    shutil.copytree(tmp_path / "online", tmp_path / "staged", symlinks=True)
    ref = next((tmp_path / "staged").rglob("refs/main"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ref.write_text(ref.read_text() + "\n")
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(medhub.load("resnet18_stagedtest", cache_dir=tmp_path / "staged")(x), model(x), atol=1e-6)
    ref.write_text("main\n")
    with pytest.raises(CacheError, match=f"{ref} holds 'main"):
        medhub.load("resnet18_stagedtest", cache_dir=tmp_path / "staged")
