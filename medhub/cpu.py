"""This process's share of the CPU: the cores it may use, the cores others keep busy, and its torch threads.

Why it matters: a training step parallelised over ``n`` intra-op threads waits for its slowest thread at every
operator. When another process keeps one of ``n`` cores busy, one thread gets half a core and every operator
waits for it: on the 2-core development machine a ResNet-18 step at 28 px (batch 128) beside one CPU-burning
process took 1.8-2x longer with 2 threads than with 1 (``benchmarks/contention.py``, BENCHMARKS.md). So medhub
runs as many threads as there are cores nobody else is using, never more than the cores it may use:

* cores it may use: the CPU affinity mask (``os.sched_getaffinity``), capped by a cgroup CPU quota (v2
  ``cpu.max``, v1 ``cpu.cfs_quota_us``/``cpu.cfs_period_us``) rounded up;
* cores busy elsewhere: the kernel's count of runnable threads (``procs_running`` in ``/proc/stat``, sampled
  for a fraction of a second, this process's own runnable threads excluded), capped at the machine's cores;
* an explicit choice wins: ``MEDHUB_THREADS`` (or ``OMP_NUM_THREADS``, which torch honours anyway), or the
  ``threads`` argument of :func:`choose_threads`.

OpenMP's wait policy: ``import medhub`` sets ``OMP_WAIT_POLICY=PASSIVE`` unless the environment sets a policy,
so threads waiting at the end of a parallel region sleep instead of spinning on cores another process needs
(GNU OpenMP reads it once, when torch loads its runtime: import medhub before torch, or set it yourself).
:func:`openmp_wait_policy` says what the running process got.

The choice is made once per run and kept for the whole run (saved with the training state, so ``--resume``
continues with the same count): a different thread count changes floating-point summation order, and the
same seed must give the same numbers.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from medhub.errors import UsageError

_CGROUP_ROOT = Path("/sys/fs/cgroup")


@dataclass(frozen=True)
class ThreadChoice:
    """How many intra-op threads a run uses, and why.

    Attributes:
        threads: torch intra-op threads (>= 1).
        usable: cores this process may use (affinity and cgroup quota).
        busy: cores other processes kept busy when the choice was made (0.0 when not measured).
        source: ``"auto"``, ``"MEDHUB_THREADS"``, ``"OMP_NUM_THREADS"`` or ``"argument"``.
    """

    threads: int
    usable: int
    busy: float
    source: str

    def as_dict(self) -> dict:
        """A JSON-ready record for reports."""
        return asdict(self)


def usable_cpus() -> int:
    """Cores this process may run on: the affinity mask, capped by a cgroup CPU quota (rounded up); >= 1."""
    try:
        count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        count = os.cpu_count() or 1
    quota = cgroup_cpu_quota()
    if quota is not None:
        count = min(count, max(1, math.ceil(quota)))
    return max(1, count)


def cgroup_cpu_quota(root: Path = _CGROUP_ROOT) -> float | None:
    """The cgroup's CPU quota in cores (``2.5`` = 250 ms per 100 ms), or None when there is none.

    Reads cgroup v2's ``cpu.max`` (``"max 100000"`` = no quota, ``"250000 100000"`` = 2.5 cores) and falls
    back to cgroup v1's ``cpu/cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` (quota -1 = none).
    """
    try:
        text = (root / "cpu.max").read_text().split()
        if len(text) == 2 and text[0] != "max":
            return int(text[0]) / int(text[1])
        return None
    except (OSError, ValueError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None


def busy_cpus(samples: int = 12, interval_s: float = 0.025) -> float:
    """Cores kept busy by other processes right now: mean runnable threads (``/proc/stat`` ``procs_running``)
    minus this process's own runnable ones (this sampling thread, and e.g. a decode-once cache build decoding
    in the background, which ends within the first epoch), over ``samples`` readings ``interval_s`` apart.

    Returns 0.0 where ``/proc/stat`` does not exist (not Linux).
    """
    readings = []
    for index in range(samples):
        value = _procs_running()
        if value is None:
            return 0.0
        readings.append(value - _own_running())
        if index + 1 < samples:
            time.sleep(interval_s)
    return max(0.0, sum(readings) / len(readings))


def _procs_running() -> int | None:
    try:
        with open("/proc/stat") as handle:
            for line in handle:
                if line.startswith("procs_running"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def _own_running() -> int:
    """This process's threads in state R (running or runnable) in ``/proc/self/task/*/stat``; at least 1 (the
    caller)."""
    count = 0
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return 1
    for task in tasks:
        try:
            with open(f"/proc/self/task/{task}/stat") as handle:
                text = handle.read()
        except OSError:  # the thread ended meanwhile
            continue
        count += text[text.rfind(")") + 2:][:1] == "R"  # the state follows "(comm) "
    return max(1, count)


def choose_threads(threads: int | None = None, *, measure: bool = True) -> ThreadChoice:
    """The intra-op thread count for a run: ``threads`` if given, else ``MEDHUB_THREADS``, else
    ``OMP_NUM_THREADS``, else the usable cores minus the cores busy elsewhere (rounded, at least 1).

    Args:
        threads: an explicit count (>= 1); it may exceed the usable cores (the caller asked for it).
        measure: sample the machine's load; False gives every usable core.

    Raises:
        UsageError: ``threads`` or ``MEDHUB_THREADS`` is not a positive integer.
    """
    usable = usable_cpus()
    if threads is not None:
        if int(threads) < 1:
            raise UsageError(f"threads must be at least 1, got {threads}")
        return ThreadChoice(int(threads), usable, 0.0, "argument")
    for name in ("MEDHUB_THREADS", "OMP_NUM_THREADS"):
        value = os.environ.get(name, "").strip()
        if value:
            if not value.isdigit() or int(value) < 1:
                if name == "MEDHUB_THREADS":
                    raise UsageError(f"MEDHUB_THREADS must be a positive integer, got '{value}'")
                continue  # torch ignores a malformed OMP_NUM_THREADS too
            return ThreadChoice(int(value), usable, 0.0, name)
    total = max(usable, os.cpu_count() or usable)
    busy = min(busy_cpus(), float(total)) if measure else 0.0
    # busy threads fill the cores outside this process's share first (an optimistic, cheap estimate)
    busy_here = max(0.0, busy - (total - usable))
    return ThreadChoice(max(1, min(usable, round(usable - busy_here))), usable, round(busy, 2), "auto")


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc malloc.h
MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's largest (DEFAULT_MMAP_THRESHOLD_MAX on 64-bit)
TRIM_THRESHOLD = 1024 * 1024 * 1024


@functools.cache
def keep_heap_memory() -> str:
    """Let glibc's malloc reuse freed memory between training steps instead of returning it to the kernel.

    By default glibc maps blocks above a moving threshold (128 KiB at start) with ``mmap`` and unmaps them on
    ``free``, and trims the heap top above 128 KiB: every step of a CPU training run then maps its activations
    afresh and the kernel zero-fills each page on first touch. With ``mallopt(M_MMAP_THRESHOLD, 32 MiB)`` and
    ``mallopt(M_TRIM_THRESHOLD, 1 GiB)`` freed memory is reused. Measured 2026-12-01 on the 2-core development
    machine (MedMNIST's CIFAR-stem ResNet-18, 28 px, batch 128, fp32, channels-last, 2 threads): medhub's
    trainer went from 13,600-14,600 page faults and 0.032-0.038 CPU-s of kernel time per step to none and
    0.011 s, its step 0-2% shorter; a plain-torch copy of the network (non-in-place ReLU, 44,000-88,000 faults
    per step) 8-14% shorter; peak RSS unchanged (BENCHMARKS.md, issue 19). Blocks above 32 MiB are still mapped.

    Process-wide and kept for the process's life (as ``OMP_WAIT_POLICY``); called when a training run starts
    (:func:`medhub.train.runner.run_once`, CPU runs). ``MEDHUB_MALLOC=default`` leaves malloc as it is. Does nothing
    outside glibc (musl, macOS, Windows).

    Returns:
        What the process's allocator does now, as ``result.json`` records it (``input.allocator``).
    """
    import ctypes
    import platform

    if os.environ.get("MEDHUB_MALLOC", "").strip().lower() == "default":
        return "default (MEDHUB_MALLOC=default)"
    if platform.libc_ver()[0] != "glibc":
        return "default (not glibc)"
    libc = ctypes.CDLL(None)
    if libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1:
        return "glibc: freed memory kept (mmap threshold 32 MiB, trim threshold 1 GiB)"
    return "default (mallopt refused)"


def openmp_wait_policy() -> str:
    """The OpenMP wait policy this process asked for (``OMP_WAIT_POLICY``; GNU OpenMP's default otherwise)."""
    return os.environ.get("OMP_WAIT_POLICY", "default (spin, then sleep)")


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run the block with ``count`` torch intra-op threads; the caller's count comes back afterwards."""
    import torch

    saved = torch.get_num_threads()
    torch.set_num_threads(max(1, int(count)))
    try:
        yield
    finally:
        torch.set_num_threads(saved)
