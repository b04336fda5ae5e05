"""Progress output of ``medhub reproduce`` when stderr is a pipe: one line per epoch and per cache build."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from medhub.data import progress
from medhub.data.progress import auto_mode, format_duration, progress_mode, time_left


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
                        r"\d+\.\d s; elapsed (\d+ min \d\d s|\d+ s), about (\d+ min \d\d s|\d+ s) left", epochs[0]), epochs[0]
    assert re.search(r"; elapsed (\d+ min \d\d s|\d+ s)$", epochs[1]), epochs[1]  # the last epoch: nothing left
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


def test_durations_and_time_left():
    assert [format_duration(s) for s in (0.4, 42, 185, 3720)] == ["0 s", "42 s", "3 min 05 s", "1 h 02 min"]
    # 2 epochs took 60 s: 3 more take about 90 s
    assert time_left(60, 2, 3) == "elapsed 1 min 00 s, about 1 min 30 s left"
    assert time_left(60, 2, 0) == "elapsed 1 min 00 s"


def test_a_busy_machine_is_said_once(monkeypatch, caplog):
    monkeypatch.setattr(progress, "_busy_said", False)
    monkeypatch.setattr(progress.os, "getloadavg", lambda: (9.5, 9.0, 8.0))
    monkeypatch.setattr(progress.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    with caplog.at_level("WARNING", logger="medhub.data.progress"):
        assert progress.warn_if_busy() is True
        assert progress.warn_if_busy() is False
    said = [r.getMessage() for r in caplog.records if "busy" in r.getMessage()]
    assert said == ["this machine is busy (load average 9.5 on 2 cores): training shares the CPU with other work "
                    "and will take longer than the times measured on an idle machine"]


def test_an_idle_machine_is_not_warned(monkeypatch, caplog):
    monkeypatch.setattr(progress, "_busy_said", False)
    monkeypatch.setattr(progress.os, "getloadavg", lambda: (0.5, 0.5, 0.5))
    assert progress.warn_if_busy() is False
