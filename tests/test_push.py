"""medhub push against a real `medhub serve`: strict check first, timm/transformers/medhub interop, overlay."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import save_file

from medhub.cards.card import split_front_matter
from medhub.cli import main
from medhub.registry import clear_cache, load_registry, user_overlay_dir, write_overlay_entry
from medhub.schema import Checkpoint, Head, Licence, LineageStage, Preprocessing, WeightSource


def tiny_checkpoint(
    path: Path, arch: str = "test_resnet", num_classes: int = 3, seed: int = 0
) -> torch.nn.Module:
    import timm

    torch.manual_seed(seed)
    model = timm.create_model(arch, num_classes=num_classes).eval()
    save_file(model.state_dict(), str(path))
    return model


def repo_files(repo: str) -> list[str] | None:
    from huggingface_hub import HfApi

    api = HfApi(endpoint=os.environ["HF_ENDPOINT"], token=os.environ["HF_TOKEN"])  # the `hub` fixture's
    return sorted(api.list_repo_files(repo)) if api.repo_exists(repo) else None


INTEROP = r"""
import sys, torch, timm, medhub
from transformers import AutoModelForImageClassification
x, expected = torch.load(sys.argv[1], weights_only=True)
with torch.no_grad():
    outs = {
        "medhub": medhub.load(sys.argv[3]).eval()(x),
        "timm": timm.create_model("hf-hub:" + sys.argv[2], pretrained=True).eval()(x),
        "transformers": AutoModelForImageClassification.from_pretrained(sys.argv[2]).eval()(x).logits,
    }
for name, out in outs.items():
    diff = (out - expected).abs().max().item()
    print(name, tuple(out.shape), diff)
    assert out.shape == expected.shape and diff < 1e-5, name
print("EQUAL")
"""


@pytest.mark.slow
def test_push_then_load_three_ways(hub, tmp_path, capsys):
    repo = hub.new_repo_id("tiny-push")
    ck = tmp_path / "tiny.safetensors"
    model = tiny_checkpoint(ck)
    argv = ["push", str(ck), "--arch", "test_resnet", "--repo", repo, "--id", "test_resnet_lab_cxr",
            "--labels", "normal,pneumonia,other", "--data", "labcxr", "--license", "cc-by-4.0"]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    commit = out.split("commit ", 1)[1].split()[0]
    assert len(commit) == 40
    assert repo_files(repo) == [".gitattributes", "README.md", "config.json", "model.safetensors"]

    entry = load_registry().get_model("test_resnet_lab_cxr")
    source = entry.sources[0]
    assert (source.kind, source.repo, source.revision) == ("medhub_hf", repo, commit)
    assert entry.head.label_names == ("normal", "pneumonia", "other") and entry.head.first_conv == "conv1.0"
    assert entry.preprocessing.input_size == (3, 160, 160) and entry.licence.weights == "cc-by-4.0"
    assert [s.dataset for s in entry.lineage] == ["labcxr"]

    from huggingface_hub import hf_hub_download

    readme = Path(hf_hub_download(repo, "README.md", revision=commit, endpoint=hub.endpoint))
    meta, body = split_front_matter(readme.read_text())
    assert (
        meta["license"] == "cc-by-4.0" and meta["library_name"] == "timm" and meta["datasets"] == ["labcxr"]
    )
    assert f'timm.create_model("hf-hub:{repo}", pretrained=True)' in body and "not a medical device" in body
    config = json.loads(Path(hf_hub_download(repo, "config.json", endpoint=hub.endpoint)).read_text())
    assert config["architecture"] == "test_resnet" and config["num_classes"] == 3
    assert config["label_names"] == ["normal", "pneumonia", "other"]
    assert (
        config["pretrained_cfg"]["mean"] == [0.5, 0.5, 0.5] and config["pretrained_cfg"]["classifier"] == "fc"
    )

    assert main(["card", "test_resnet_lab_cxr"]) == 0
    assert f"hf-hub:{repo}@{commit}" in capsys.readouterr().out

    x = torch.randn(2, 3, 160, 160)
    with torch.no_grad():
        torch.save((x, model(x)), tmp_path / "io.pt")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run(
        [sys.executable, "-c", INTEROP, str(tmp_path / "io.pt"), repo, "test_resnet_lab_cxr"],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0 and "EQUAL" in proc.stdout, (proc.stdout + proc.stderr)[-3000:]


def test_misfit_push_uploads_nothing(hub, tmp_path, capsys):
    repo = hub.new_repo_id("misfit-arch")
    ck = tmp_path / "tiny.safetensors"
    tiny_checkpoint(ck)
    assert main(["push", str(ck), "--arch", "resnet18", "--repo", repo]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "resnet18" in err and "Traceback" not in err
    assert repo_files(repo) is None
    assert not (user_overlay_dir() / "user.yaml").exists()


def test_misfit_push_to_an_existing_repo_adds_no_commit(hub, tmp_path, capsys):
    repo = hub.new_repo_id("existing")
    good, bad = tmp_path / "good.safetensors", tmp_path / "bad.safetensors"
    tiny_checkpoint(good)
    tiny_checkpoint(bad, arch="test_vit", num_classes=3)
    assert main(["push", str(good), "--arch", "test_resnet", "--repo", repo, "--id", "tiny_existing"]) == 0
    from medhub.hub.upload import repo_head

    head = repo_head(repo)
    capsys.readouterr()
    assert main(["push", str(bad), "--arch", "test_resnet", "--repo", repo, "--id", "tiny_existing"]) == 2
    assert "do not fit 'test_resnet'" in capsys.readouterr().err
    assert repo_head(repo) == head
    assert load_registry().get_model("tiny_existing").sources[0].revision == head


def test_taken_id_and_bad_repo_are_refused_before_upload(hub, tmp_path, capsys):
    repo = hub.new_repo_id("taken")
    ck = tmp_path / "tiny.safetensors"
    tiny_checkpoint(ck)
    assert (
        main(["push", str(ck), "--arch", "test_resnet", "--repo", repo, "--id", "resnet50_imagenet1k"]) == 2
    )
    assert "already defined" in capsys.readouterr().err
    assert repo_files(repo) is None
    assert main(["push", str(ck), "--arch", "test_resnet", "--repo", "no-slash"]) == 2
    assert "ORG/NAME" in capsys.readouterr().err
    assert main(["push", str(ck), "--repo", "lab/noarch"]) == 2
    assert "--arch" in capsys.readouterr().err


def test_wrong_token_is_one_line_without_the_token(hub, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("HF_TOKEN", "not-the-right-token-123")
    ck = tmp_path / "tiny.safetensors"
    tiny_checkpoint(ck)
    assert main(["push", str(ck), "--arch", "test_resnet", "--repo", "lab/denied"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "HF_TOKEN" in err and "not-the-right-token-123" not in err


def test_push_with_base_inherits_lineage_and_folder_round_trip(hub, tmp_path, capsys):
    repo = hub.new_repo_id("from-base")
    copy_repo = hub.new_repo_id("copy")
    base = Checkpoint(
        id="test_resnet_imagenet1k_chestxray14",
        arch="test_resnet",
        family="resnet",
        objective="supervised",
        lineage=(
            LineageStage(dataset="imagenet1k", objective="supervised"),
            LineageStage(dataset="chestxray14", objective="supervised"),
        ),  # fmt: skip
        sources=(WeightSource(kind="url", url="https://example.org/never-downloaded.pth"),),
        preprocessing=Preprocessing(input_size=(3, 160, 160), mean=(0.5,) * 3, std=(0.5,) * 3),
        head=Head(classifier="fc", first_conv="conv1.0", num_classes=0),
        licence=Licence(weights="CC-BY-NC-4.0", data_terms="NIH ChestX-ray14 terms"),
    )
    write_overlay_entry(base, "bases.yaml")
    ck = tmp_path / "tiny.safetensors"
    tiny_checkpoint(ck, num_classes=2)
    argv = ["push", str(ck), "--repo", repo, "--id", "tiny_from_base", "--base", base.id,
            "--data", "pneumoniamnist"]  # fmt: skip
    assert main(argv) == 0
    capsys.readouterr()
    entry = load_registry().get_model("tiny_from_base")
    assert [s.dataset for s in entry.lineage] == ["imagenet1k", "chestxray14", "pneumoniamnist"]
    assert entry.licence.weights == "CC-BY-NC-4.0" and entry.arch == "test_resnet"

    # the pushed repo is a folder medhub wrote: pushing it again keeps its lineage
    from huggingface_hub import snapshot_download

    folder = Path(snapshot_download(repo, endpoint=hub.endpoint))
    assert main(["push", str(folder), "--repo", copy_repo, "--id", "tiny_copy", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["id"] == "tiny_copy" and len(result["commit"]) == 40
    clear_cache()
    copy = load_registry().get_model("tiny_copy")
    assert [s.dataset for s in copy.lineage] == ["imagenet1k", "chestxray14", "pneumoniamnist"]
    overlay = yaml.safe_load((user_overlay_dir() / "user.yaml").read_text())
    assert set(overlay["checkpoints"]) == {"tiny_from_base", "tiny_copy"}


def test_private_push_creates_a_private_repo(hub, tmp_path, capsys):
    from huggingface_hub import HfApi

    repo = hub.new_repo_id("private")
    ck = tmp_path / "tiny.safetensors"
    tiny_checkpoint(ck)
    assert (
        main(["push", str(ck), "--arch", "test_resnet", "--repo", repo, "--id", "tiny_private", "--private"])
        == 0
    )
    assert HfApi(endpoint=hub.endpoint, token=hub.token).model_info(repo).private is True


def test_push_without_xet_disabled_gives_the_remedy_and_leaves_no_empty_repo(hub, tmp_path):
    """The README's push as a user types it without HF_HUB_DISABLE_XET: medhub serve answers Xet with 501; the
    push says in one line what to set, and the repo it created for the upload is gone again."""
    src = tmp_path / "w.safetensors"
    tiny_checkpoint(src, num_classes=2)
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_DISABLE_XET"}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    done = subprocess.run([sys.executable, "-m", "medhub", "push", str(src), "--arch", "test_resnet", "--repo",
                           "lab/xet_push", "--id", "xet_push_test"], capture_output=True, text=True, env=env,
                          timeout=300)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert "set HF_HUB_DISABLE_XET=1" in lines[0], lines[0]
    assert repo_files("lab/xet_push") is None  # no empty repo behind the failed push
    assert not (user_overlay_dir() / "user.yaml").exists()
