"""Registry loading, overlays, clashes and queries, against real YAML files."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import yaml

from medhub.errors import RegistryError, UnknownModelError, UnknownTaskError
from medhub.registry import builtin_registry_path, load_registry, merge, write_overlay_entry
from medhub.schema import Checkpoint, Head, LineageStage, WeightSource

OVERLAY = """
checkpoints:
  resnet18_lab_ourcxr:
    aliases: [lab_r18]
    arch: resnet18
    family: resnet
    objective: supervised
    lineage: [{dataset: ourcxr, objective: supervised}]
    sources: [{kind: url, url: "http://127.0.0.1:1/r18.pth", format: timm}]
    head: {classifier: fc, first_conv: conv1, num_classes: 2, label_names: [normal, abnormal]}
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_builtin_registry_loads_and_resolves_aliases():
    registry = load_registry()
    assert registry.get_model("swin_base_imagenet21k_chestx").id == "swin_base_imagenet21k_chestxray14"
    assert registry.resolve_id("resnet50_imagenet1k") == "resnet50_imagenet1k"


def test_unknown_id_suggests_closest():
    with pytest.raises(UnknownModelError) as info:
        load_registry().get_model("resnet50_mocov2_imagenet")
    assert "resnet50_mocov2_imagenet1k" in str(info.value)
    assert isinstance(info.value, KeyError)
    assert "resnet50_mocov2_imagenet1k" in info.value.suggestions


def test_unknown_task_suggests_closest():
    with pytest.raises(UnknownTaskError, match="pneumoniamnist"):
        load_registry().get_task("pneumonimnist")


def test_overlay_from_env_merges(tmp_path, monkeypatch):
    overlay = write(tmp_path, "lab.yaml", OVERLAY)
    monkeypatch.setenv("MEDHUB_REGISTRY", str(overlay))
    registry = load_registry()
    assert registry.get_model("lab_r18").arch == "resnet18"
    assert registry.origin["checkpoint:resnet18_lab_ourcxr"] == overlay
    assert "resnet50_imagenet1k" in registry.checkpoints


def test_overlay_from_config_dir_merges(isolated_home):
    folder = isolated_home / ".config" / "medhub" / "registry.d"
    folder.mkdir(parents=True)
    write(folder, "lab.yaml", OVERLAY)
    assert load_registry().get_model("resnet18_lab_ourcxr").head.label_names == ("normal", "abnormal")


def test_clash_between_files_names_both(tmp_path, monkeypatch):
    one = write(tmp_path, "one.yaml", OVERLAY)
    two = write(tmp_path, "two.yaml", OVERLAY)
    monkeypatch.setenv("MEDHUB_REGISTRY", f"{one}:{two}")
    with pytest.raises(RegistryError) as info:
        load_registry()
    assert str(one) in str(info.value) and str(two) in str(info.value)


def test_overlay_cannot_shadow_builtin_id(tmp_path):
    clash = write(tmp_path, "clash.yaml", OVERLAY.replace("resnet18_lab_ourcxr", "resnet50_imagenet1k"))
    with pytest.raises(RegistryError, match="defined in both"):
        merge([builtin_registry_path(), clash])


def test_duplicate_yaml_keys_are_rejected(tmp_path):
    doubled = OVERLAY + OVERLAY.split("checkpoints:\n", 1)[1]
    path = write(tmp_path, "dup.yaml", doubled)
    with pytest.raises(RegistryError, match="duplicate key 'resnet18_lab_ourcxr'"):
        merge([path])


def test_broken_yaml_names_file_and_line(tmp_path):
    path = write(tmp_path, "bad.yaml", "this: [is, not: a registry\n")
    with pytest.raises(RegistryError) as info:
        merge([path])
    assert str(path) in str(info.value) and "line" in str(info.value)


def test_bad_field_names_file_entry_and_field(tmp_path):
    path = write(tmp_path, "bad.yaml", OVERLAY.replace("kind: url,", "kind: url, sha256: xyz,"))
    with pytest.raises(RegistryError) as info:
        merge([path])
    message = str(info.value)
    assert str(path) in message and "resnet18_lab_ourcxr" in message and "sha256" in message


def test_result_must_name_known_model_and_task(tmp_path):
    bad_task = write(tmp_path, "r1.yaml", "results:\n  - {model: resnet50_imagenet1k, task: nope, metric: auc, mean: 0.5, source: x}\n")
    with pytest.raises(RegistryError, match="task 'nope'"):
        merge([builtin_registry_path(), bad_task])
    bad_model = write(tmp_path, "r2.yaml", "results:\n  - {model: nope, task: pneumoniamnist, metric: auc, mean: 0.5, source: x}\n")
    with pytest.raises(RegistryError, match="model 'nope'"):
        merge([builtin_registry_path(), bad_model])


def test_list_filters_combine():
    registry = load_registry()
    moco = registry.list_models(objective="moco*")
    assert moco and all("moco" in e.objective or any("moco" in s.objective for s in e.lineage) for e in moco)
    swin = registry.list_models(arch="swin")
    assert swin and all(e.family == "swin" for e in swin)
    assert {e.id for e in registry.list_models("resnet50_*", objective="mocov2")} == {"resnet50_mocov2_imagenet1k"}
    assert all("chestxray14" in e.data_chain for e in registry.list_models(data="chestxray14"))


def test_write_overlay_entry_round_trips_and_refuses_builtin_ids():
    entry = Checkpoint(
        id="resnet18_lab_adapted",
        arch="resnet18",
        family="resnet",
        objective="supervised",
        lineage=(LineageStage(dataset="imagenet1k", objective="supervised"),),
        sources=(WeightSource(kind="local", filename="/tmp/somewhere"),),
        head=Head(classifier="fc", first_conv="conv1"),
    )
    path = write_overlay_entry(entry)
    assert path.exists()
    assert load_registry().get_model("resnet18_lab_adapted") == entry
    with pytest.raises(RegistryError, match="already defined"):
        write_overlay_entry(entry.model_copy(update={"id": "resnet50_imagenet1k"}))


def test_an_overlay_may_fulfil_a_recipe_only_checkpoint():
    """`medhub adapt --id swin_base_imagenet21k_chestxray14` gives the brief's recipe entry its weights."""
    recipe = load_registry().get_model("swin_base_imagenet21k_chestx")
    assert not recipe.published
    made = recipe.model_copy(
        update={"aliases": (), "recipe": None, "sources": (WeightSource(kind="local", filename="/tmp/adapted"),)}
    )
    write_overlay_entry(made)
    fulfilled = load_registry().get_model("swin_base_imagenet21k_chestx")
    assert fulfilled.id == "swin_base_imagenet21k_chestxray14" and fulfilled.published
    assert "swin_base_imagenet21k_chestx" in fulfilled.aliases
    with pytest.raises(RegistryError, match="already defined"):  # a published entry is never replaced
        write_overlay_entry(made.model_copy(update={"id": "resnet50_imagenet1k"}))


def test_overlay_mirrors_are_tried_first_and_unknown_ids_are_skipped(tmp_path, monkeypatch, caplog):
    from medhub.weights import ordered_sources

    digest = "ab" * 32
    overlay = tmp_path / "site.yaml"
    mirror = {"kind": "medhub_hf", "repo": "medhub/resnet50_imagenet1k", "revision": "c" * 40,
              "filename": "model.safetensors", "format": "timm", "sha256": digest}  # fmt: skip
    overlay.write_text(yaml.safe_dump({"version": 1, "mirrors": {"resnet50_imagenet1k": [mirror],
                                                                  "no_such_checkpoint": [mirror]}}))  # fmt: skip
    monkeypatch.setenv("MEDHUB_REGISTRY", str(overlay))
    with caplog.at_level("WARNING"):
        entry = load_registry().get_model("resnet50_imagenet1k")
    assert "mirrors for unknown checkpoint 'no_such_checkpoint' skipped" in caplog.text
    builtin = merge([builtin_registry_path()]).get_model("resnet50_imagenet1k")
    assert entry.mirrors[0].revision == "c" * 40 and entry.sources == builtin.sources
    assert ordered_sources(entry)[0] == entry.mirrors[0] and ordered_sources(entry)[1:] == ordered_sources(builtin)
    overlay.write_text(yaml.safe_dump({"version": 1, "mirrors": {"resnet50_imagenet1k": [{"kind": "medhub_hf"}]}}))
    with pytest.raises(RegistryError, match="mirrors.resnet50_imagenet1k: .*repo"):
        load_registry()
