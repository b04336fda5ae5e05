"""Benchmark 5: the trainer on a busy machine. medhub's default thread choice versus every count set by hand.

With 0, 1 and 2 CPU-burner processes (one busy Python loop each) running beside it, a fresh process trains
the README main job's network (timm ``resnet18``, 28 px, batch 128, Adam, cross-entropy) through medhub's
trainer (:func:`medhub.train.loop.train_epoch` over :func:`medhub.data.loader.make_loader` on an in-memory
uint8 split) for a few batches and reports its median step time. Sides, each a new interpreter so that the
thread count is set before torch starts working:

* ``auto``: medhub's default as ``medhub reproduce`` runs: ``import medhub`` before torch (OpenMP threads
  sleep when idle, ``OMP_WAIT_POLICY=PASSIVE``) and :func:`medhub.cpu.choose_threads`;
* ``1``, ``2``, ...: torch imported first with its defaults, then ``torch.set_num_threads(k)``, for every
  ``k`` up to the usable cores: a user choosing the count by hand.

Sides alternate order each round; per burner count the JSON gives every side's median step time,
``ratio_to_best`` (auto / the best hand-chosen count; goal <= 1.1) and ``ratio_to_fair_share`` (auto /
max(idle, idle x (burners + 1) / cores), idle = the best hand-chosen time with no burner; goal <= 1.2).
Last stdout line: JSON.

    python benchmarks/contention.py --quick
    python benchmarks/contention.py --burners 0,1,2 --repeats 5
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from _common import emit, machine, median, note, parser

_STEP_CODE = r"""
import json, os, sys, time
threads = sys.argv[1]
if threads == "auto":  # medhub's default: import medhub before torch, as the CLI does (OpenMP wait policy)
    import medhub
import numpy as np, torch
from medhub.cpu import choose_threads
choice = choose_threads(None if threads == "auto" else int(threads))
torch.set_num_threads(choice.threads)
import timm
from medhub.data.cache import CachedSplit
from medhub.data.loader import make_loader, set_epoch
from medhub.train.loop import FitConfig, make_optimizer, train_epoch
batches, arch, size, batch = int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
rng = np.random.default_rng(0)
split = CachedSplit("train", rng.integers(0, 256, (batches * batch, 1, size, size), dtype=np.uint8),
                    rng.integers(0, 2, batches * batch))
torch.manual_seed(0)
model = timm.create_model(arch, num_classes=2, in_chans=3)
config = FitConfig(task_type="binary-class", label_names=("a", "b"), loss="cross_entropy", optimizer="adam",
                   lr=1e-3, epochs=1, channels=3, seed=0)
optimizer = make_optimizer(model.parameters(), config)
loader = make_loader(split, batch_size=batch, shuffle=True, seed=0)
device = torch.device("cpu")
warm = make_loader(CachedSplit("train", split.images[:2 * batch], split.labels[:2 * batch]), batch_size=batch,
                   shuffle=False)
train_epoch(model, warm, optimizer, device, config, False, "warm-up")
set_epoch(loader, 0)
started = time.perf_counter()
train_epoch(model, loader, optimizer, device, config, False, "timed")
print(json.dumps({"step_s": (time.perf_counter() - started) / batches, "threads": choice.threads,
                  "busy": choice.busy}))
"""


def start_burners(count: int) -> list[subprocess.Popen]:
    """``count`` single-threaded busy loops (each ends itself after 30 minutes at the latest)."""
    code = "import time\nend = time.time() + 1800\nwhile time.time() < end:\n    pass\n"
    return [subprocess.Popen([sys.executable, "-c", code]) for _ in range(count)]


def stop(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        process.kill()
        process.wait()


def run_side(threads: str, batches: int, model: tuple[str, int, int]) -> dict:
    """One fresh interpreter training ``batches`` batches of ``model`` = (arch, image size, batch size) with
    ``threads`` (``auto`` or a count)."""
    env = {k: v for k, v in os.environ.items() if k not in ("MEDHUB_THREADS", "OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
    out = subprocess.run([sys.executable, "-c", _STEP_CODE, threads, str(batches), *map(str, model)],
                         capture_output=True, text=True, env=env, timeout=1800)
    if out.returncode != 0:
        raise SystemExit(f"side {threads} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(burners: int, sides: list[str], repeats: int, batches: int, model: tuple[str, int, int]) -> dict:
    """Median step seconds per side with ``burners`` busy loops running."""
    procs = start_burners(burners)
    try:
        time.sleep(1.0)  # let the scheduler see them
        steps: dict[str, list[float]] = {side: [] for side in sides}
        chosen: list[int] = []
        for round_ in range(repeats):
            for side in sides if round_ % 2 == 0 else sides[::-1]:
                record = run_side(side, batches, model)
                steps[side].append(record["step_s"])
                if side == "auto":
                    chosen.append(record["threads"])
                note(f"burners {burners} round {round_ + 1}/{repeats} {side}: {record['step_s']:.3f} s/step "
                     f"({record['threads']} threads)")
    finally:
        stop(procs)
    return {"burners": burners, "median_step_s": {s: round(median(v), 4) for s, v in steps.items()},
            "runs_s": {s: [round(x, 4) for x in v] for s, v in steps.items()}, "auto_threads": chosen}


def main() -> None:

    p = parser(__doc__.splitlines()[0])
    p.add_argument("--batches", type=int, default=None, help="timed batches per side (default 8; quick 3)")
    p.add_argument("--burners", default=None, help="burner counts, comma-separated (default 0,1,2; quick 0,1)")
    p.add_argument("--arch", default="resnet18", help="timm architecture (default resnet18)")
    p.add_argument("--img-size", type=int, default=28, help="image size in px (default 28)")
    p.add_argument("--batch-size", type=int, default=128, help="batch size (default 128)")
    args = p.parse_args()
    from medhub.cpu import usable_cpus

    repeats = args.repeats or (1 if args.quick else 5)
    batches = args.batches or (3 if args.quick else 8)
    burners = [int(b) for b in (args.burners or ("0,1" if args.quick else "0,1,2")).split(",")]
    cores = usable_cpus()
    sides = ["auto"] + [f"{k}" for k in range(1, cores + 1)]
    model = (args.arch, args.img_size, args.batch_size)
    rows = [measure(b, sides, repeats, batches, model) for b in burners]
    idle = min(v for k, v in rows[0]["median_step_s"].items() if k != "auto") if rows[0]["burners"] == 0 else None
    for row in rows:
        hand = {k: v for k, v in row["median_step_s"].items() if k != "auto"}
        best = min(hand, key=hand.get)
        row["best_hand_threads"] = int(best)
        row["ratio_to_best"] = round(row["median_step_s"]["auto"] / hand[best], 3)
        if idle:
            fair = max(idle, idle * (row["burners"] + 1) / cores)
            row["fair_share_step_s"] = round(fair, 4)
            row["ratio_to_fair_share"] = round(row["median_step_s"]["auto"] / fair, 3)
    worst_best = max(row["ratio_to_best"] for row in rows)
    worst_fair = max((row.get("ratio_to_fair_share", 0.0) for row in rows), default=0.0)
    emit({"benchmark": "contention", "quick": args.quick, "model": f"{args.arch} {args.img_size}px batch "
          f"{args.batch_size}", "usable_cores": cores, "machine": machine(), "repeats": repeats,
          "batches": batches, "rows": rows, "worst_ratio_to_best": worst_best,
          "worst_ratio_to_fair_share": worst_fair,
          "meets_goal": bool(worst_best <= 1.1 and (not worst_fair or worst_fair <= 1.2))})


if __name__ == "__main__":
    main()
