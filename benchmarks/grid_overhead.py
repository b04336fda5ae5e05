"""Grid executor overhead: the Ray executor's cost per cell against the local one, and 1 -> 2 worker scaling.

Each repetition runs a real grid of tiny cells (``random:test_resnet`` on the embedded BreastMNIST, 1 epoch,
a quarter of the labels) into a fresh SQLite store, through :func:`medhub.grid.run.run_grid`:

* with one worker (so nothing overlaps): ``overhead_s`` = wall time of the whole grid minus the time the
  cells spent inside ``reproduce`` (measured in the worker): executor start (process pool spawn + torch
  import, or ``ray.init`` + a Ray worker), dispatch, result transfer, database writes and shutdown;
  ``per_cell_s`` = median over the 2nd..Nth cells of (result received - cell claimed - time inside the cell):
  the executor's steady-state cost of one cell; ``startup_s`` = the first cell's such cost plus the time
  before it was claimed (pool or Ray start).
* ``scaling`` = wall time of a bigger grid with the local executor at 1 and at 2 workers, and the mean time
  inside one cell at each (equal when the machine has a free core per worker; higher when it is contended).
  Each worker's first cell also pays the trainer's one-time lazy imports (timm, metrics, plotting).
* ``cpu_calibration`` = a pure-Python loop in 1 process vs 2 processes at once (forked, so nearly no start cost):
  the speedup a second worker could give on this machine at that moment, whatever the executor.

Usage: ``python benchmarks/grid_overhead.py [--quick]``; the last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

from medhub.grid.cells import expand_grid  # noqa: E402
from medhub.grid.executors import make_executor  # noqa: E402
from medhub.grid.run import plan_grid, run_grid  # noqa: E402
from medhub.grid.store import ResultStore  # noqa: E402

MODEL, TASK = "random:test_resnet", "breastmnist"


def one_grid(kind: str, workers: int, cells: int, tmp: Path) -> dict:
    """Run ``cells`` tiny cells with ``kind``/``workers``; wall seconds and seconds spent in cells."""
    store = ResultStore(f"sqlite:///{tmp / f'{kind}-{workers}-{time.monotonic_ns()}.db'}")
    grid = expand_grid([MODEL], [TASK], [0.25], runs=cells, settings={"epochs": 1})
    todo = plan_grid(store, grid, resume=False)
    claimed: dict[str, float] = {}
    latency: list[float] = []  # per cell, in completion order: received - claimed - inside the cell
    in_cells: list[float] = []

    def collect(event) -> None:
        now = time.perf_counter()
        if event.kind == "start":
            claimed[event.cell["key"]] = now
            return
        if event.kind == "failed":
            raise RuntimeError(f"cell failed: {event.result.get('error')}")
        in_cells.append(event.result["seconds"])
        latency.append(now - claimed[event.cell["key"]] - event.result["seconds"])

    start = time.perf_counter()
    executor = make_executor(kind, workers=workers, cpus_per_run=1)
    out = str(tmp / "runs" / f"{kind}{workers}-{time.monotonic_ns()}")
    run_grid(store, todo, executor, out=out, on_event=collect)
    wall = time.perf_counter() - start
    store.close()
    return {
        "wall_s": wall,
        "cells_s": sum(in_cells),
        "overhead_s": wall - sum(in_cells),
        "startup_s": min(claimed.values()) - start + latency[0],
        "per_cell_s": statistics.median(latency[1:] or latency),
    }


def _spin(n: int = 30_000_000) -> None:
    x = 0
    for i in range(n):
        x += i


def cpu_calibration(repeats: int) -> dict:
    """Wall time of a fixed pure-Python loop in 1 process, and in 2 processes at once: how much a second
    worker can gain on this machine right now, independent of medhub (equal times = two free cores)."""
    import multiprocessing as mp

    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    one, two = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        _spin()
        one.append(time.perf_counter() - start)
        procs = [ctx.Process(target=_spin) for _ in range(2)]
        start = time.perf_counter()
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        two.append(time.perf_counter() - start)
    return {"one_process_s": statistics.median(one), "two_processes_s": statistics.median(two),
            "ideal_speedup_1_to_2": 2 * statistics.median(one) / statistics.median(two)}  # fmt: skip


def median_of(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="4 cells per grid, 2 repetitions (about 90 s)")
    parser.add_argument("--repeats", type=int, help="repetitions (default 2 quick, 7 full)")
    args = parser.parse_args()
    cells = 4 if args.quick else 8
    repeats = args.repeats or (2 if args.quick else 7)
    result: dict = {"benchmark": "grid_overhead", "quick": args.quick, "cells": cells, "repeats": repeats,
                    "cell": f"{MODEL} {TASK} epochs=1 label_fraction=0.25",
                    "machine": f"{platform.machine()} {os.cpu_count()} CPUs, Python {sys.version.split()[0]}"}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for kind in ("local", "ray"):
            runs = [one_grid(kind, 1, cells, tmp) for _ in range(repeats)]
            result[kind] = {
                key: median_of(runs, key) for key in ("wall_s", "overhead_s", "startup_s", "per_cell_s")
            }
            result[kind]["cell_s"] = median_of(runs, "cells_s") / cells
            print(f"{kind}: {json.dumps(result[kind])}", flush=True)
        result["ray_minus_local_per_cell_s"] = result["ray"]["per_cell_s"] - result["local"]["per_cell_s"]
        result["ray_minus_local_startup_s"] = result["ray"]["startup_s"] - result["local"]["startup_s"]
        scaling = {}
        for workers in (1, 2):
            runs = [one_grid("local", workers, 2 * cells, tmp) for _ in range(repeats)]
            scaling[f"workers_{workers}_wall_s"] = median_of(runs, "wall_s")
            # mean time inside one cell: it grows with workers when the cores are not free
            scaling[f"workers_{workers}_cell_s"] = median_of(runs, "cells_s") / (2 * cells)
            print(f"local x{workers}: {scaling[f'workers_{workers}_wall_s']:.2f}s", flush=True)
        scaling["speedup_1_to_2"] = scaling["workers_1_wall_s"] / scaling["workers_2_wall_s"]
        result["scaling_local"] = scaling
        result["cpu_calibration"] = cpu_calibration(repeats)
        print(f"calibration: {json.dumps(result['cpu_calibration'])}", flush=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
