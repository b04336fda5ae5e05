"""report.json, report.md and plots (ROC curves per class, learning curves) of a reproduce run."""

from __future__ import annotations

import json
import math
import platform
from pathlib import Path
from typing import Any

import numpy as np

from medhub._io import atomic_open, atomic_write_text

DISCLAIMER = "Research software, not a medical device: never use these results for clinical decisions."


def summarize(values: list[float]) -> tuple[float, float]:
    """Mean and population std (the benchmark's np.std) of the runs' metrics."""
    array = np.asarray(values, dtype=float)
    return float(array.mean()), float(array.std())


def environment(device: str) -> dict[str, Any]:
    """Library versions and the machine the numbers come from."""
    import sklearn
    import timm
    import torch

    import medhub

    info = {"medhub": medhub.__version__, "torch": torch.__version__, "timm": timm.__version__,
            "sklearn": sklearn.__version__, "numpy": np.__version__, "python": platform.python_version(),
            "platform": platform.platform(), "device": device, "threads": torch.get_num_threads()}
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def build_report(model: str, task, metric: str, runs: list[dict], protocol: dict, env: dict,
                 reported: dict | None) -> dict:
    """The report.json document; ends with ``verdict`` and ``verdict_reasons`` (:mod:`medhub.train.verdict`).

    ``protocol`` is the plan (``Plan.as_dict()`` plus data details); ``reported`` the published number of
    exactly the run's setting, or None. ``accuracy`` is the mean test ACC over runs, compared with a published
    ACC of the same setting when one exists (``reported['acc']``).
    """
    from medhub.train.verdict import verdict

    mean, std = summarize([r["metric"] for r in runs])
    accuracies = [r["accuracy"] for r in runs if r.get("accuracy") is not None]
    accuracy = summarize(accuracies) if accuracies else None
    difference = None if reported is None else mean - reported["mean"]
    report = {
        "model": model, "task": task.id, "metric": metric, "runs": runs, "mean": mean, "std": std,
        "reported": reported, "difference": difference, "protocol": protocol, "environment": env,
        "disclaimer": DISCLAIMER,
    }
    if accuracy is not None:
        report["accuracy"] = {"mean": accuracy[0], "std": accuracy[1]}
        published_acc = (reported or {}).get("acc")
        if published_acc is not None:
            report["accuracy"].update(published=published_acc["mean"], difference=accuracy[0] - published_acc["mean"])
    report.update(verdict(protocol, mean, std, len(runs)))
    return report


def comparison_line(report: dict) -> str:
    """One sentence comparing the result with the published one."""
    metric, mean, std = report["metric"].upper(), report["mean"], report["std"]
    runs = len(report["runs"])
    line = f"{report['model']} on {report['task']}: {metric} {mean:.4f} ± {std:.4f} over {runs} run(s)"
    reported = report["reported"] or (report.get("protocol") or {}).get("reference")
    if reported is None:
        return line + "; no published number in the registry for this setting"
    ref_std = f" ± {reported['std']:.4f}" if reported.get("std") is not None else ""
    setting = ", ".join(f"{k}={v}" for k, v in (reported.get("setting") or {}).items())
    acc = report.get("accuracy") or {}
    acc_text = (f"; ACC {acc['mean']:.4f} vs published {acc['published']:.4f}" if acc.get("published") is not None
                else "")
    return (f"{line}; published {reported['mean']:.4f}{ref_std}{f' ({setting})' if setting else ''}, "
            f"difference {mean - reported['mean']:+.4f}{acc_text} [{reported['source']}]")


def verdict_lines(report: dict) -> list[str]:
    """``verdict: <verdict>`` and one indented line per reason."""
    return [f"verdict: {report['verdict']}"] + [f"  - {reason}" for reason in report.get("verdict_reasons") or []]


def write_markdown(report: dict, path: Path, plots: list[str]) -> None:
    """report.md: the comparison, per-run table, per-class values, protocol and environment."""
    reported = report.get("reported") or {}
    about = [f"About the reported number: {reported['notes']}", ""] if reported.get("notes") else []
    lines = [f"# {report['model']} on {report['task']}", "", comparison_line(report), "", *verdict_lines(report), "",
             *about, f"_{DISCLAIMER}_", "",
             "| run | seed | test " + report["metric"] + " | test acc | epochs | best epoch (dotted in the plot) | "
             "seconds |", "|---|---|---|---|---|---|---|"]
    for i, run in enumerate(report["runs"]):
        acc = f"{run['accuracy']:.4f}" if run.get("accuracy") is not None else "-"
        lines.append(f"| {i} | {run['seed']} | {run['metric']:.4f} | {acc} | {run['epochs']} | "
                     f"{run.get('best_epoch')} | {run['seconds']:.1f} |")
    classes = list(report["runs"][0]["per_class"]) if report["runs"] else []
    if classes:
        lines += ["", "## Per class (mean over runs)", "", "| class | value |", "|---|---|"]
        for name in classes:
            values = [r["per_class"][name] for r in report["runs"]]
            value = float(np.nanmean(values)) if not all(math.isnan(v) for v in values) else float("nan")
            lines.append(f"| {name} | {value:.4f} |")
    overrides = report["protocol"].get("overrides") or {}
    lines += ["", "## Protocol", "", "```json", json.dumps(report["protocol"], indent=1, default=str), "```"]
    if overrides:
        lines += ["", "Overrides of the task's protocol: " + ", ".join(f"{k}={v}" for k, v in overrides.items())]
    lines += ["", "## Environment", "", "```json", json.dumps(report["environment"], indent=1), "```"]
    lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots]
    atomic_write_text(path, "\n".join(lines) + "\n")


def write_json(report: dict, path: Path) -> None:
    """report.json, atomically (NaN written as null)."""
    def clean(value):
        if isinstance(value, float) and math.isnan(value):
            return None
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, list):
            return [clean(v) for v in value]
        return value

    atomic_write_text(path, json.dumps(clean(report), indent=2, default=str) + "\n")


def _save_figure(figure, path: Path) -> None:
    with atomic_open(path, "wb") as handle:
        figure.savefig(handle, format="png", dpi=110, bbox_inches="tight")


def plot_learning_curves(histories: list[list[dict]], metric: str, path: Path,
                         best_epochs: list[int] | None = None) -> None:
    """Train/val loss and val metric per epoch, one line per run; dotted lines mark each run's best epoch."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    from matplotlib import pyplot as plt

    figure, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(10, 3.8))
    for i, history in enumerate(histories):
        epochs = [h["epoch"] for h in history]
        ax_loss.plot(epochs, [h["train_loss"] for h in history], label=f"run {i} train")
        ax_loss.plot(epochs, [h["val_loss"] for h in history], "--", label=f"run {i} val")
        line, = ax_metric.plot(epochs, [h["val_metric"] for h in history], label=f"run {i}")
        if best_epochs:
            ax_metric.axvline(best_epochs[i], color=line.get_color(), linestyle=":", linewidth=1)
    ax_loss.set(xlabel="epoch", ylabel="loss", title="Loss")
    ax_metric.set(xlabel="epoch", ylabel=f"val {metric}", title=f"Validation {metric.upper()}")
    for axis in (ax_loss, ax_metric):
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    _save_figure(figure, path)
    plt.close(figure)


def plot_roc(curves: dict[str, tuple[list[float], list[float]]], per_class: dict[str, float], title: str,
             path: Path) -> None:
    """ROC curve per class with its AUC in the legend."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    from matplotlib import pyplot as plt

    figure, axis = plt.subplots(figsize=(5.5, 5))
    for name, (fpr, tpr) in curves.items():
        axis.plot(fpr, tpr, label=f"{name} (AUC {per_class.get(name, float('nan')):.3f})")
    axis.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    axis.set(xlabel="false positive rate", ylabel="true positive rate", title=title, xlim=(0, 1), ylim=(0, 1.01))
    axis.legend(fontsize=7, loc="lower right")
    axis.grid(alpha=0.3)
    _save_figure(figure, path)
    plt.close(figure)
