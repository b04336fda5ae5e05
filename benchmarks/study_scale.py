"""Benchmark 6: the study's scale. A synthetic grid of 500, 5,000 (the paper's size) and 50,000 cells.

The cells are what ``medhub benchmark`` stores: one row per (model, task, label fraction, seed) with a full
report (one run with a 100-epoch history, per-class AUCs for 14 labels, the protocol and the environment,
about 12 KB of JSON, the size of a real report.json). For each size, in SQLite and (when the PostgreSQL server
binaries are installed) PostgreSQL, each operation runs in a fresh interpreter that reports its wall time
, its CPU seconds (user + system: what the operation costs when other processes load a shared machine) and
its peak resident memory:

* ``plan``: expand the grid and store every cell as pending (:func:`medhub.grid.run.plan_grid`), empty store;
* ``resume``: plan the same grid again with ``resume=True`` on the full store (99% done);
* ``claim``: claim the 1% pending cells one by one (:meth:`ResultStore.claim`), time per claim;
* ``results``: ``medhub results --db URL --json`` end to end (its own process: import included);
* ``site``: ``medhub site build`` with ``--results-db`` and a registry overlay of 500 checkpoints.

Goals (issue 19): plan, claim, resume and results <= 2 s, site <= 10 s, memory < 500 MB, at 5,000 cells.
The store is filled by bulk inserts (setup, not timed). Last stdout line: JSON.

    python benchmarks/study_scale.py --quick            # 500 and 5,000 cells, SQLite only
    python benchmarks/study_scale.py                    # 500, 5,000, 50,000 cells; SQLite and PostgreSQL
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import emit, machine, note, parser

GOALS_S = {"plan": 2.0, "resume": 2.0, "claim": 2.0, "results": 2.0, "site": 10.0}
MEMORY_GOAL_MB = 500
OVERLAY_CHECKPOINTS = 500
TASKS = ("pneumoniamnist", "breastmnist", "chestmnist", "dermamnist", "octmnist", "retinamnist", "bloodmnist",
         "pathmnist", "organamnist", "organcmnist")
LABELS = [f"label{i}" for i in range(14)]


def grid_shape(cells: int) -> dict:
    """Models x tasks x label fractions x seeds giving ``cells`` (500 -> 50x2x1x5; 5,000 -> 500x2x1x5)."""
    seeds, fractions = 5, [1.0] if cells <= 5000 else [0.1, 1.0]
    tasks = TASKS[: max(1, min(len(TASKS), cells // (OVERLAY_CHECKPOINTS * seeds * len(fractions))))]
    models = cells // (len(tasks) * len(fractions) * seeds)
    return {"models": [f"study_ckpt_{i:04d}" for i in range(models)], "tasks": list(tasks), "fractions": fractions,
            "seeds": list(range(seeds))}


def make_cells(shape: dict) -> list:
    from medhub.grid.cells import Cell

    return [Cell(m, t, f, s) for m in shape["models"] for t in shape["tasks"] for f in shape["fractions"]
            for s in shape["seeds"]]


def fake_report(cell, rng: random.Random) -> dict:
    """A report shaped like ``medhub reproduce``'s report.json for one run (~12 KB as JSON)."""
    metric = 0.6 + 0.35 * rng.random()
    history = [{"epoch": e + 1, "train_loss": rng.random(), "val_loss": rng.random(), "val_metric": rng.random(),
                "lr": 1e-3, "seconds": 10 * rng.random()} for e in range(100)]
    run = {"seed": cell.seed, "metric": metric, "per_class": {k: rng.random() for k in LABELS},
           "accuracy": rng.random(), "epochs": 100, "best_epoch": rng.randint(1, 100), "stopped_early": False,
           "seconds": 1000 * rng.random(), "resumed_after_epoch": None, "history": history,
           "checkpoint": f"/results/cells/{cell.model}/{cell.task}/best.safetensors",
           "input": {"channels": 3, "normalization": "imagenet", "device": "cuda", "threads": 8}}
    protocol = {f"key{i}": f"value {i} of the protocol, as the plan records it" for i in range(40)}
    return {"model": cell.model, "task": cell.task, "metric": "auc", "runs": [run], "mean": metric, "std": 0.0,
            "reported": {"mean": 0.9, "std": 0.01, "source": "synthetic", "setting": {}}, "difference": metric - 0.9,
            "protocol": protocol, "environment": {"torch": "2.14.1", "platform": "Linux"},
            "verdict": "no published number", "verdict_reasons": []}


def fill(url: str, cells: list, pending_share: float = 0.01) -> int:
    """Store every cell; all but ``pending_share`` of them done with a report. Returns the pending count."""
    from medhub.grid.store import ResultStore

    store = ResultStore(url)
    rng = random.Random(0)
    pending_every = int(round(1 / pending_share))
    pending = 0
    for start in range(0, len(cells), 2000):  # in chunks: the driver stays small
        pending += _insert(store, cells[start:start + 2000], start, pending_every, rng)
    store.close()
    return pending


def _insert(store, cells: list, offset: int, pending_every: int, rng: random.Random) -> int:
    from medhub.grid.store import DONE, PENDING, cells_table

    rows = []
    for i, cell in enumerate(cells, start=offset):
        done = i % pending_every != 0
        report = fake_report(cell, rng) if done else None
        rows.append({"key": cell.key, "model": cell.model, "task": cell.task, "label_fraction": cell.label_fraction,
                     "seed": cell.seed, "settings": "{}", "status": DONE if done else PENDING, "attempts": int(done),
                     "created_at": time.time(), "finished_at": time.time() if done else None,
                     "seconds": report["runs"][0]["seconds"] if done else None, "metric_name": "auc" if done else None,
                     "metric": report["mean"] if done else None, "report": json.dumps(report) if done else None})
    with store.engine.begin() as conn:
        conn.execute(cells_table.insert(), rows)
    return sum(1 for r in rows if r["status"] == PENDING)


def write_overlay(path: Path, models: list[str]) -> None:
    """A registry overlay with ``models`` as checkpoints (copies of a real entry, new ids)."""
    import yaml

    from medhub.registry import load_registry

    base = load_registry().get_model("resnet50_imagenet1k").model_dump(mode="json", exclude_none=True)
    base.pop("id", None)
    base.pop("aliases", None)
    entries = {m: {**base, "notes": [f"synthetic checkpoint {m} for benchmarks/study_scale.py"]} for m in models}
    path.write_text(yaml.safe_dump({"version": 1, "checkpoints": entries}, sort_keys=False))


# ---- operations, each run in a fresh interpreter ----------------------------------------------------------
def op_plan(url: str, shape: dict) -> dict:
    from medhub.grid.run import plan_grid
    from medhub.grid.store import ResultStore

    started = time.perf_counter()
    store = ResultStore(url)
    todo = plan_grid(store, make_cells(shape), resume=False)
    return {"seconds": time.perf_counter() - started, "to_run": len(todo)}


def op_resume(url: str, shape: dict) -> dict:
    from medhub.grid.run import plan_grid
    from medhub.grid.store import ResultStore

    started = time.perf_counter()
    store = ResultStore(url)
    todo = plan_grid(store, make_cells(shape), resume=True)
    return {"seconds": time.perf_counter() - started, "to_run": len(todo)}


def op_claim(url: str, shape: dict) -> dict:
    from medhub.grid.store import PENDING, ResultStore

    store = ResultStore(url)
    pending = [k for k, s in store.statuses().items() if s == PENDING]
    started = time.perf_counter()
    claimed = sum(store.claim(key) for key in pending)
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "claimed": claimed, "ms_per_claim": 1000 * seconds / max(1, claimed)}


OPS = {"plan": op_plan, "resume": op_resume, "claim": op_claim}


def run_op(name: str, url: str, shape_file: Path) -> dict:
    """``name`` in a fresh interpreter; adds its peak resident memory (MB)."""
    out = subprocess.run([sys.executable, __file__, "_op", name, url, str(shape_file)], capture_output=True,
                         text=True, timeout=3600)
    if out.returncode != 0:
        raise SystemExit(f"{name} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _cpu_seconds(usage: resource.struct_rusage) -> float:
    return usage.ru_utime + usage.ru_stime


def peak_rss_mb() -> float:
    """This process's peak resident memory (``VmHWM``; unlike ``ru_maxrss`` it starts afresh at exec, so a
    child does not report its parent's peak), in MB; ``ru_maxrss`` where /proc is missing."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def run_cli(args: list[str], env: dict) -> dict:
    """A ``medhub`` command end to end: wall seconds and the child's peak resident memory (MB)."""
    cpu_before = _cpu_seconds(resource.getrusage(resource.RUSAGE_CHILDREN))
    with tempfile.NamedTemporaryFile("r", suffix=".peak") as peak:
        code = ("import sys; sys.path.insert(0, sys.argv[1]); from study_scale import peak_rss_mb; "
                "from medhub.cli import main\ntry:\n    code = main(sys.argv[3:])\nfinally:\n"
                "    open(sys.argv[2], 'w').write(str(peak_rss_mb()))\nsys.exit(code)")
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", code, str(Path(__file__).parent), peak.name, *args],
                              capture_output=True, text=True, env=env, timeout=3600)
        seconds = time.perf_counter() - started
        if done.returncode != 0:
            raise SystemExit(f"medhub {' '.join(args)} failed:\n{done.stderr[-3000:]}")
        peak_mb = float(Path(peak.name).read_text())
    cpu = _cpu_seconds(resource.getrusage(resource.RUSAGE_CHILDREN)) - cpu_before
    return {"seconds": seconds, "cpu_s": round(cpu, 3), "peak_mb": peak_mb}


def measure_size(cells: int, url: str, work: Path, env: dict) -> dict:
    shape = grid_shape(cells)
    shape_file = work / f"shape{cells}.json"
    shape_file.write_text(json.dumps(shape))
    row: dict = {"cells": cells, "models": len(shape["models"]), "tasks": len(shape["tasks"])}
    row["plan"] = run_op("plan", url, shape_file)
    _clear(url)
    started = time.perf_counter()
    row["pending"] = fill(url, make_cells(shape))
    row["fill_setup_s"] = round(time.perf_counter() - started, 2)
    row["resume"] = run_op("resume", url, shape_file)
    row["claim"] = run_op("claim", url, shape_file)
    row["results"] = run_cli(["results", "--db", url, "--json"], env)
    row["site"] = run_cli(["site", "build", str(work / f"site{cells}"), "--results-db", url], env)
    note(f"{cells} cells: " + ", ".join(f"{k} {row[k]['seconds']:.2f} s" for k in GOALS_S))
    return row


def _clear(url: str) -> None:
    from medhub.grid.store import ResultStore, cells_table

    store = ResultStore(url)
    with store.engine.begin() as conn:
        conn.execute(cells_table.delete())
    store.close()


@contextlib.contextmanager
def database(kind: str, work: Path, cells: int):
    """A fresh database URL of ``kind`` (``sqlite`` or ``postgresql``) for one grid size."""
    if kind == "sqlite":
        yield f"sqlite:///{work / f'grid{cells}.db'}"
        return
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from pg_server import throwaway_postgres

    with throwaway_postgres() as url:
        yield url


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_op":
        name, url, shape_file = sys.argv[2:5]
        result = OPS[name](url, json.loads(Path(shape_file).read_text()))
        result["peak_mb"] = peak_rss_mb()
        result["process_cpu_s"] = round(_cpu_seconds(resource.getrusage(resource.RUSAGE_SELF)), 3)
        print(json.dumps(result))
        return
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--cells", default=None, help="grid sizes, comma-separated (default 500,5000,50000)")
    p.add_argument("--databases", default=None, help="sqlite,postgresql (default: both where available)")
    args = p.parse_args()
    sizes = [int(c) for c in (args.cells or ("500,5000" if args.quick else "500,5000,50000")).split(",")]
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from pg_server import postgres_available

    kinds = (args.databases or ("sqlite" if args.quick or not postgres_available() else "sqlite,postgresql"))
    rows = []
    with tempfile.TemporaryDirectory(prefix="medhub-study-") as tmp:
        work = Path(tmp)
        overlay = work / "study.yaml"
        write_overlay(overlay, grid_shape(max(sizes))["models"][:OVERLAY_CHECKPOINTS])
        env = {**os.environ, "MEDHUB_REGISTRY": str(overlay)}
        for kind in kinds.split(","):
            for cells in sizes:
                with database(kind, work, cells) as url:
                    rows.append({"database": kind, **measure_size(cells, url, work, env)})
    at_goal = [r for r in rows if r["cells"] == 5000]
    meets = bool(at_goal) and all(
        r[op]["seconds"] <= goal and r[op].get("peak_mb", 0) < MEMORY_GOAL_MB for r in at_goal
        for op, goal in GOALS_S.items())
    emit({"benchmark": "study_scale", "quick": args.quick, "machine": machine(), "goals_s": GOALS_S,
          "memory_goal_mb": MEMORY_GOAL_MB, "rows": rows, "meets_goal": meets})


if __name__ == "__main__":
    main()
