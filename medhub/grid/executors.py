"""Executors: run grid cells in local worker processes or on a Ray cluster.

Both share one driver loop: keep up to ``capacity`` cells in flight, claim each cell in the results store
just before it is submitted (so a cell that is done, or held by another driver, is skipped), hand each
result to ``on_result`` as soon as it arrives, and retry a cell whose worker process died (up to
``max_retries`` times). A failure inside a cell (bad data, a bug) is recorded, not retried.

>>> executor = make_executor("local", workers=2)
>>> executor.capacity
2
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from medhub.cpu import usable_cpus
from medhub.errors import UsageError
from medhub.grid import runner

log = logging.getLogger(__name__)

Claim = Callable[[dict], bool]
OnResult = Callable[[dict, dict], None]


def _died(cell: dict, why: str) -> dict:
    return {"key": cell["key"], "ok": False, "error": f"worker died: {why}", "worker_died": True}


class _Driver:
    """The submit / wait / retry loop shared by every executor; subclasses provide the transport."""

    capacity: int = 1
    max_retries: int = 1

    def run(self, cells: list[dict], options: dict, claim: Claim, on_result: OnResult) -> None:
        """Run ``cells``; ``claim(cell)`` must return True for a cell to start; results go to ``on_result``
        (a result with ``retry`` set is a cell whose worker died and that will be submitted again)."""
        queue = deque(cells)
        deaths: dict[str, int] = {}
        inflight: dict = {}
        self._start(options)
        try:
            while queue or inflight:
                while queue and len(inflight) < self.capacity:
                    cell = queue.popleft()
                    if claim(cell):
                        inflight[self._submit(cell, options)] = cell
                if not inflight:
                    continue
                for handle, result in self._wait(inflight):
                    cell = inflight.pop(handle)
                    if result.get("worker_died"):
                        deaths[cell["key"]] = deaths.get(cell["key"], 0) + 1
                        result["retry"] = deaths[cell["key"]] <= self.max_retries
                    on_result(cell, result)
                    if result.get("retry"):
                        log.warning("retrying %s after its worker died", cell["key"])
                        queue.appendleft(cell)
        finally:
            self._stop(interrupted=bool(queue or inflight))

    # transport hooks -----------------------------------------------------------------------------------
    def _start(self, options: dict) -> None:
        raise NotImplementedError

    def _submit(self, cell: dict, options: dict):
        raise NotImplementedError

    def _wait(self, inflight: dict) -> list[tuple[object, dict]]:
        raise NotImplementedError

    def _stop(self, interrupted: bool) -> None:
        raise NotImplementedError


class LocalExecutor(_Driver):
    """Worker processes on this machine (spawned; each imports torch once and runs many cells).

    Args:
        workers: parallel cells; default usable cores (affinity, cgroup quota) ``// cpus_per_run`` (and the GPU count allows).
        cpus_per_run: torch threads per cell.
        gpus_per_run: whole GPUs per cell; each worker sees only its own through ``CUDA_VISIBLE_DEVICES``.
        max_retries: re-runs of a cell whose worker process died.
    """

    name = "local"

    def __init__(
        self, workers: int | None = None, cpus_per_run: int = 1, gpus_per_run: float = 0, max_retries: int = 1
    ) -> None:
        self.cpus_per_run = max(1, int(cpus_per_run))
        self.gpus_per_run = int(gpus_per_run)
        if gpus_per_run and gpus_per_run != self.gpus_per_run:
            raise UsageError(
                "the local executor gives whole GPUs to a run; use --gpus-per-run 1 (or --executor ray)"
            )
        self.gpu_slots = self._gpu_slots()
        default = max(1, usable_cpus() // self.cpus_per_run)
        self.capacity = max(1, int(workers or default))
        if self.gpu_slots is not None:
            self.capacity = min(self.capacity, len(self.gpu_slots))
        self.max_retries = max_retries
        self._pool: ProcessPoolExecutor | None = None

    def _gpu_slots(self) -> list[str] | None:
        if not self.gpus_per_run:
            return None
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        if visible is not None:
            ids = [g for g in visible.split(",") if g.strip()]
        else:
            import torch

            ids = [str(i) for i in range(torch.cuda.device_count())]
        slots = [",".join(ids[i : i + self.gpus_per_run]) for i in range(0, len(ids), self.gpus_per_run)]
        slots = [s for s in slots if s.count(",") + 1 == self.gpus_per_run]
        if not slots:
            raise UsageError(f"--gpus-per-run {self.gpus_per_run} but this machine shows {len(ids)} GPU(s)")
        return slots

    def _start(self, options: dict) -> None:
        ctx = mp.get_context("spawn")
        slots = None
        if self.gpu_slots is not None:
            slots = ctx.Queue()
            for slot in self.gpu_slots[: self.capacity]:
                slots.put(slot)
        self._pool = ProcessPoolExecutor(
            self.capacity,
            mp_context=ctx,
            initializer=_init_local_worker,
            initargs=(self.cpus_per_run, slots, os.getpid()),
        )

    def _submit(self, cell: dict, options: dict):
        return self._pool.submit(runner.run_cell, cell, {**options, "threads": self.cpus_per_run})

    def _wait(self, inflight: dict) -> list[tuple[object, dict]]:
        done, _ = wait(list(inflight), return_when=FIRST_COMPLETED)
        results = []
        broken = False
        for future in done:
            try:
                results.append((future, future.result()))
            except BrokenProcessPool as exc:
                broken = True
                results.append((future, _died(inflight[future], str(exc) or "process pool broken")))
        if broken:  # every other in-flight cell died with the pool: restart it
            for future in inflight:
                if future not in done:
                    results.append((future, _died(inflight[future], "process pool broken")))
            self._stop(interrupted=True)
            self._start({})
        return results

    def _stop(self, interrupted: bool) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        if interrupted:
            for process in list((getattr(pool, "_processes", None) or {}).values()):
                process.terminate()
        pool.shutdown(wait=not interrupted, cancel_futures=True)


def _init_local_worker(threads: int, slots, parent_pid: int) -> None:
    gpu_ids = slots.get() if slots is not None else None
    runner.prepare_worker(threads, gpu_ids=gpu_ids, parent_pid=parent_pid)


def _ray_cell(cell: dict, options: dict) -> dict:
    """The Ray task: prepare this worker once, then run the cell."""
    if not runner._PREPARED:
        runner.prepare_worker(int(options.get("threads") or 1))
    return runner.run_cell(cell, options)


class RayExecutor(_Driver):
    """Cells as Ray tasks: a local Ray instance (no address) or an existing cluster (``auto``, ``ray://``).

    Each task asks for ``cpus_per_run`` CPUs and ``gpus_per_run`` GPUs; Ray re-runs a task whose worker
    died up to ``max_retries`` times. ``ray.shutdown()`` always runs, so a local instance leaves no process.

    Args:
        address: a cluster address; None starts a local instance sized by ``workers`` x ``cpus_per_run``.
        workers: parallel cells on a local instance (default usable cores (affinity, cgroup quota) ``// cpus_per_run``).
    """

    name = "ray"

    def __init__(
        self,
        address: str | None = None,
        workers: int | None = None,
        cpus_per_run: float = 1,
        gpus_per_run: float = 0,
        max_retries: int = 2,
    ) -> None:
        self.address = address
        self.cpus_per_run = cpus_per_run
        self.gpus_per_run = gpus_per_run
        self.workers = workers
        self.max_retries = max_retries
        self.capacity = max(1, int(workers or usable_cpus() // max(1, cpus_per_run)))
        self._remote = None
        self._local = False

    def _start(self, options: dict) -> None:
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        try:
            import ray
        except ImportError:
            raise UsageError("the ray executor needs Ray: pip install 'medhub[ray]'") from None
        kwargs = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.WARNING}
        if self.address:
            try:
                ray.init(address=self.address, **kwargs)
            except (ConnectionError, RuntimeError) as exc:
                raise UsageError(
                    f"cannot reach the Ray cluster at {self.address} ({exc}); check --address"
                ) from None
        else:
            cpus = int(self.capacity * max(1, self.cpus_per_run))
            self._local = _become_subreaper()  # orphaned Ray workers become ours, to reap at the end
            ray.init(num_cpus=cpus, object_store_memory=128 * 1024**2, **kwargs)
        resources = ray.cluster_resources()
        fits = [resources.get("CPU", 1) / max(self.cpus_per_run, 1e-3)]
        if self.gpus_per_run:
            if not resources.get("GPU"):
                ray.shutdown()
                raise UsageError(f"--gpus-per-run {self.gpus_per_run} but the Ray cluster has no GPU")
            fits.append(resources["GPU"] / self.gpus_per_run)
        self.capacity = max(1, int(min(fits)))
        self._remote = ray.remote(_ray_cell).options(
            num_cpus=self.cpus_per_run, num_gpus=self.gpus_per_run, max_retries=self.max_retries
        )
        log.info("ray: %s, %d cell(s) at a time", resources, self.capacity)

    def _submit(self, cell: dict, options: dict):
        threads = max(1, int(self.cpus_per_run))
        return self._remote.remote(cell, {**options, "threads": threads})

    def _wait(self, inflight: dict) -> list[tuple[object, dict]]:
        import ray

        ready, _ = ray.wait(list(inflight), num_returns=1)
        results = []
        for ref in ready:
            try:
                results.append((ref, ray.get(ref)))
            except ray.exceptions.RayError as exc:  # worker or node died after Ray's own retries
                result = _died(inflight[ref], type(exc).__name__)
                result["worker_died"] = False  # Ray has already retried it max_retries times
                results.append((ref, result))
        return results

    def _stop(self, interrupted: bool) -> None:
        import ray

        ray.shutdown()  # stops a local instance with its workers; on a cluster, the driver's tasks end with it
        if self._local:
            _reap_ray_children()


def _become_subreaper() -> bool:
    """Linux: adopt orphaned descendants (Ray's workers outlive its raylet briefly), so they can be reaped."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    return ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0) == 0  # PR_SET_CHILD_SUBREAPER


def _ray_children() -> list[int]:
    """Child processes of this one whose command line mentions ray (raylet, gcs_server, ray::workers)."""
    me, found = str(os.getpid()), []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
            cmdline = Path(entry.path, "cmdline").read_bytes()
        except OSError:
            continue
        ppid = stat.rsplit(")", 1)[-1].split()[1]
        if ppid == me and (b"ray" in cmdline or not cmdline):
            found.append(int(entry.name))
    return found


def _reap_ray_children(timeout: float = 20.0) -> None:
    """Wait for the local Ray instance's processes to exit and reap them; kill stragglers after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        for pid in _ray_children():
            try:
                if os.waitpid(pid, os.WNOHANG)[0] == 0 and time.monotonic() > deadline:
                    os.kill(pid, signal.SIGKILL)
            except (ChildProcessError, ProcessLookupError):
                pass
        if not _ray_children():
            return
        time.sleep(0.1)


def make_executor(kind: str, **options) -> _Driver:
    """``"local"`` or ``"ray"``, with that executor's options (unknown ``None`` options are dropped)."""
    options = {k: v for k, v in options.items() if v is not None}
    if kind == "local":
        options.pop("address", None)
        return LocalExecutor(**options)
    if kind == "ray":
        return RayExecutor(**options)
    raise UsageError(f"unknown executor '{kind}'; use --executor local or --executor ray")
