"""Smoke tests for the benchmarks (load, train_step, pipeline, contention, medmnist_recipe, study_scale,
rank_study): they run with --quick and print their JSON.

Tiny settings only; nothing here asserts a time or a ratio's size (speed lives in BENCHMARKS.md).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"

CASES = {
    "load": (
        # the cold first load (two more fresh interpreters) runs in the full setting only: keeps this file fast
        ["--archs", "test_resnet", "--repeats", "1", "--import-repeats", "1", "--cold-repeats", "0"],
        ["ratio_load", "ratio_import"],
    ),
    "train_step": (
        [
            "--arch",
            "test_resnet",
            "--img-size",
            "32",
            "--batch-size",
            "4",
            "--batches",
            "2",
            "--repeats",
            "1",
        ],
        ["ratio", "medhub_images_per_s", "bare_images_per_s"],
    ),
    "contention": (
        ["--arch", "test_resnet", "--img-size", "32", "--batch-size", "4", "--batches", "1", "--burners", "0"],
        ["worst_ratio_to_best"],
    ),
    "medmnist_recipe": (
        # the compiled step (a minute of warm-up) is tested in tests/test_train_compile.py
        ["--bf16", "--batch-size", "8", "--batches", "1", "--repeats", "1"],
        ["ratio", "ratio_bf16"],
    ),
    "study_scale": (["--cells", "50", "--databases", "sqlite"], []),
    # the tiny study (4 candidates, BreastMNIST, 1 seed): every phase, real adapt/benchmark/rank commands
    "rank_study": ([], []),
    "pipeline": (
        ["--images", "4", "--batch-size", "2", "--repeats", "1"],
        ["ratio_first_epoch", "ratio_later_epoch", "ratio_later_epoch_batched_vs_per_image_augment"],
    ),
}


def run_benchmark(name: str, extra: list[str], tmp_path: Path) -> dict:
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / f"{name}.py"), "--quick", *extra],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    assert lines, f"{name} printed nothing; stderr: {done.stderr[-2000:]}"
    return json.loads(lines[-1])


@pytest.mark.parametrize("name", sorted(CASES))
def test_benchmark_runs_and_prints_json(name: str, tmp_path: Path) -> None:
    extra, ratios = CASES[name]
    result = run_benchmark(name, extra, tmp_path)
    assert result["benchmark"] == name
    assert result["quick"] is True
    assert isinstance(result["meets_goal"], bool)
    assert result["machine"]["cpus"] >= 1
    for key in ratios:
        value = result[key]
        assert isinstance(value, (int, float)) and math.isfinite(value) and value > 0, (key, value)

    if name == "load":  # every side measured, the lazy attribute included
        warm = result["warm_load"]["test_resnet"]
        assert len(warm["medhub"]["runs_s"]) == len(warm["timm"]["runs_s"]) == 1
        assert {
            "import_medhub",
            "from_medhub_import_load",
            "import_timm",
        } <= set(result["imports"])
    if name == "medmnist_recipe":  # the same network on both sides, checked before timing
        assert result["network"]["parameters"] == 11_168_706  # ResNet-18, CIFAR stem, 1 channel in, 2 classes
        assert result["network"]["max_output_difference"] <= 1e-5
        assert result["compiled"] is False and result["precision"] == "fp32"
        assert result["channels_last"] is True  # what reproduce trains this network in on a CPU
        ceiling = result["fp32_ceiling"]  # ResNet-18 CIFAR stem at 28 px: ~0.86 GFLOP forward per image, x3, x8
        assert 15 < ceiling["step_gflop"] < 25 and ceiling["convolutions"] == 20 and ceiling["max_ratio"] > 0
    if name == "rank_study":  # every phase ran and the ranking was compared with the fine-tuning grid
        breast = result["targets"]["breastmnist"]
        assert result["meets_goal"] is True and result["candidates"] == 4
        assert breast["finetune"]["exit"] == 0 and {run["exit"] for run in breast["rank"].values()} == {0}
        assert set(breast["tau"]) == {"logme", "knn"} and all(-1 <= t <= 1 for t in breast["tau"].values())
    if name == "pipeline":  # both epochs of both sides, with and without the model
        for part in ("with_model", "data_only"):
            for side in ("medhub", "recipe"):
                assert set(result[part][side]) == {"first", "later"}
        assert set(result["data_only"]["medhub_per_image"]) == {"first", "later"}
        assert result["arch"] == "test_vit" and result["arch_kwargs"] == {"patch_size": 32}
        costs = result["later_epoch_ms_per_image"]
        assert set(costs) == {"recipe_data", "medhub_data", "model_step"}
        assert costs["recipe_data"] > 0 and costs["medhub_data"] > 0


def test_medmnist_recipe_workers_end_when_a_side_dies_or_hangs(tmp_path: Path) -> None:
    """A side's worker killed between rounds stops the benchmark with its one-line message; a stopped (hung)
    worker is killed on close; closing never leaves a worker process behind."""
    import os
    import signal

    from safetensors.torch import save_file

    sys.path.insert(0, str(BENCHMARKS))
    try:
        import medmnist_recipe as recipe
    finally:
        sys.path.remove(str(BENCHMARKS))
    network = recipe.reference_network(1, 2)
    state = tmp_path / "state.safetensors"
    save_file({f"reference.{k}": v.contiguous() for k, v in network.state_dict().items()}, str(state))

    class Args:
        batches, batch_size = 1, 4

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    killed = recipe.Side("reference", Args, 1, state, tmp_path / "unused.npy", env)
    hung = recipe.Side("reference", Args, 1, state, tmp_path / "unused.npy", env)
    killed()  # one real round
    os.kill(killed.process.pid, signal.SIGKILL)
    killed.process.wait()
    with pytest.raises(SystemExit, match="the reference side failed"):
        killed()
    os.kill(hung.process.pid, signal.SIGSTOP)
    hung.close(timeout=1)
    recipe.close_all([killed])
    assert killed.process.returncode == -signal.SIGKILL and hung.process.returncode == -signal.SIGKILL
