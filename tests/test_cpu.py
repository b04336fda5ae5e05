"""medhub.cpu: the cores a process may use, the load beside it, and the thread count a run keeps."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from medhub import cpu
from medhub.errors import UsageError
from medhub.train.state import THREADS_FILE, run_threads


def _write(root: Path, name: str, text: str) -> None:
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_cgroup_v2_quota_in_cores(tmp_path: Path) -> None:
    _write(tmp_path, "cpu.max", "250000 100000\n")
    assert cpu.cgroup_cpu_quota(tmp_path) == 2.5
    _write(tmp_path, "cpu.max", "max 100000\n")
    assert cpu.cgroup_cpu_quota(tmp_path) is None


def test_cgroup_v1_quota_in_cores(tmp_path: Path) -> None:
    _write(tmp_path, "cpu/cpu.cfs_quota_us", "50000\n")
    _write(tmp_path, "cpu/cpu.cfs_period_us", "100000\n")
    assert cpu.cgroup_cpu_quota(tmp_path) == 0.5
    _write(tmp_path, "cpu/cpu.cfs_quota_us", "-1\n")
    assert cpu.cgroup_cpu_quota(tmp_path) is None
    assert cpu.cgroup_cpu_quota(tmp_path / "absent") is None


def test_usable_cpus_follows_the_affinity_mask() -> None:
    """A child pinned to one core sees one usable core, whatever the machine has."""
    code = "import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); from medhub.cpu import usable_cpus; print(usable_cpus())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "1"
    assert cpu.usable_cpus() == min(len(os.sched_getaffinity(0)), cpu.usable_cpus())


def test_explicit_choices_win_in_order(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDHUB_THREADS", "3")
    monkeypatch.setenv("OMP_NUM_THREADS", "5")
    assert (cpu.choose_threads(7).threads, cpu.choose_threads(7).source) == (7, "argument")
    assert (cpu.choose_threads().threads, cpu.choose_threads().source) == (3, "MEDHUB_THREADS")
    monkeypatch.delenv("MEDHUB_THREADS")
    assert (cpu.choose_threads().threads, cpu.choose_threads().source) == (5, "OMP_NUM_THREADS")
    monkeypatch.setenv("MEDHUB_THREADS", "two")
    with pytest.raises(UsageError, match="MEDHUB_THREADS"):
        cpu.choose_threads()
    with pytest.raises(UsageError):
        cpu.choose_threads(0)


def test_auto_choice_leaves_out_cores_that_busy_loops_hold(monkeypatch: pytest.MonkeyPatch) -> None:
    """With as many busy loops as usable cores, auto picks 1 thread; the measured load says so."""
    monkeypatch.delenv("MEDHUB_THREADS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    usable = cpu.usable_cpus()
    code = "import time\nend = time.time() + 60\nwhile time.time() < end:\n    pass\n"
    burners = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(usable)]
    try:
        time.sleep(0.5)
        choice = cpu.choose_threads()
    finally:
        for process in burners:
            process.kill()
            process.wait()
    assert choice.source == "auto" and choice.usable == usable
    assert choice.busy >= usable - 0.5
    assert choice.threads == 1
    assert cpu.choose_threads(measure=False).threads == usable


def test_the_processs_own_busy_threads_are_not_load_beside_it() -> None:
    """Threads of this process (a decode-once cache build decoding in the background while the first epoch
    trains) are the run's own work, not load beside it: 16 of them hashing outside the GIL leave the measured
    load where it was (counted, they would add about 16), so a run's thread count does not depend on whether
    its cache had to be built first."""
    data, stop = os.urandom(1 << 23), threading.Event()

    def burn() -> None:
        while not stop.is_set():
            hashlib.sha256(data).digest()

    before = cpu.busy_cpus()
    burners = [threading.Thread(target=burn, daemon=True) for _ in range(16)]
    for thread in burners:
        thread.start()
    try:
        time.sleep(0.2)
        during = cpu.busy_cpus()
    finally:
        stop.set()
        for thread in burners:
            thread.join()
    assert during < before + 8


def test_torch_threads_restores_the_callers_count() -> None:
    before = torch.get_num_threads()
    with cpu.torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def test_a_run_keeps_its_thread_count_across_resume(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDHUB_THREADS", "1")
    first = run_threads(tmp_path, resume=False)
    assert json.loads((tmp_path / THREADS_FILE).read_text())["threads"] == 1
    monkeypatch.setenv("MEDHUB_THREADS", "2")
    assert run_threads(tmp_path, resume=True) == first  # the saved count, not today's choice
    assert run_threads(tmp_path, resume=False).threads == 2  # a new run chooses again


@pytest.mark.parametrize(("given", "expected"), [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_import_medhub_makes_openmp_threads_sleep_unless_the_user_chose(given: str | None, expected: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if given:
        env["OMP_WAIT_POLICY"] = given
    code = "import os, medhub; print(os.environ['OMP_WAIT_POLICY'])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == expected


FAULTS_PROBE = """
import resource, sys
import numpy as np
from medhub.cpu import keep_heap_memory
if sys.argv[1] == "keep":
    print(keep_heap_memory())
def step():  # four 24 MiB blocks live at once, written, then freed: a training step's activations
    blocks = [np.ones(6 * 1024 * 1024, np.float32) for _ in range(4)]
    del blocks
for _ in range(3):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    step()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) // 10)
"""


@pytest.mark.skipif(__import__("platform").libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_kept_heap_memory_is_reused_without_page_faults(monkeypatch):
    """By default glibc returns the freed top of the heap (above twice the largest block freed so far), so the
    next step faults in fresh 4 KiB pages (~2,000 here); once keep_heap_memory() ran, the freed memory is
    reused (a handful of faults)."""
    import subprocess
    import sys

    def faults(mode: str, env: dict) -> list[str]:
        done = subprocess.run([sys.executable, "-c", FAULTS_PROBE, mode], capture_output=True, text=True, env=env,
                              timeout=120, check=True)
        return done.stdout.split("\n")[:-1]

    env = {k: v for k, v in os.environ.items() if k not in ("MEDHUB_MALLOC", "GLIBC_TUNABLES")}
    (default,) = faults("default", env)
    record, kept = faults("keep", env)
    assert int(default) > 1000 and int(kept) < 100, (default, kept)
    assert record.startswith("glibc: freed memory kept")
    record, left = faults("keep", {**env, "MEDHUB_MALLOC": "default"})
    assert record == "default (MEDHUB_MALLOC=default)" and int(left) > 1000
