"""The browsing CLI as a user runs it: JSON shapes, filters, exit codes, and no heavy imports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from medhub.cli import main


def run_json(capsys, *argv):
    assert main([*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_list_json_items_carry_ids(capsys):
    items = run_json(capsys, "list")
    ids = {item["id"] for item in items}
    assert {"resnet50_imagenet1k", "resnet50_mocov2_imagenet1k"} <= ids
    assert all({"id", "arch", "objective", "data", "published"} <= set(item) for item in items)


def test_list_filters(capsys):
    items = run_json(capsys, "list", "resnet50_*", "--objective", "moco*")
    assert [i["id"] for i in items] == [i["id"] for i in items if i["id"].startswith("resnet50_")]
    assert "resnet50_mocov2_imagenet1k" in {i["id"] for i in items}
    assert "resnet50_imagenet1k" not in {i["id"] for i in items}


def test_show_json_has_lineage_sources_licence(capsys):
    data = run_json(capsys, "show", "resnet50_mocov2_imagenet1k")
    assert data["id"] == "resnet50_mocov2_imagenet1k"
    assert data["lineage"][0]["dataset"] == "imagenet1k"
    assert any("moco_v2_800ep" in (s.get("url") or "") for s in data["sources"])
    assert "weights" in data["licence"]


def test_show_text_of_recipe_only_alias(capsys):
    assert main(["show", "swin_base_imagenet21k_chestx"]) == 0
    out = capsys.readouterr().out
    assert "swin_base_imagenet21k_chestxray14" in out and "medhub adapt" in out


def test_tasks_and_results_json(capsys):
    tasks = run_json(capsys, "tasks")
    assert "pneumoniamnist" in {t["id"] for t in tasks}
    results = run_json(capsys, "results", "--task", "pneumoniamnist")
    assert any(r["model"] == "random:resnet18" and r["mean"] == pytest.approx(0.956) for r in results)
    assert all("id" in r for r in results)


def test_unknown_id_exits_2_with_suggestion(capsys):
    assert main(["show", "resnet50_mocov2_imagenet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "did you mean resnet50_mocov2_imagenet1k" in err


def test_validate_refuses_broken_file(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("this: [is, not: a registry\n")
    assert main(["registry", "validate", str(bad), "--shallow"]) == 2
    assert str(bad) in capsys.readouterr().err


def test_deep_validation_catches_wrong_head_names(tmp_path, capsys):
    overlay = tmp_path / "o.yaml"
    overlay.write_text(
        "checkpoints:\n  resnet18_wrong_head:\n    arch: resnet18\n    family: resnet\n    objective: supervised\n"
        "    lineage: [{dataset: x, objective: supervised}]\n    recipe: {command: none}\n"
        "    head: {classifier: classifier, first_conv: conv1}\n"
    )
    assert main(["registry", "validate", str(overlay)]) == 2
    assert "head.classifier" in capsys.readouterr().err


def test_browsing_never_imports_torch_or_timm():
    code = (
        "import sys; from medhub.cli import main; "
        "[main(a) for a in (['list','--json'], ['show','resnet50_imagenet1k','--json'], ['tasks','--json'], ['results','--json'])]; "
        "heavy = [m for m in ('torch', 'timm', 'huggingface_hub') if m in sys.modules]; "
        "print('HEAVY', heavy, file=sys.stderr); sys.exit(1 if heavy else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=os.environ.copy())
    assert proc.returncode == 0, proc.stderr[-500:]


def test_console_script_exit_code_and_no_traceback():
    script = Path(sys.executable).with_name("medhub")
    proc = subprocess.run([str(script), "show", "nope_nothing"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and proc.stderr.startswith("medhub: error: unknown checkpoint")
