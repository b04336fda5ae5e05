"""The rank report's figures: a bar plot per score, and score vs fine-tuned metric scatter plots."""

from __future__ import annotations

import io
from pathlib import Path

from medhub._io import atomic_write_bytes


def _save(fig, path: Path) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    atomic_write_bytes(path, buffer.getvalue())


def plot_scores(report: dict, path: Path) -> None:
    """One horizontal bar chart per score, candidates in the table's order (best on top)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["candidates"]
    names = report["scores"]
    fig, axes = plt.subplots(1, len(names), figsize=(3.6 * len(names) + 2.5, 0.38 * len(rows) + 1.6), squeeze=False)
    labels = [r["model"] for r in rows][::-1]
    for ax, name in zip(axes[0], names, strict=True):
        values = [r["scores"].get(name) for r in rows][::-1]
        ax.barh(range(len(rows)), [v if v is not None else 0.0 for v in values],
                color=["#4c72b0" if v is not None else "#cccccc" for v in values])
        ax.set_yticks(range(len(rows)), labels if ax is axes[0][0] else [""] * len(rows), fontsize=8)
        suffix = " (ranks)" if name == report["primary"] else ""
        if all(v is None for v in values):
            suffix = " (n/a for every candidate)"
        ax.set_title(name + suffix, fontsize=9)
        ax.axvline(0, color="black", linewidth=0.6)
    fig.suptitle(f"medhub rank: {report['task']} ({report['sample']['n_images']} training images)", fontsize=10)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def plot_against(report: dict, path: Path) -> None:
    """Each score (x) against the fine-tuned metric (y, mean ± std over seeds), one panel per score that has
    values (scores that are n/a for every candidate get none); nothing is written when no score has any."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    section = report["against"]
    names = [n for n in report["scores"] if any(p["scores"].get(n) is not None for p in section["points"])]
    if not names:
        return
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.8), squeeze=False)
    metric = (section.get("group") or {}).get("metric", "metric")
    for ax, name in zip(axes[0], names, strict=True):
        points = [p for p in section["points"] if p["scores"].get(name) is not None]
        xs = [p["scores"][name] for p in points]
        ax.errorbar(xs, [p["mean"] for p in points], yerr=[p["std"] for p in points], fmt="o", capsize=2)
        for p, x in zip(points, xs, strict=True):
            ax.annotate(p["model"].replace("random:", "r:"), (x, p["mean"]), fontsize=6, alpha=0.8)
        stats = section["scores"].get(name) or {}
        tau, wtau = stats.get("tau"), stats.get("weighted_tau")
        text = f"tau {tau:.2f}, weighted {wtau:.2f}" if tau is not None and wtau is not None else "tau n/a"
        ax.set_title(f"{name}: {text}", fontsize=9)
        ax.set_xlabel(name)
        ax.set_ylabel(f"fine-tuned test {metric}")
    fig.suptitle(f"{report['task']}: transferability score vs fine-tuning", fontsize=10)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
