"""Model cards: generated from the registry, current in the repo, complete, and readable in the terminal."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest

from medhub.cards import build_cards, card_text, cards_dir, check_cards, render_card, split_front_matter
from medhub.cards.catalog import builtin_registry, card_context, find_parent
from medhub.cli import main
from medhub.registry import merge, write_overlay_entry
from medhub.schema import Checkpoint, Head, LineageStage, WeightSource

TEST_REGISTRY = Path(__file__).parent / "data" / "cards_registry.yaml"
COMMIT = "a" * 40


@pytest.fixture(scope="module")
def small_registry():
    return merge([TEST_REGISTRY])


# ---- the repository's cards ------------------------------------------------------------------------
def test_every_registry_checkpoint_has_a_current_card():
    status = check_cards()
    assert status.current, (
        f"stale cards {list(status.stale)[:5]}, orphaned {list(status.orphaned)[:5]}: run 'medhub cards build' "
        "and commit model_cards/"
    )


def test_repository_cards_front_matter_matches_registry_results():
    registry = builtin_registry()
    for cid, entry in registry.checkpoints.items():
        meta, body = split_front_matter((cards_dir() / f"{cid}.md").read_text(encoding="utf-8"))
        assert (
            meta["license"]
            and meta["library_name"] == "timm"
            and meta["pipeline_tag"] == "image-classification"
        )
        assert meta["datasets"] == list(dict.fromkeys(entry.data_chain))
        recorded = sorted((r.task, r.mean) for r in registry.results if r.model == cid)
        carded = sorted(
            (res["dataset"]["type"], res["metrics"][0]["value"])
            for block in meta.get("model-index", [])
            for res in block["results"]
        )
        assert carded == recorded, cid
        for heading in (
            "## Lineage",
            "## Intended use and limitations",
            "## Preprocessing",
            "## How to load it",
            "## Reported results",
            "## Licence and terms of use",
            "## Citation",
        ):
            assert heading in body, (cid, heading)
        assert "not a medical device" in body


# ---- card content ----------------------------------------------------------------------------------
def test_card_of_a_two_stage_checkpoint(small_registry):
    text = card_text("resnet50_imagenet1k_chestxray14", small_registry)
    meta, body = split_front_matter(text)
    assert meta["license"] == "other" and meta["license_name"] == "asu-non-commercial"
    assert meta["license_link"] == "https://example.org/licence"
    assert meta["base_model"] == "timm/resnet50.tv_in1k"  # the parent's Hub repo
    assert meta["datasets"] == ["imagenet1k", "chestxray14"]
    results = meta["model-index"][0]["results"]
    by_task = {r["dataset"]["type"]: r for r in results}
    assert by_task["chestxray14"]["metrics"][0] == {
        "type": "roc_auc",
        "value": 0.8312,
        "name": "AUC (mean, 10 runs, std 0.0008)",
    }
    assert by_task["shenzhen_tb"]["metrics"][0]["args"] == {"img_size": 224}
    assert "| 2 | ChestX-ray14 (NIH) | supervised |" in body
    assert "Continues from the registry checkpoint `resnet50_imagenet1k`" in body
    assert "| ChestX-ray14 (`chestxray14`) | AUC | 0.8312 ± 0.0008 | 10 |" in body
    assert "| Shenzhen TB (`shenzhen_tb`) | AUC | 0.9901 | not stated | img_size=224 |" in body
    assert "sha256 `" + "0" * 64 + "`" in body
    assert "doi:10.1007/978-3-030-87722-4_1" in body
    assert "Not for clinical use" in body
    # not on the Hub in timm format: no hf-hub line that would fail
    assert "hf-hub:" not in body.replace("hf-hub:ORG/NAME", "")


def test_card_how_to_load_with_plain_timm_and_recipe(small_registry):
    body = split_front_matter(card_text("resnet50_imagenet1k", small_registry))[1]
    assert 'timm.create_model("hf-hub:timm/resnet50.tv_in1k", pretrained=True)' in body
    assert 'medhub.load("resnet50_imagenet1k"' in body
    recipe = card_text("swin_base_simmim_imagenet1k", small_registry)
    assert split_front_matter(recipe)[0]["license"] == "unknown"
    assert "No weights are published yet" in recipe and "medhub adapt ..." in recipe


def test_parent_is_found_only_for_the_same_architecture(small_registry):
    child = small_registry.get_model("resnet50_imagenet1k_chestxray14")
    parent, exact = find_parent(child, small_registry)
    assert parent.id == "resnet50_imagenet1k" and exact
    other = child.model_copy(update={"arch": "resnet101"})
    assert find_parent(other, small_registry) == (None, False)
    # same data and objectives but another recorded run: related, not the base model
    stages = (child.lineage[0].model_copy(update={"source": "another lab"}), child.lineage[1])
    cousin = child.model_copy(update={"lineage": stages})
    assert find_parent(cousin, small_registry) == (parent, False)
    meta, body = split_front_matter(render_card(cousin, card_context(cousin, small_registry)))
    assert "base_model" not in meta and "does not record that exactly those weights" in body
    assert card_context(small_registry.get_model("resnet50_imagenet1k"), small_registry).parent is None


def test_cards_are_deterministic(small_registry):
    assert card_text("resnet50_imagenet1k", small_registry) == card_text(
        "resnet50_imagenet1k", small_registry
    )


# ---- cards build / --check -------------------------------------------------------------------------
def test_cards_build_check_finds_stale_and_orphaned_cards(tmp_path, capsys):
    folder = tmp_path / "cards"
    assert main(["cards", "build", "--check", "--dir", str(folder)]) == 1
    assert "stale" in capsys.readouterr().out
    assert main(["cards", "build", "--dir", str(folder)]) == 0
    assert main(["cards", "build", "--check", "--dir", str(folder)]) == 0
    assert "current" in capsys.readouterr().out
    some = sorted(folder.glob("*.md"))[0]
    some.write_text(some.read_text() + "hand edit\n")
    (folder / "gone_checkpoint.md").write_text("old")
    status = check_cards(folder)
    assert status.stale == (some.stem,) and status.orphaned == ("gone_checkpoint",)
    assert main(["cards", "build", "--check", "--dir", str(folder)]) == 1
    build_cards(folder)
    assert not (folder / "gone_checkpoint.md").exists()
    assert "hand edit" not in some.read_text()


# ---- medhub card ID --------------------------------------------------------------------------------
def test_card_command_plain_output_and_unknown_id(capsys):
    assert main(["card", "resnet50_imagenet1k"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("---\nlicense:") and "## Lineage" in out and "ImageNet-1K" in out
    assert main(["card", "resnet50_imagenet1kk"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "did you mean resnet50_imagenet1k" in err


def test_card_command_shows_a_pushed_overlay_entry(capsys):
    entry = Checkpoint(
        id="resnet18_mylab_cxr",
        arch="resnet18",
        family="resnet",
        objective="supervised",
        lineage=(LineageStage(dataset="mylabcxr", objective="supervised"),),
        sources=(WeightSource(kind="medhub_hf", repo="mylab/r18", revision=COMMIT),),
        head=Head(classifier="fc", first_conv="conv1", num_classes=2, label_names=("normal", "abnormal")),
    )
    write_overlay_entry(entry)
    assert main(["card", "resnet18_mylab_cxr"]) == 0
    out = capsys.readouterr().out
    assert f'timm.create_model("hf-hub:mylab/r18@{COMMIT}", pretrained=True)' in out
    assert "Labels, in output order: normal, abnormal" in out
    assert not (cards_dir() / "resnet18_mylab_cxr.md").exists()  # overlays never write repo cards


def test_card_command_renders_rich_text_on_a_terminal():
    leader, follower = pty.openpty()
    env = {**os.environ, "COLUMNS": "100", "TERM": "xterm-256color"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "medhub", "card", "resnet50_imagenet1k"],
        stdout=follower,
        stderr=follower,
        env=env,
    )
    os.close(follower)
    chunks = []
    while True:
        try:
            data = os.read(leader, 65536)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    assert proc.wait(timeout=120) == 0
    out = b"".join(chunks).decode("utf-8", "replace")
    assert "\x1b[" in out  # styled
    assert "card metadata" in out and "Lineage" in out
    assert "## Lineage" not in out and "\n---\n" not in out  # rendered, not raw Markdown
