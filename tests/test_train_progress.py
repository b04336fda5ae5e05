"""Progress output of ``medhub reproduce`` when stderr is a pipe: one line per epoch and per cache build."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from medhub.data.progress import auto_mode, progress_mode


def _reproduce(tmp_path, shared_data, *extra: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "medhub", "reproduce", "random:resnet18", "breastmnist",
               "--data-dir", str(shared_data / "breastmnist"), "--epochs", "2", "--batch-size", "64",
               "--label-fraction", "0.2", "--out", str(tmp_path / "out"), *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300, check=False)


def test_piped_stderr_gets_one_line_per_epoch_and_cache_build(tmp_path, shared_data):
    done = _reproduce(tmp_path, shared_data)
    assert done.returncode == 0, done.stderr
    epochs = [line for line in done.stderr.splitlines() if re.match(r"run 0 epoch \d/2: ", line)]
    assert [line.split(":")[0] for line in epochs] == ["run 0 epoch 1/2", "run 0 epoch 2/2"]
    assert re.fullmatch(r"run 0 epoch 1/2: train loss \d+\.\d{4}, val loss \d+\.\d{4}, val auc \d\.\d{4} \(best\), "
                        r"\d+\.\d s", epochs[0]), epochs[0]
    builds = [line for line in done.stderr.splitlines() if "building the decode-once cache" in line]
    assert {line.split(":")[0] for line in builds} == {f"decode breastmnist/{s} 28px" for s in ("train", "val", "test")}
    assert "\r" not in done.stderr  # no tqdm bar redraws in a log file
    assert "AUC" in done.stdout


def test_no_progress_silences_the_lines(tmp_path, shared_data):
    done = _reproduce(tmp_path, shared_data, "--no-progress")
    assert done.returncode == 0, done.stderr
    assert "epoch" not in done.stderr and "decode-once" not in done.stderr, done.stderr


def test_progress_modes():
    assert progress_mode(True) == "bar" and progress_mode(False) == "off" and progress_mode("lines") == "lines"
    assert auto_mode(False) == "off"
    assert auto_mode() == ("bar" if sys.stderr.isatty() else "lines")
    with pytest.raises(ValueError):
        progress_mode("loud")
