"""The resolved plan (``reproduce --dry-run``) against the released code's values, and the verdict rule."""

from __future__ import annotations

import copy
import json
import math
import random

import numpy as np
import pytest

from medhub.cli import main
from medhub.errors import UsageError
from medhub.registry import load_registry
from medhub.reproduce import reproduce
from medhub.train.protocol import SHORTENED, make_plan
from medhub.train.runner import subset_indices
from medhub.train.verdict import NO_PUBLISHED, NOT_COMPARABLE, NOT_REPRODUCED, REPRODUCED, tolerance, verdict

IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


def task(name):
    return load_registry().get_task(name)


def test_dry_run_json_is_the_released_classification_recipe(capsys):
    assert main(["reproduce", "resnet50_imagenet1k", "chestxray14", "--dry-run", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    # BenchmarkTransferLearning Version2/main_classification.py:43-50,72; engine.py:59-67; dataloader.py:25-37
    assert (plan["optimizer"], plan["lr"], plan["weight_decay"], plan["batch_size"]) == ("adam", 2e-4, 0.0, 32)
    assert (plan["epochs"], plan["patience"], plan["scheduler"]) == (1000, 10, "reduce_on_plateau")
    assert plan["scheduler_kwargs"]["factor"] == 0.5 and plan["scheduler_kwargs"]["patience"] == 5
    assert plan["normalization"] == IMAGENET and plan["precision"] == "fp32" and plan["warmup_epochs"] == 0
    assert plan["head_init"] == {"kind": "normal", "std": 0.01, "bias": 0.0, "family": "resnet"}
    crop, flip, rotation = plan["augment"]
    assert crop["step"] == "random_resized_crop" and crop["size"] == 224 and crop["scale"] == [0.08, 1.0]
    assert flip["step"] == "horizontal_flip" and rotation == {"step": "rotation", "degrees": 7.0, "fill": 0,
                                                             "as_named": "RandomRotation(7)"}
    assert plan["split"]["train"]["size"] == 75312 and plan["split"]["test"]["size"] == 25596
    assert plan["labels_trained"] == plan["labels_evaluated"] and len(plan["labels_trained"]) == 14
    assert plan["published"]["mean"] == pytest.approx(0.817) and plan["comparable"] is True
    assert plan["overrides"] == {} and plan["subset"] is None
    assert "Version2/main_classification.py:50" in plan["sources"]["lr"]
    assert plan["sources"]["lr"].startswith("MR-HosseinzadehTaher/BenchmarkTransferLearning@5656fec ")


def test_every_initialisation_gets_imagenet_statistics():
    # SimCLR's checkpoint records mean 0 / std 1; the released code fine-tunes it with ImageNet's (C8)
    simclr = next(m.id for m in load_registry().list_models() if "simclr" in m.id and m.family == "resnet")
    assert make_plan(task("shenzhen"), model=simclr).normalization_values == IMAGENET


def test_head_init_by_family_and_keep_head_override():
    # Version2/models.py:55-60 (ResNet), :33 + timm (ConvNeXt, trunc normal .02)
    assert make_plan(task("chestxray14"), model="convnext_base_imagenet1k").head_init["kind"] == "trunc_normal"
    kept = make_plan(task("chestxray14"), model="resnet50_imagenet1k_chexpert", keep_head=True)
    assert kept.head_init["kind"] == "kept" and "head" in kept.overrides
    assert kept.comparable is False and any(d.startswith("head:") for d in kept.deviations)


def test_medmnist_default_is_the_published_network_and_schedule():
    plan = make_plan(task("pneumoniamnist"), model="random:resnet18")
    assert (plan.epochs, plan.stem, plan.batch_size, plan.lr) == (100, "cifar", 128, 1e-3)
    assert plan.scratch_init == "pytorch_default" and plan.input == "native" and not plan.shortened
    assert plan.published["mean"] == pytest.approx(0.944) and plan.published["acc"]["mean"] == pytest.approx(0.854)
    assert plan.comparable


def test_medmnist_quick_and_short_runs_are_indicative():
    quick = make_plan(task("pneumoniamnist"), model="random:resnet18", quick=True, train_size=4708)
    assert quick.shortened and quick.epochs == 5 and not quick.comparable and quick.published is None
    assert quick.reference["mean"] == pytest.approx(0.944)
    assert any(SHORTENED in d for d in quick.deviations)
    with pytest.raises(UsageError, match="MedMNIST"):
        make_plan(task("chestxray14"), model="random:resnet50", quick=True)


def test_medmnist_224_means_28px_upsampled_and_native_files_are_another_setting():
    up = make_plan(task("pneumoniamnist"), model="random:resnet18", img_size=224)
    assert up.input == "nearest_from_28" and up.stem is None and up.input_channels == 3
    assert up.published["mean"] == pytest.approx(0.956) and up.comparable
    native = make_plan(task("pneumoniamnist"), model="random:resnet18", img_size=224, native_size=True)
    assert native.input == "native" and native.published is None and not native.comparable
    # a timm stem at 28 px is not the published network: no number for that setting
    timm_stem = make_plan(task("pneumoniamnist"), model="random:resnet18", cifar_stem=False)
    assert timm_stem.published is None and "stem" in timm_stem.overrides and not timm_stem.comparable


def test_precision_and_subset_seed_overrides_are_recorded():
    plan = make_plan(task("chestxray14"), model="resnet50_imagenet1k", precision="bf16")
    assert plan.overrides["precision"] == {"value": "bf16", "protocol": "fp32"} and not plan.comparable
    fraction = make_plan(task("chestxray14"), model="resnet50_imagenet1k", label_fraction=0.1, subset_seed=3)
    assert fraction.subset["seed"] == 3 and fraction.overrides["subset_seed"] == {"value": 3, "protocol": 99}
    assert make_plan(task("chestxray14"), label_fraction=0.1).subset["seed"] == 99


@pytest.mark.parametrize("count,fraction", [(75312, 0.1), (463, 0.25), (1000, 0.5), (37, 0.07)])
def test_subset_is_the_released_rule_index_by_index(count, fraction):
    # Version2/dataloader.py:98-102: indexes = np.arange(N); random.Random(99).shuffle(indexes); int(N * p / 100.0)
    indexes = np.arange(count)
    random.Random(99).shuffle(indexes)
    percent = round(fraction * 100)
    expected = indexes[:int(indexes.shape[0] * percent / 100.0)]
    assert subset_indices(count, fraction) == expected.tolist()
    assert subset_indices(count, fraction, seed=99) != subset_indices(count, fraction, seed=1)
    with pytest.raises(UsageError):
        subset_indices(5, 0.1)


def test_tolerance_rule():
    assert tolerance(0.0015, 0.0, 1) == pytest.approx(0.01)
    assert tolerance(0.0182, 0.0, 1) == pytest.approx(0.0364)
    assert tolerance(None, 0.02, 4) == pytest.approx(0.02)
    assert tolerance(0.001, 0.03, 4) == pytest.approx(0.03)


def base_plan(mean=0.8903, std=0.0182):
    return {"model": "random:resnet50", "task": "shenzhen", "metric": "auc", "deviations": [],
            "protocol_partly_unknown": [], "setting": {"img_size": 224},
            "published": {"mean": mean, "std": std, "source": "DART 2021"}}


def test_verdicts():
    plan = base_plan()
    ok = verdict(plan, 0.87, 0.01, 3)
    assert ok["verdict"] == REPRODUCED and ok["tolerance"] == pytest.approx(0.0364)
    low = verdict(plan, 0.84, 0.01, 3)
    assert low["verdict"] == NOT_REPRODUCED and "below" in low["verdict_reasons"][0]
    assert "by 0.0139" in low["verdict_reasons"][0] and low["difference"] == pytest.approx(-0.0503)
    high = verdict(base_plan(0.80, 0.001), 0.83, 0.0, 5)
    assert high["verdict"] == NOT_REPRODUCED and "above" in high["verdict_reasons"][0]
    deviating = dict(plan, deviations=["lr: 0.001 instead of the published 0.0002"])
    out = verdict(deviating, 0.89, 0.0, 1)
    assert out["verdict"] == NOT_COMPARABLE and out["verdict_reasons"][0].startswith("lr:")
    assert verdict(dict(plan, published=None), 0.9, 0.0, 1)["verdict"] == NO_PUBLISHED
    assert verdict(plan, math.nan, 0.0, 1)["verdict"] == NOT_COMPARABLE


def test_short_run_report_ends_in_not_comparable(tmp_path, shared_data):
    out = tmp_path / "out"
    report = reproduce("random:resnet18", "breastmnist", data_dir=shared_data / "breastmnist", epochs=1,
                       label_fraction=0.5, cifar_stem=False, out=out, progress=False, device="cpu")
    saved = json.loads((out / "report.json").read_text())
    assert list(saved)[-2:] == ["verdict", "verdict_reasons"]
    assert saved["verdict"] == NOT_COMPARABLE and any(SHORTENED in r for r in saved["verdict_reasons"])
    assert report["protocol"]["stem"] is None and report["runs"][0]["epochs"] == 1
    # the subset is the released rule over the train list: int(546 * 50 / 100.0) = 273 samples
    assert any("273 of 546 train samples" in note for note in saved["protocol"]["notes"])
    assert "verdict: not comparable" in (out / "report.md").read_text()


def test_plan_json_is_a_copyable_dict():
    plan = reproduce("random:resnet18", "pneumoniamnist", dry_run=True)
    assert copy.deepcopy(plan) == json.loads(json.dumps(plan))


def test_protocols_doc_is_current_and_cites_every_classification_value():
    from pathlib import Path

    from medhub import protocols_doc

    path = Path(__file__).resolve().parents[1] / "docs" / "protocols.md"
    assert path.read_text(encoding="utf-8") == protocols_doc.render(), (
        "docs/protocols.md is stale: run 'medhub registry protocols --out docs/protocols.md'")
    registry = load_registry()
    for task_id in ("chestxray14", "pneumoniamnist"):
        protocol = registry.get_task(task_id).protocol
        uncited = [key for _, _, key in protocols_doc.FIELDS if key not in protocol.sources]
        assert uncited == [], f"{task_id}: values without a released-code source: {uncited}"
        assert protocol.code in ("MR-HosseinzadehTaher/BenchmarkTransferLearning@5656fec", "MedMNIST/experiments@70b6b3a")


def test_protocols_cli_check(tmp_path, capsys):
    stale = tmp_path / "protocols.md"
    stale.write_text("old\n")
    assert main(["registry", "protocols", "--out", str(stale), "--check"]) == 1
    assert main(["registry", "protocols", "--out", str(stale)]) == 0
    assert main(["registry", "protocols", "--out", str(stale), "--check"]) == 0
    assert "is current" in capsys.readouterr().out


def test_classifier_reinit_is_the_released_rule():
    import torch

    from medhub.train.network import build_network, init_classifier, init_from_scratch

    torch.manual_seed(0)
    network = build_network("random:resnet18", num_outputs=14, in_chans=3)
    with torch.no_grad():
        network.fc.weight.fill_(1.0)  # stands in for a kept 14-way pretrained head
    done = init_classifier(network, {"kind": "normal", "std": 0.01, "bias": 0.0})
    weight = network.fc.weight.detach()
    # Version2/models.py:56-57: weight.normal_(mean=0.0, std=0.01), bias.zero_(); 14 x 512 draws
    assert done.startswith("normal") and abs(float(weight.std()) - 0.01) < 0.0005 and abs(float(weight.mean())) < 0.001
    assert torch.count_nonzero(network.fc.bias) == 0
    # --keep-head on a from-scratch model has nothing pretrained to keep: the fallback applies
    assert init_classifier(network, {"kind": "kept", "fallback": {"kind": "normal", "std": 0.01}},
                           model="random:resnet18", num_outputs=14).startswith("normal")
    # from scratch: torchvision's init has no zero-initialised last BN (timm zeroes it by default)
    assert float(network.layer1[0].bn2.weight.abs().sum()) == 0.0
    init_from_scratch(network, "torchvision")
    assert torch.equal(network.layer1[0].bn2.weight, torch.ones(64))
    init_from_scratch(network, "pytorch_default")  # MedMNIST's models.py: nn.Conv2d's own kaiming-uniform init
    bound = 1 / math.sqrt(64 * 3 * 3)
    conv = network.layer1[0].conv1.weight.detach()
    assert float(conv.abs().max()) <= bound and float(conv.abs().max()) > 0.9 * bound
