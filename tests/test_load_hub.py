"""medhub.load through ``medhub serve``: pinned medhub_hf commits, timm_hf repos, ``hf-hub:`` ids, offline.

The ``hub`` fixture (tests/hub_fixture.py) runs the real server on 127.0.0.1 and sets ``HF_ENDPOINT`` and
``HF_TOKEN``; uploads go through the real ``huggingface_hub`` client. Nothing reaches the internet.
"""

from __future__ import annotations

import hashlib
import os

import pytest
import torch
import yaml
from http_files import FileServer

import medhub
from medhub.errors import ChecksumError, OfflineError
from medhub.export import write_model_folder

torch.set_num_threads(1)

ARCH = "test_resnet"
PREP = {
    "input_size": [3, 64, 64],
    "mean": [0.5, 0.5, 0.5],
    "std": [0.5, 0.5, 0.5],
    "interpolation": "bilinear",
}


def publish(
    hub, tmp_path, *, seed: int, repo: str | None = None, num_classes: int = 4
) -> tuple[str, str, torch.nn.Module]:
    """Upload a timm model folder with the real client; returns (repo, commit, model)."""
    import timm
    from huggingface_hub import HfApi

    torch.manual_seed(seed)
    model = timm.create_model(ARCH, num_classes=num_classes).eval()
    folder = write_model_folder(
        tmp_path / f"up{seed}", model.state_dict(), arch=ARCH, num_classes=num_classes,
        pretrained_cfg={**model.pretrained_cfg, "input_size": (3, 64, 64)},
    )  # fmt: skip
    api = HfApi(endpoint=os.environ["HF_ENDPOINT"])
    repo = repo or hub.new_repo_id("load")
    api.create_repo(repo, exist_ok=True)
    return repo, api.upload_folder(folder_path=str(folder), repo_id=repo).oid, model


def entry(*sources: dict, num_classes: int = 4) -> dict:
    return {
        "arch": ARCH,
        "family": "resnet",
        "objective": "supervised",
        "lineage": [{"dataset": "testdata", "objective": "supervised"}],
        "sources": list(sources),
        "preprocessing": PREP,
        "head": {"classifier": "fc", "first_conv": "conv1.0", "num_classes": num_classes},
    }


def overlay(tmp_path, monkeypatch, checkpoints: dict) -> None:
    path = tmp_path / "overlay.yaml"
    path.write_text(yaml.safe_dump({"version": 1, "checkpoints": checkpoints}))
    monkeypatch.setenv("MEDHUB_REGISTRY", str(path))


def same(a: torch.nn.Module, b: torch.nn.Module) -> None:
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(a.eval()(x), b.eval()(x), rtol=1e-5, atol=1e-5)


def test_registry_id_on_the_hub_loads_pinned_then_offline(hub, tmp_path, monkeypatch):
    repo, commit, original = publish(hub, tmp_path, seed=0)
    _, later, _ = publish(
        hub, tmp_path, seed=1, repo=repo
    )  # main moves on; the registry pins the first commit
    assert later != commit
    source = {
        "kind": "medhub_hf",
        "repo": repo,
        "revision": commit,
        "filename": "model.safetensors",
        "format": "timm",
    }
    overlay(tmp_path, monkeypatch, {"test_resnet_testdata": entry(source)})

    model = medhub.load("test_resnet_testdata")
    same(model, original)
    assert model.medhub_load_report.source == f"medhub_hf {repo}@{commit[:7]}/model.safetensors"
    assert model.pretrained_cfg["input_size"] == (3, 64, 64) and model.pretrained_cfg["mean"] == (
        0.5,
        0.5,
        0.5,
    )

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    same(medhub.load("test_resnet_testdata"), original)
    with pytest.raises(OfflineError, match=f"medhub_hf {repo}@{later[:7]}/model.safetensors: not cached"):
        medhub.load("test_resnet_testdata", revision=later)


def test_timm_hf_source_and_hf_hub_ids(hub, tmp_path, monkeypatch):
    repo, commit, original = publish(hub, tmp_path, seed=2)
    overlay(
        tmp_path,
        monkeypatch,
        {"test_resnet_timmtest": entry({"kind": "timm_hf", "repo": repo, "format": "timm"})},
    )
    same(medhub.load("test_resnet_timmtest"), original)
    by_hub_id = medhub.load(f"hf-hub:{repo}@{commit}", num_classes=2)
    assert by_hub_id.get_classifier().out_features == 2
    same(medhub.load(f"hf-hub:{repo}"), original)
    assert medhub.load(f"hf-hub:{repo}").pretrained_cfg["input_size"] == (3, 64, 64)

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    same(medhub.load("test_resnet_timmtest"), original)
    same(medhub.load(f"hf-hub:{repo}"), original)


def test_missing_hub_repo_falls_back_to_the_url(hub, tmp_path, monkeypatch):
    """Source order: medhub_hf first; when it is unavailable the original URL is used and cached."""
    import timm

    torch.manual_seed(3)
    original = timm.create_model(ARCH, num_classes=4).eval()
    served = tmp_path / "served"
    served.mkdir()
    torch.save({"state_dict": original.state_dict(), "epoch": 10}, served / "weights.pth")
    with FileServer(served) as server:
        missing = {
            "kind": "medhub_hf",
            "repo": "lab/not-published-yet",
            "revision": "0" * 40,
            "format": "timm",
        }
        url = {"kind": "url", "url": server.url("weights.pth"), "format": "timm"}
        overlay(tmp_path, monkeypatch, {"test_resnet_fallback": entry(url, missing)})
        model = medhub.load("test_resnet_fallback")
    same(model, original)
    report = model.medhub_load_report
    assert report.source.startswith("url ") and len(report.tried) == 1
    assert (
        report.tried[0].startswith("medhub_hf lab/not-published-yet@0000000")
        and "not found" in report.tried[0]
    )


def test_tampered_hub_file_is_caught_and_removed(hub, tmp_path, monkeypatch):
    repo, commit, _ = publish(hub, tmp_path, seed=4)
    wrong = hashlib.sha256(b"what the registry expected").hexdigest()
    source = {"kind": "medhub_hf", "repo": repo, "revision": commit, "format": "timm", "sha256": wrong}
    overlay(tmp_path, monkeypatch, {"test_resnet_tampered": entry(source)})
    with pytest.raises(ChecksumError, match="removed from the cache") as caught:
        medhub.load("test_resnet_tampered")
    hf_cache = os.path.join(os.environ["HF_HOME"], "hub")
    cached = [name for _, _, files in os.walk(hf_cache) for name in files]
    assert len(caught.value.actual) == 64 and caught.value.actual not in cached
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # nothing usable was left behind
    with pytest.raises(OfflineError):
        medhub.load("test_resnet_tampered")


def test_older_timm_repo_with_only_a_pickle_and_a_private_cache_dir(hub, tmp_path, monkeypatch):
    """A timm_hf repo holding only pytorch_model.bin loads; cache_dir keeps it apart."""
    import timm
    from huggingface_hub import HfApi

    torch.manual_seed(5)
    original = timm.create_model(ARCH, num_classes=4).eval()
    torch.save(original.state_dict(), tmp_path / "pytorch_model.bin")
    repo = hub.new_repo_id("legacy")
    api = HfApi(endpoint=os.environ["HF_ENDPOINT"])
    api.create_repo(repo)
    api.upload_file(
        path_or_fileobj=str(tmp_path / "pytorch_model.bin"), path_in_repo="pytorch_model.bin", repo_id=repo
    )
    overlay(tmp_path, monkeypatch, {"test_resnet_legacy": entry({"kind": "timm_hf", "repo": repo})})

    private = tmp_path / "private-cache"
    model = medhub.load("test_resnet_legacy", cache_dir=private)
    same(model, original)
    assert model.medhub_load_report.conversion.fmt == "timm"
    assert list(private.rglob("pytorch_model.bin"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    same(medhub.load("test_resnet_legacy", cache_dir=private), original)
    with pytest.raises(OfflineError, match=f"timm_hf {repo}: not cached"):
        medhub.load("test_resnet_legacy")  # the default cache never saw it
