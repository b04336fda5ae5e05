"""The schema accepts well-formed entries and rejects each kind of malformed one."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from medhub.schema import Checkpoint, Head, LineageStage, Preprocessing, ReportedResult, WeightSource

GOOD = {
    "id": "resnet50_test_imagenet1k",
    "arch": "resnet50",
    "family": "resnet",
    "objective": "supervised",
    "lineage": [{"dataset": "imagenet1k", "objective": "supervised", "epochs": 90}],
    "sources": [{"kind": "url", "url": "https://example.org/r50.pth", "format": "torchvision"}],
    "head": {"classifier": "fc", "first_conv": "conv1", "num_classes": 2, "label_names": ["a", "b"]},
}


def entry(**changes) -> dict:
    return {**GOOD, **changes}


def test_accepts_a_complete_entry():
    ckpt = Checkpoint(**GOOD)
    assert ckpt.data_chain == ("imagenet1k",)
    assert ckpt.published
    assert ckpt.preprocessing.input_size == (3, 224, 224)


def test_entries_are_immutable():
    ckpt = Checkpoint(**GOOD)
    with pytest.raises(ValidationError):
        ckpt.arch = "resnet18"


@pytest.mark.parametrize(
    "changes, fragment",
    [
        ({"id": "Bad Id"}, "id"),
        ({"lineage": []}, "lineage"),
        ({"sources": []}, "recipe"),
        ({"unexpected": 1}, "unexpected"),
        ({"aliases": ["ok_alias", "NOT OK"]}, "alias"),
        ({"head": {"classifier": "fc", "first_conv": "conv1", "num_classes": 3, "label_names": ["a"]}}, "label_names"),
    ],
)
def test_rejects_malformed_checkpoints(changes, fragment):
    with pytest.raises(ValidationError, match=fragment):
        Checkpoint(**entry(**changes))


@pytest.mark.parametrize(
    "source, fragment",
    [
        ({"kind": "medhub_hf", "repo": "org/name", "revision": "main"}, "40-hex"),
        ({"kind": "medhub_hf", "repo": "org/name"}, "revision"),
        ({"kind": "timm_hf"}, "repo"),
        ({"kind": "url"}, "url"),
        ({"kind": "url", "url": "https://x", "sha256": "abc"}, "64"),
        ({"kind": "carrier_pigeon", "url": "https://x"}, "kind"),
    ],
)
def test_rejects_malformed_sources(source, fragment):
    with pytest.raises(ValidationError, match=fragment):
        WeightSource(**source)


def test_accepts_pinned_hub_source_and_checksum():
    source = WeightSource(kind="medhub_hf", repo="medhub/r50", revision="a" * 40, sha256="0" * 64)
    assert source.revision == "a" * 40


def test_recipe_only_checkpoint_is_allowed():
    ckpt = Checkpoint(**entry(sources=[], recipe={"command": "medhub adapt ..."}))
    assert not ckpt.published


def test_preprocessing_stats_must_match_channels():
    assert Preprocessing(input_size=(1, 224, 224), mean=(0.5,), std=(0.25,)).mean == (0.5,)
    with pytest.raises(ValidationError, match="mean/std"):
        Preprocessing(input_size=(1, 224, 224))
    with pytest.raises(ValidationError, match="positive"):
        Preprocessing(std=(0.2, 0.0, 0.2))


def test_results_live_on_the_unit_scale():
    result = ReportedResult(model="random:resnet18", task="t", metric="auc", mean=0.956, source="paper")
    assert result.is_baseline
    with pytest.raises(ValidationError, match="0-1 scale"):
        ReportedResult(model="m", task="t", metric="auc", mean=95.6, source="paper")


def test_head_and_stage_forbid_unknown_fields():
    with pytest.raises(ValidationError):
        Head(classifier="fc", first_conv="conv1", classes=3)
    with pytest.raises(ValidationError):
        LineageStage(dataset="imagenet1k")
