"""Real grids of tiny cells (random:test_resnet, a tiny timm ResNet, on the embedded BreastMNIST, 1 epoch) with both executors:
kill halfway and resume, a worker that dies, and a local Ray instance that leaves nothing behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from medhub.grid.store import DONE, ResultStore

pytestmark = pytest.mark.slow

GRID = ["--models", "random:test_resnet", "--tasks", "breastmnist", "--epochs", "1"]


def medhub(*argv: str, **kwargs) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "medhub", *argv]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)


def finish(proc: subprocess.Popen, timeout: float = 300) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out
    return out


def workers_of(pid: int) -> list[int]:
    """The pool worker processes (spawned children) of ``pid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = (entry / "stat").read_text().rsplit(")", 1)[-1].split()[1]
                cmdline = (entry / "cmdline").read_bytes()
            except (OSError, IndexError):
                continue
            if ppid == str(pid) and b"spawn_main" in cmdline:
                found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_for(predicate, timeout: float = 240, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_killed_grid_resumes_without_redoing_cells(tmp_path):
    url = f"sqlite:///{tmp_path / 'grid.db'}"
    argv = [*GRID, "--runs", "2", "--label-fractions", "0.25,0.5", "--workers", "1", "--results", url]
    proc = medhub("benchmark", *argv)
    store = ResultStore(url)
    wait_for(lambda: store.counts().get(DONE, 0) >= 1, what="a first finished cell")
    workers = workers_of(proc.pid)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    before = {r["key"]: r for r in store.rows(status=DONE)}
    assert 1 <= len(before) < 4
    wait_for(lambda: not any(alive(p) for p in workers), timeout=30, what="orphaned workers to exit")

    out = finish(medhub("benchmark", *argv, "--resume"))
    assert f"{4 - len(before)} to run" in out
    rows = {r["key"]: r for r in store.rows()}
    assert all(r["status"] == DONE for r in rows.values())
    for key, row in before.items():  # finished cells were not run again
        assert rows[key]["attempts"] == 1 and rows[key]["finished_at"] == row["finished_at"]
        assert rows[key]["report"] == row["report"]
    assert {r["report"]["runs"][0]["seed"] for r in rows.values()} == {0, 1}

    start = time.monotonic()
    assert "0 to run" in finish(medhub("benchmark", *argv, "--resume"))
    assert time.monotonic() - start < 60  # generous: a finished grid is a DB check, not a run

    results = subprocess.run([sys.executable, "-m", "medhub", "results", "--db", url, "--json"],
                             capture_output=True, text=True, check=True)  # fmt: skip
    matrix = json.loads(results.stdout)["matrix"]
    assert {(e["task"], e["label_fraction"], e["n"]) for e in matrix} == {
        ("breastmnist", 0.25, 2),
        ("breastmnist", 0.5, 2),
    }
    assert all(0.0 <= e["mean"] <= 1.0 for e in matrix)


def test_a_cell_whose_worker_died_is_retried(tmp_path):
    url = f"sqlite:///{tmp_path / 'grid.db'}"
    proc = medhub("benchmark", *GRID, "--workers", "1", "--max-retries", "1", "--results", url)
    store = ResultStore(url)
    wait_for(lambda: store.counts().get("running"), what="a running cell")
    worker = wait_for(lambda: workers_of(proc.pid), what="a worker process")[0]
    os.kill(worker, signal.SIGKILL)
    out = finish(proc)
    assert "worker died" in out
    (row,) = store.rows()
    assert row["status"] == DONE and row["attempts"] == 2


def _ray_processes() -> str:
    found = subprocess.run(["pgrep", "-fa", "ray::|raylet|gcs_server"], capture_output=True, text=True)
    return found.stdout


def test_ray_grid_runs_cells_and_leaves_no_ray_processes(tmp_path):
    url = f"sqlite:///{tmp_path / 'ray.db'}"
    out = finish(
        medhub("benchmark", *GRID, "--runs", "2", "--executor", "ray", "--workers", "1", "--results", url)
    )
    assert "executor: ray" in out and "2 done, 0 failed" in out
    assert _ray_processes() == ""
    rows = ResultStore(url).rows()
    assert [r["status"] for r in rows] == [DONE, DONE]
    assert all(r["report"]["task"] == "breastmnist" and r["metric"] is not None for r in rows)
