"""Metrics, determinism and resume after kill -9 (real training of a tiny timm model on BreastMNIST)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from medhub.train import metrics
from medhub.train.state import load_state

RUN = """
import sys, torch
torch.set_num_threads(1)
from medhub.reproduce import reproduce
reproduce("random:test_resnet", "breastmnist", epochs=int(sys.argv[2]), out=sys.argv[1], resume="--resume" in sys.argv,
          progress=False, seed=5)
"""


def run_script(out: Path, epochs: int, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", RUN, str(out), str(epochs), *extra], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finished(proc: subprocess.Popen) -> None:
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-2000:]


def test_auc_follows_medmnist_evaluator():
    binary_scores = np.array([[0.9, 0.1], [0.2, 0.8], [0.4, 0.6], [0.7, 0.3]])
    assert metrics.per_class_auc(np.array([0, 1, 1, 0]), binary_scores, "binary", ("a", "b")) == {"b": 1.0}
    truth = np.array([[1, 0], [0, 1], [1, 1], [0, 0]], dtype=np.float32)
    scores = np.array([[0.8, 0.3], [0.1, 0.9], [0.7, 0.2], [0.3, 0.1]])
    per_class = metrics.per_class_auc(truth, scores, "multi-label", ("x", "y"))
    assert per_class == {"x": 1.0, "y": 0.75}
    assert metrics.mean_of(per_class) == pytest.approx(0.875)
    three = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6], [0.5, 0.4, 0.1]])
    ovr = metrics.per_class_auc(np.array([0, 1, 2, 1]), three, "multi-class", ("p", "q", "r"))
    assert set(ovr) == {"p", "q", "r"} and ovr["r"] == 1.0
    assert metrics.accuracy(np.array([0, 1, 2, 1]), three, "multi-class") == 0.75
    assert metrics.dice(np.array([[1, 1, 0, 0]]), np.array([[1, 0, 0, 0]])) == pytest.approx(2 / 3)


def test_kill9_then_resume_equals_uninterrupted(tmp_path):
    epochs = 6
    reference = run_script(tmp_path / "full", epochs)
    interrupted = run_script(tmp_path / "cut", epochs)
    state = tmp_path / "cut" / "run0" / "state.pt"
    deadline = time.time() + 300
    while not state.exists() and time.time() < deadline and interrupted.poll() is None:
        time.sleep(0.05)
    assert state.exists(), interrupted.communicate()[1][-2000:]
    interrupted.send_signal(signal.SIGKILL)
    interrupted.wait()
    saved = load_state(state.parent)
    assert saved["finished"] is False and saved["epoch"] < epochs - 1  # really cut mid-training
    assert not (tmp_path / "cut" / "report.json").exists()
    finished(run_script(tmp_path / "cut", epochs, "--resume"))
    finished(reference)
    full = json.loads((tmp_path / "full" / "report.json").read_text())
    resumed = json.loads((tmp_path / "cut" / "report.json").read_text())
    assert resumed["runs"][0]["resumed_after_epoch"] == saved["epoch"] + 1
    assert resumed["mean"] == full["mean"]
    assert resumed["runs"][0]["per_class"] == full["runs"][0]["per_class"]
    strip = lambda h: [{k: v for k, v in e.items() if k != "seconds"} for e in h]  # noqa: E731
    assert strip(resumed["runs"][0]["history"]) == strip(full["runs"][0]["history"])


def test_same_seed_same_metrics(tmp_path):
    from medhub.reproduce import reproduce

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        first, second = (reproduce("random:test_resnet", "breastmnist", epochs=2, label_fraction=0.5, seed=11,
                                   out=tmp_path / name, progress=False) for name in ("a", "b"))
    finally:
        torch.set_num_threads(threads)
    assert first["runs"][0]["metric"] == second["runs"][0]["metric"]
    assert [h["train_loss"] for h in first["runs"][0]["history"]] == [h["train_loss"] for h in second["runs"][0]["history"]]
    assert first["protocol"]["overrides"]["label_fraction"] == {"value": 0.5, "protocol": 1.0}


def test_linear_probe_trains_the_classifier_only(tmp_path):
    from safetensors.torch import load_file

    from medhub.reproduce import reproduce
    from medhub.train.network import build_network, init_from_scratch
    from medhub.train.state import seed_everything

    report = reproduce("random:test_resnet", "breastmnist", epochs=1, linear_probe=True, seed=2,
                       out=tmp_path / "probe", progress=False)
    assert report["protocol"]["overrides"]["linear_probe"] == {"value": True, "protocol": False}
    seed_everything(2)
    initial = build_network("random:test_resnet", num_outputs=2, in_chans=1)
    init_from_scratch(initial, report["protocol"]["scratch_init"])  # torchvision's: no zero-initialised last BN
    initial = initial.state_dict()
    trained = load_file(str(tmp_path / "probe" / "run0" / "best.safetensors"))
    changed = {k for k in initial if not torch.equal(initial[k], trained[k])}
    assert changed and all(k.startswith("fc.") for k in changed)  # BatchNorm statistics untouched too


def test_multistep_schedule_scales_with_short_runs():
    """MedMNIST's milestones (50%, 75% of the epochs): a 1-epoch run keeps the base lr for its only epoch."""
    from medhub.train.loop import FitConfig, make_scheduler

    def lrs(epochs: int) -> list[float]:
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
        config = FitConfig(task_type="binary", label_names=("a", "b"), epochs=epochs, scheduler="multistep",
                           scheduler_kwargs={"milestones": [0.5, 0.75], "gamma": 0.1})
        scheduler, seen = make_scheduler(optimizer, config), []
        for _ in range(epochs):
            seen.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step()
        return seen

    assert lrs(1) == [1e-3]
    assert lrs(2) == pytest.approx([1e-3, 1e-4])
    assert lrs(100)[49] == 1e-3 and lrs(100)[50] == pytest.approx(1e-4) and lrs(100)[75] == pytest.approx(1e-5)


def test_the_step_runs_in_the_precision_asked_for_on_a_cpu():
    """bf16 is CPU autocast (the convolution computes in bf16); fp16, a GPU recipe's, runs fp32 on a CPU."""
    from medhub.train.loop import FitConfig, _forward, trained_precision

    cpu = torch.device("cpu")
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.Flatten(), torch.nn.LazyLinear(2))
    seen = []
    net[0].register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    images = torch.randint(0, 256, (2, 1, 8, 8), dtype=torch.uint8)
    for precision, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float32), ("fp32", torch.float32)):
        config = FitConfig(task_type="binary", label_names=("a", "b"), precision=precision, channels=1)
        logits = _forward(net, images, cpu, config)
        assert seen[-1] == dtype and logits.dtype == torch.float32
        assert trained_precision(config, cpu) == str(dtype).removeprefix("torch.").replace("bfloat16", "bf16").replace(
            "float32", "fp32")
