"""How well does ``medhub rank`` agree with fine-tuning? A real study on this machine.

Phases (each resumable; run them in order, or ``all``)::

    zoo       build >= 8 checkpoints that should differ in usefulness, with ``medhub adapt`` (registered in
              the study's own overlay): from-scratch baselines of four timm architectures, resnet18 adapted
              on the NIH ChestX-ray14 1000-image subset for 1, 5 and 15 epochs, resnet10t adapted on it for
              5 epochs, resnet18 trained on PneumoniaMNIST and on BreastMNIST.
    finetune  ``medhub benchmark`` of the whole zoo on each target task, 3 seeds, into one results DB.
    rank      ``medhub rank`` of the zoo on each target task with every score, ``--against`` that DB
              (cold feature cache, then a warm re-score).
    report    a Markdown table: Kendall's tau and weighted tau per score and task, wall times side by side.

    python benchmarks/rank_study.py all --work /tmp/rank-study          # about 1 h on a shared 2-core CPU
    python benchmarks/rank_study.py --quick                             # every phase, tiny: a smoke test

``--quick`` runs all four phases on a tiny study (four candidates, one of them adapted for 2 epochs; BreastMNIST
only, one seed, one epoch on a quarter of the labels; LogME and k-NN) in a temporary folder and prints one
JSON object as its last line (Kendall's tau per score, wall times): it shows the study runs, not how well
ranking agrees (BENCHMARKS.md "rank" has the real study).

The zoo is fixed before any ranking is seen: no tuning toward a good tau. Everything lives under ``--work``
(its own MEDHUB_HOME, registry overlay and caches), so the study never touches a user's setup.
Research software, not a medical device.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SHARED = Path(os.environ.get("MEDHUB_SHARED", ROOT.parent / "shared")) / "data"
TARGETS = ("breastmnist", "pneumoniamnist")
# the fine-tuning grid per target: (epochs, label fraction), the same for every candidate. Short schedules
# (about 50-75 optimizer steps): MedMNIST's default short run (~360 steps) x 10 candidates x 3 seeds would take
# hours on the shared 2-core machine. PneumoniaMNIST was first started at 3 epochs on all labels; at 365 s per
# resnet18 cell under that day's load it could not finish in the session, so it was restarted (after one cell,
# before any ranking was compared) with a quarter of the labels, the benchmark's label-efficiency setting.
FINETUNE = {"breastmnist": (15, 1.0), "pneumoniamnist": (5, 0.25)}
SCORES = "logme,hscore,nleep,knn,leep,nce"
IMG = "28"  # every adaptation at MedMNIST's 28 px

# id -> (base, task, epochs): what `medhub adapt` trains; random: entries are used as they are
Zoo = dict[str, "tuple[str, str, int] | None"]
ZOO: Zoo = {
    "random:resnet18": None,
    "random:resnet10t": None,
    "random:mobilenetv3_small_050": None,
    "random:test_resnet": None,
    "study_resnet18_nih_e1": ("random:resnet18", "nih1000", 1),
    "study_resnet18_nih_e5": ("random:resnet18", "nih1000", 5),
    "study_resnet18_nih_e15": ("random:resnet18", "nih1000", 15),
    "study_resnet10t_nih_e5": ("random:resnet10t", "nih1000", 5),
    "study_resnet18_pneumonia_e3": ("random:resnet18", "pneumoniamnist", 3),
    "study_resnet18_breast_e20": ("random:resnet18", "breastmnist", 20),
}


@dataclass(frozen=True)
class Study:
    """What one study runs: candidates, targets, the fine-tuning grid per target, seeds and scores."""

    zoo: Zoo
    targets: tuple[str, ...]
    finetune: dict[str, tuple[int, float]]
    runs: int
    scores: str


FULL = Study(ZOO, TARGETS, FINETUNE, 3, SCORES)
QUICK = Study({"random:test_resnet": None, "random:resnet10t": None, "random:mobilenetv3_small_050": None,
               "quick_test_resnet_breast_e2": ("random:test_resnet", "breastmnist", 2)},
              ("breastmnist",), {"breastmnist": (1, 0.25)}, 1, "logme,knn")


def environment(work: Path) -> dict[str, str]:
    """The study's private HOME-like folders, and the NIH1000 task overlay."""
    env = dict(os.environ)
    env.update({
        "MEDHUB_HOME": str(work / "medhub-home"),
        "XDG_CONFIG_HOME": str(work / "config"),
        "MEDHUB_REGISTRY": str(ROOT / "examples" / "nih1000_task.yaml"),
        "MEDHUB_DATA": str(SHARED),
        "PYTHONPATH": str(ROOT),
        "OMP_NUM_THREADS": "1",
    })
    return env


def medhub(args: list[str], env: dict, log: Path) -> tuple[int, float, float]:
    """Run ``python -m medhub ARGS``, appending its output to ``log``; returns (exit code, wall s, CPU s).

    CPU seconds (user + system of the child) say what the command cost when other processes share the cores.
    """
    started = time.perf_counter()
    with open(log, "a") as handle:
        handle.write(f"\n$ medhub {' '.join(args)}\n")
        handle.flush()
        child = subprocess.Popen([sys.executable, "-m", "medhub", *args], env=env, stdout=handle, stderr=handle)
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
    return child.returncode, time.perf_counter() - started, usage.ru_utime + usage.ru_stime


def data_dir(task: str) -> str:
    return str(SHARED / ("nih_cxr14_1000_64px" if task == "nih1000" else task))


def phase_zoo(work: Path, env: dict, study: Study = FULL) -> None:
    for model_id, recipe in study.zoo.items():
        if recipe is None or (work / "zoo" / model_id / "model.safetensors").is_file():
            continue
        base, task, epochs = recipe
        code, seconds, _ = medhub(["adapt", base, task, "--data-dir", data_dir(task), "--out", str(work / "zoo" / model_id),
                                "--id", model_id, "--epochs", str(epochs), "--img-size", IMG, "--device", "cpu",
                                "--no-progress"], env, work / "zoo.log")
        print(f"zoo: {model_id} exit {code} in {seconds:.0f}s", flush=True)


def phase_finetune(work: Path, env: dict, study: Study = FULL) -> None:
    models = ",".join(study.zoo)
    timings = _read(work / "timings.json")
    for task in study.targets:
        epochs, fraction = study.finetune[task]
        code, seconds, _ = medhub(["benchmark", "--models", models, "--tasks", task, "--runs", str(study.runs),
                                "--epochs", str(epochs), "--label-fractions", str(fraction),
                                "--results", f"sqlite:///{work}/grid.db",
                                "--data-root", str(SHARED), "--workers", "1", "--device", "cpu", "--resume"],
                               env, work / "finetune.log")
        timings.setdefault("finetune", {})[task] = {"exit": code, "wall_s": seconds}
        print(f"finetune: {task} exit {code} in {seconds:.0f}s", flush=True)
        _write(work / "timings.json", timings)


def phase_rank(work: Path, env: dict, study: Study = FULL) -> None:
    models = ",".join(study.zoo)
    timings = _read(work / "timings.json")
    for task in study.targets:
        out = work / "rank" / task
        for label in ("cold", "warm"):  # cold: features extracted; warm: re-scored from the feature cache
            if label == "cold" and "cold" in timings.get("rank", {}).get(task, {}):
                continue
            code, seconds, cpu = medhub(["rank", task, "--models", models, "--data-dir", data_dir(task),
                                         "--score", study.scores,
                                    "--against", f"sqlite:///{work}/grid.db", "--out", str(out), "--device", "cpu"],
                                   env, work / "rank.log")
            timings.setdefault("rank", {}).setdefault(task, {})[label] = {"exit": code, "wall_s": seconds,
                                                                           "cpu_s": cpu, "scores": study.scores}
            print(f"rank: {task} ({label}) exit {code} in {seconds:.0f}s", flush=True)
            _write(work / "timings.json", timings)


def finetune_times(work: Path, task: str, study: Study = FULL) -> dict:
    """Fine-tuning cost of the zoo on ``task`` from the grid DB: summed cell seconds and first-start to
    last-finish wall time (cells ran one at a time per task)."""
    sys.path.insert(0, str(ROOT))
    from medhub.grid.store import ResultStore

    store = ResultStore(f"sqlite:///{work}/grid.db", create=False)
    try:
        epochs, fraction = study.finetune[task]
        rows = [r for r in store.rows(task=task) if r["status"] == "done" and r["label_fraction"] == fraction
                and r["settings"].get("epochs") == epochs]  # the study's setting only
    finally:
        store.close()
    if not rows:
        return {}
    return {"cells": len(rows), "cell_seconds": sum(r["seconds"] or 0.0 for r in rows),
            "wall_s": max(r["finished_at"] for r in rows) - min(r["started_at"] for r in rows)}


def phase_report(work: Path, study: Study = FULL) -> str:
    timings = _read(work / "timings.json")
    lines = ["| task | score | Kendall tau | weighted tau | p (tau) | candidates |", "|---|---|---|---|---|---|"]
    times = ["| task | fine-tuning: cells | fine-tuning: sum of cell seconds | fine-tuning: wall s | rank cold s "
             "| rank warm s | fine-tuning / rank (cold) |", "|---|---|---|---|---|---|---|"]
    for task in study.targets:
        report = _read(work / "rank" / task / "rank.json")
        for score, row in (report.get("against") or {}).get("scores", {}).items():
            lines.append(f"| {task} | {score} | {_f(row.get('tau'))} | {_f(row.get('weighted_tau'))} "
                         f"| {_f(row.get('p'), '.3g')} | {row.get('n')} |")
        fine = finetune_times(work, task, study)
        rank = timings.get("rank", {}).get(task, {})
        cold, warm = rank.get("cold", {}).get("wall_s"), rank.get("warm", {}).get("wall_s")
        ratio = f"{fine['cell_seconds'] / cold:.0f}x" if fine and cold else "-"
        times.append(f"| {task} | {fine.get('cells', 0)} | {_f(fine.get('cell_seconds'), '.0f')} "
                     f"| {_f(fine.get('wall_s'), '.0f')} | {_f(cold, '.0f')} | {_f(warm, '.0f')} | {ratio} |")
    text = "\n".join(lines) + "\n\n" + "\n".join(times) + "\n"
    (work / "report.md").write_text(text)
    return text


def _f(value, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)


def _read(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def _write(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(path)


def quick_summary(work: Path, study: Study) -> dict:
    """The JSON line of ``--quick``: per target, tau and weighted tau per score and the phases' wall times."""
    sys.path.insert(0, str(HERE))
    from _common import machine

    timings = _read(work / "timings.json")
    targets = {}
    for task in study.targets:
        against = (_read(work / "rank" / task / "rank.json").get("against") or {}).get("scores", {})
        targets[task] = {
            "tau": {score: row.get("tau") for score, row in against.items()},
            "weighted_tau": {score: row.get("weighted_tau") for score, row in against.items()},
            "finetune": timings.get("finetune", {}).get(task), "rank": timings.get("rank", {}).get(task),
        }
    exits = [t[k]["exit"] for t in targets.values() for k in ("finetune",) if t[k]] + [
        run["exit"] for t in targets.values() for run in (t["rank"] or {}).values()]
    return {"benchmark": "rank_study", "quick": True, "candidates": len(study.zoo), "runs": study.runs,
            "scores": study.scores, "targets": targets,
            "meets_goal": bool(exits) and all(code == 0 for code in exits) and all(t["tau"] for t in targets.values()),
            "goal": "every phase runs and rank --against reports Kendall's tau", "machine": machine()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("phase", nargs="?", choices=["zoo", "finetune", "rank", "report", "all"],
                        help="which phase to run (default with --quick: all)")
    parser.add_argument("--work", type=Path, default=None,
                        help="the study's folder (default /tmp/rank-study; with --quick a temporary one)")
    parser.add_argument("--quick", action="store_true", help="the tiny study (see the module docstring)")
    args = parser.parse_args()
    if args.phase is None and not args.quick:
        parser.error("name a phase (zoo, finetune, rank, report, all) or pass --quick")
    study, phase = (QUICK, args.phase or "all") if args.quick else (FULL, args.phase)
    with tempfile.TemporaryDirectory(prefix="medhub-rank-study-") as scratch:
        work = (args.work or (Path(scratch) if args.quick else Path("/tmp/rank-study"))).resolve()
        work.mkdir(parents=True, exist_ok=True)
        env = environment(work)
        if phase in ("zoo", "all"):
            phase_zoo(work, env, study)
        if phase in ("finetune", "all"):
            phase_finetune(work, env, study)
        if phase in ("rank", "all"):
            phase_rank(work, env, study)
        if phase in ("report", "all"):
            print(phase_report(work, study))
        if args.quick:
            print(json.dumps(quick_summary(work, study)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
