"""The built-in registry against its sources: ../shared/reference/checkpoints.md and reported_results.md.

The reference markdown is parsed at test time, so an id, URL or number that drifts from the reference fails here.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from medhub.registry import load_registry
from medhub.registry_check import deep_problems

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = Path(os.environ.get("MEDHUB_SHARED", ROOT.parent / "shared")) / "reference"
CONVERTER_FORMATS = {
    "timm", "torchvision", "moco", "swav", "barlowtwins", "simsiam", "pycontrast", "dino", "mae", "mocov3_vit",
    "convnext_official", "swin_official", "simmim_swin", "jlianglab", "radimagenet", "detectron_backbone",
    "byol_haiku", "simclr_tf",
}
TASKS = [
    "chestxray14", "chexpert", "shenzhen", "rsna_pe", "vindrcxr", "siim_pneumothorax", "drive_vessels",
    "montgomery_lung", "scr_heart", "scr_clavicle", "usbreast", "pathmnist", "chestmnist", "dermamnist", "octmnist",
    "pneumoniamnist", "retinamnist", "breastmnist", "bloodmnist", "tissuemnist", "organamnist", "organcmnist",
    "organsmnist",
]


def _reference_text(name: str) -> str:
    path = REFERENCE / name
    if not path.is_file():
        pytest.fail(f"{path} is missing: the tests need ../shared/reference beside the repository (or MEDHUB_SHARED)")
    return path.read_text(encoding="utf-8")


def _table_rows(text: str) -> list[list[str]]:
    """Cells of every markdown table row in ``text`` (header and separator rows included)."""
    return [[c.strip() for c in line.strip().strip("|").split("|")] for line in text.splitlines() if line.startswith("|")]


@pytest.fixture(scope="module")
def checkpoint_rows() -> dict[str, list[str]]:
    """Rows of the checkpoint tables in sections A-E of checkpoints.md, keyed by registry id."""
    text = _reference_text("checkpoints.md")
    sections = text[text.index("## A.") : text.index("## F.")]
    rows = {}
    for cells in _table_rows(sections):
        if re.fullmatch(r"[a-z0-9_]+", cells[0]) and len(cells) == 9:
            rows[cells[0]] = cells
    return rows


@pytest.fixture(scope="module")
def registry():
    return load_registry()


def test_every_reference_checkpoint_is_registered(checkpoint_rows, registry):
    assert len(checkpoint_rows) > 60
    missing = sorted(set(checkpoint_rows) - set(registry.checkpoints))
    assert not missing, f"ids in checkpoints.md A-E but not in registry.yaml: {missing}"
    extra = set(registry.checkpoints) - set(checkpoint_rows)
    assert extra == {"swin_base_imagenet21k_chestxray14"}, "only the brief's unpublished example is extra"


def test_arch_original_url_and_timm_repo_match_the_reference(checkpoint_rows, registry):
    for ckpt_id, cells in checkpoint_rows.items():
        entry = registry.get_model(ckpt_id)
        arch = cells[1].split()[0]
        if re.fullmatch(r"[a-z0-9_]+", arch):
            assert entry.arch == arch, ckpt_id
        urls = [s.url for s in entry.sources if s.url]
        first_url = re.search(r"`(https?://[^`]+)`", cells[4])
        if first_url:
            assert first_url.group(1) in urls, f"{ckpt_id}: original URL missing"
        timm_repo = re.search(r"`(timm/[^`]+)`", cells[6])
        hf = [s.repo for s in entry.sources if s.kind == "timm_hf"]
        assert hf == ([timm_repo.group(1)] if timm_repo else []), ckpt_id
        if timm_repo:
            assert entry.sources[0].kind == "timm_hf", f"{ckpt_id}: timm's HF repo resolves first"


def test_reference_caveats_are_carried_over(checkpoint_rows, registry):
    for ckpt_id, cells in checkpoint_rows.items():
        entry = registry.get_model(ckpt_id)
        text = " ".join([*entry.notes, *(s.notes or "" for s in entry.sources), *(s.notes or "" for s in entry.lineage)])
        if "Source unconfirmed" in cells[8]:
            assert "nconfirmed" in text, ckpt_id
    fig_ids = {"resnet101_imagenet1k", "resnet50_coco", "resnet50_places365", "resnet50_obow_imagenet1k"}
    assert all(any("[fig]" in n for n in registry.get_model(i).notes) for i in fig_ids)


def test_entries_follow_the_id_scheme_and_unknowns_are_explained(registry):
    for entry in registry.checkpoints.values():
        chain = [d for i, d in enumerate(entry.data_chain) if i == 0 or d != entry.data_chain[i - 1]]
        assert entry.id.endswith("_" + "_".join(chain)), entry.id
        assert entry.objective == entry.lineage[-1].objective, entry.id
        for source in entry.sources:
            assert source.kind != "medhub_hf", "nothing is published yet"
            assert source.sha256 is None, "no checksum is known; none may be invented"
            assert source.format is None or source.format in CONVERTER_FORMATS, (entry.id, source.format)
            if source.kind == "timm_hf":
                assert source.repo.startswith(f"timm/{entry.arch}."), entry.id
            if source.kind == "manual":
                assert source.notes, f"{entry.id}: a manual source says how to get the file"
        if entry.licence.weights is None:
            assert entry.licence.notes, f"{entry.id}: unknown licence without a note"
        if entry.head.num_classes is None:
            assert any("num_classes" in n for n in entry.notes), f"{entry.id}: unknown head size without a note"


def test_spot_facts(registry):
    mocov3_s = registry.get_model("vit_small_mocov3_imagenet1k")
    assert mocov3_s.arch_kwargs == {"num_heads": 12}
    simmim_vit = registry.get_model("vit_base_simmim_imagenet1k")
    assert simmim_vit.arch == "beit_base_patch16_224" and simmim_vit.arch_kwargs["use_abs_pos_emb"] is False
    for simclr in ("resnet50_simclrv1_imagenet1k", "resnet50_simclrv2_imagenet1k"):
        pre = registry.get_model(simclr).preprocessing
        assert pre.mean == (0.0, 0.0, 0.0) and pre.std == (1.0, 1.0, 1.0)
    adapted = registry.get_model("resnet50_imagenet1k_chestxray14")
    assert adapted.data_chain == ("imagenet1k", "chestxray14")
    assert adapted.sources[0].format == "jlianglab" and "non-commercial" in adapted.licence.weights
    assert adapted.head.label_names[0] == "Atelectasis" and len(adapted.head.label_names) == 14
    assert registry.get_model("resnet50_imagenet21kp").head.num_classes == 11221
    assert registry.get_model("swin_base_imagenet21k").head.num_classes == 21841
    assert registry.get_model("resnet50_places365").head.num_classes == 365
    assert registry.get_model("resnet50_inat2021").head.num_classes == 10000
    assert [s.kind for s in registry.get_model("resnet50_detco_imagenet1k").sources] == ["manual"]
    brief = registry.get_model("swin_base_imagenet21k_chestx")
    assert not brief.published and brief.recipe is not None


def test_every_task_is_registered_with_a_protocol_and_layout(registry):
    assert set(TASKS) <= set(registry.tasks)
    codes = {t: registry.get_task(t).code for t in TASKS}
    assert codes["chestxray14"] == "DXC14" and codes["chexpert"] == "DXC5" and codes["siim_pneumothorax"] == "PXS"
    assert registry.get_task("chestmnist").protocol.loss == "bce"
    assert registry.get_task("pathmnist").protocol.loss == "cross_entropy"
    assert registry.get_task("breastmnist").labels == ("malignant", "normal+benign")
    assert registry.get_task("dermamnist").licence.data_terms == "CC-BY-NC-4.0"
    assert registry.get_task("retinamnist").type == "ordinal"
    assert registry.get_task("montgomery_lung").metric == "dice"


def test_medmnist_tasks_match_info_table(registry):
    text = _reference_text("reported_results.md")
    checked = 0
    for cells in _table_rows(text):
        flag = cells[0]
        if flag not in registry.tasks or not flag.endswith("mnist"):
            continue
        task = registry.get_task(flag)
        if len(cells) == 10 and cells[3].isdigit():  # flag | class | task | #classes | channels | train | val | test | ...
            assert len(task.labels) == int(cells[3]), flag
            assert [s.size for s in task.splits] == [int(cells[5]), int(cells[6]), int(cells[7])], flag
            checked += 1
        elif len(cells) == 5 and re.fullmatch(r"[0-9a-f]{32}", cells[1]):  # flag | md5 28 | 64 | 128 | 224
            files = [f"{flag}.npz", f"{flag}_64.npz", f"{flag}_128.npz", f"{flag}_224.npz"]
            assert task.layout.md5 == dict(zip(files, cells[1:])), flag
            checked += 1
    assert checked == 24


def test_domain_adaptation_table_is_complete(registry):
    text = _reference_text("reported_results.md")
    start = text.index("### Table: domain-adaptive pre-training")
    table = text[start : text.index("### Figure", start)]
    models = {
        "Scratch": "random:resnet50", "ImageNet (supervised)": "resnet50_imagenet1k",
        "ChestX-ray14 (in-domain": "resnet50_chestxray14", "CheXpert (in-domain": "resnet50_chexpert",
        "ImageNet→ChestX-ray14": "resnet50_imagenet1k_chestxray14", "ImageNet→CheXpert": "resnet50_imagenet1k_chexpert",
    }
    tasks = ["chestxray14", "chexpert", "shenzhen", "siim_pneumothorax", "montgomery_lung"]
    seen = 0
    for cells in _table_rows(table):
        model = next((m for label, m in models.items() if cells[0].startswith(label)), None)
        if model is None:
            continue
        for task, cell in zip(tasks, cells[1:]):
            found = re.search(r"([\d.]+)±([\d.]+)", cell)
            if not found:
                continue
            (result,) = [r for r in registry.results_for(model=model, task=task) if "DART 2021" in r.source]
            assert result.mean == pytest.approx(float(found.group(1)) / 100, abs=1e-9), (model, task)
            assert result.std == pytest.approx(float(found.group(2)) / 100, abs=1e-9), (model, task)
            assert result.metric == ("dice" if task in ("siim_pneumothorax", "montgomery_lung") else "auc")
            seen += 1
    assert seen == 26
    dxc14 = registry.results_for(model="resnet50_imagenet1k_chexpert", task="chestxray14")
    assert [r.mean for r in dxc14] == [0.8225]


# MedMNIST v2's 28 px rows come from the CIFAR-style ResNet (MedMNIST/experiments MedMNIST2D/models.py:74-81),
# its "224" rows from 28 px images upsampled with NEAREST (train_and_eval_pytorch.py:52-56)
SETTING = {28: {"img_size": 28, "stem": "cifar"}, 224: {"img_size": 224, "input": "nearest_from_28"}}


def test_medmnist_v2_table_is_complete(registry):
    text = _reference_text("reported_results.md")
    start = text.index("#### MedMNIST2D")
    variants = [("random:resnet18", 28), ("random:resnet18", 224), ("random:resnet50", 28), ("random:resnet50", 224)]
    seen = 0
    for cells in _table_rows(text[start : text.index("#### MedMNIST3D")]):
        flag = cells[0].lower()
        if flag not in registry.tasks:
            continue
        for (model, size), cell in zip(variants, cells[1:5]):
            auc, acc = (float(v) for v in cell.split(" / "))
            for metric, value in (("auc", auc), ("acc", acc)):
                (result,) = [
                    r for r in registry.results_for(model=model, task=flag)
                    if r.metric == metric and r.setting == SETTING[size]
                ]
                assert result.mean == value and result.runs is None and "MedMNIST v2" in result.source
                seen += 1
    assert seen == 96
    (r18,) = [r for r in registry.results_for(model="random:resnet18", task="pneumoniamnist")
              if r.metric == "auc" and r.setting == SETTING[224]]
    assert r18.mean == 0.956


def test_deep_validation_passes(registry):
    assert deep_problems(registry) == []
