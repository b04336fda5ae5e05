"""Stored cells -> the model x task matrix, significance against a baseline, and plots.

Significance: for each (task, label fraction, setting), every model is compared with the baseline by a
two-sided **paired t-test over seeds** (``scipy.stats.ttest_rel``) on the seeds both ran, as the benchmark
paper does; where fewer than two seeds pair up it falls back to **Welch's t-test** (``ttest_ind`` with
``equal_var=False``). No correction for multiple comparisons is applied; the p-values are reported raw.

>>> summarize([])["matrix"]
[]
"""

from __future__ import annotations

import contextlib
import csv
import logging
import math
import statistics
from collections import defaultdict
from pathlib import Path
from typing import IO

from medhub.grid.cells import settings_key
from medhub.schema import RANDOM_PREFIX

log = logging.getLogger(__name__)

ALPHA = 0.05
METHOD = (
    "two-sided paired t-test over seeds (scipy.stats.ttest_rel) where seeds pair up; "
    "Welch's t-test (scipy.stats.ttest_ind, equal_var=False) otherwise"
)
# the report fields summarize() reads: ResultStore.rows(report_keys=REPORT_KEYS) fetches only these
REPORT_KEYS = ("reported",)
MATRIX_FIELDS = (
    "model", "task", "label_fraction", "setting", "metric", "n", "mean", "std", "seeds",
    "reported_mean", "reported_std", "reported_source", "difference",
)  # fmt: skip


def _group(rows: list[dict]) -> dict[tuple, list[dict]]:
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for row in rows:
        if row["status"] == "done" and row.get("metric") is not None:
            key = (
                row["model"],
                row["task"],
                float(row["label_fraction"]),
                settings_key(row["settings"] or {}),
            )
            groups[key].append(row)
    return groups


def _matrix_entry(key: tuple, rows: list[dict]) -> dict:
    model, task, fraction, setting = key
    rows = sorted(rows, key=lambda r: r["seed"])
    values = [float(r["metric"]) for r in rows]
    reported = next(
        (r["report"].get("reported") for r in rows if r["report"] and r["report"].get("reported")), None
    )
    mean = statistics.fmean(values)
    rep_mean = reported.get("mean") if reported else None
    return {
        "model": model,
        "task": task,
        "label_fraction": fraction,
        "setting": setting,
        "metric": rows[0]["metric_name"] or "metric",
        "n": len(values),
        "mean": mean,
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "seeds": [r["seed"] for r in rows],
        "values": values,
        "reported_mean": rep_mean,
        "reported_std": reported.get("std") if reported else None,
        "reported_source": reported.get("source") if reported else None,
        "difference": None if rep_mean is None else mean - rep_mean,
    }


def pick_baseline(models: list[str], requested: str | None = None) -> str | None:
    """The baseline: ``requested`` (an id or alias), else the first ``random:`` model, else the first model."""
    if requested:
        if requested not in models and not requested.startswith(RANDOM_PREFIX):
            from medhub.registry import load_registry

            with contextlib.suppress(KeyError):
                requested = load_registry().resolve_id(requested)
        return requested
    randoms = [m for m in models if m.startswith(RANDOM_PREFIX)]
    return (randoms or sorted(models) or [None])[0]


def compare(values: dict[int, float], base: dict[int, float]) -> dict:
    """Test one model's per-seed values against the baseline's (``{seed: metric}`` each)."""
    from scipy import stats

    common = sorted(set(values) & set(base))
    diff = statistics.fmean(values.values()) - statistics.fmean(base.values())
    if len(common) >= 2:
        test, n = "paired t-test", len(common)
        res = stats.ttest_rel([values[s] for s in common], [base[s] for s in common])
    elif len(values) >= 2 and len(base) >= 2:
        test, n = "Welch's t-test", min(len(values), len(base))
        res = stats.ttest_ind(list(values.values()), list(base.values()), equal_var=False)
    else:
        return {
            "test": "none (fewer than 2 runs)",
            "n": min(len(values), len(base)),
            "difference": diff,
            "t": None,
            "p": None,
            "significant": False,
        }
    t, p = float(res.statistic), float(res.pvalue)
    if math.isnan(p):  # identical values on both sides: no variance to test against
        t, p, test = None, None, f"{test} (no variance)"
    return {
        "test": test,
        "n": n,
        "difference": diff,
        "t": t,
        "p": p,
        "significant": p is not None and p < ALPHA,
    }


def significance(matrix: list[dict], baseline: str | None) -> dict:
    """Every model vs ``baseline`` within each (task, label fraction, setting)."""
    out = {"baseline": baseline, "method": METHOD, "alpha": ALPHA, "rows": []}
    if baseline is None:
        out["note"] = "no results yet"
        return out
    bases = {(e["task"], e["label_fraction"], e["setting"]): e for e in matrix if e["model"] == baseline}
    if not bases:
        out["note"] = f"baseline {baseline} has no results in this database; pick one with --baseline"
        return out
    for entry in matrix:
        base = bases.get((entry["task"], entry["label_fraction"], entry["setting"]))
        if entry["model"] == baseline or base is None:
            continue
        result = compare(
            dict(zip(entry["seeds"], entry["values"], strict=False)),
            dict(zip(base["seeds"], base["values"], strict=False)),
        )
        out["rows"].append(
            {
                "model": entry["model"],
                "task": entry["task"],
                "label_fraction": entry["label_fraction"],
                "setting": entry["setting"],
                **result,
            }
        )
    if not out["rows"]:
        out["note"] = f"only the baseline {baseline} has results; add models to compare"
    return out


def summarize(rows: list[dict], *, baseline: str | None = None) -> dict:
    """Everything ``medhub results --db`` shows: status counts, matrix, significance, failures."""
    counts: dict[str, int] = defaultdict(int)
    for row in rows:
        counts[row["status"]] += 1
    matrix = [_matrix_entry(key, group) for key, group in sorted(_group(rows).items())]
    models = sorted({e["model"] for e in matrix})
    status = (
        f"{len(rows)} cells: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
        if rows
        else "no cells"
    )
    return {
        "status": status,
        "counts": dict(counts),
        "tasks": sorted({e["task"] for e in matrix}),
        "models": models,
        "matrix": matrix,
        "significance": significance(matrix, pick_baseline(models, baseline)),
        "failed": [{"key": r["key"], "error": r["error"]} for r in rows if r["status"] == "failed"],
        "disclaimer": "Research software, not a medical device: never use its outputs for clinical decisions.",
    }


def write_csv(summary: dict, stream: IO[str]) -> None:
    """The matrix as CSV, one row per (model, task, label fraction, setting)."""
    writer = csv.DictWriter(stream, fieldnames=MATRIX_FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for entry in summary["matrix"]:
        writer.writerow({**entry, "seeds": " ".join(map(str, entry["seeds"]))})


def write_plots(summary: dict, out_dir: Path) -> list[Path]:
    """Per task: bars with error bars (one bar per model and label fraction) and label-efficiency curves
    (metric vs label fraction, one line per model). PNG and SVG each; returns the written paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    for task in summary["tasks"]:
        entries = [e for e in summary["matrix"] if e["task"] == task]
        for name, draw in (("bars", _draw_bars), ("label_efficiency", _draw_efficiency)):
            fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len({e["model"] for e in entries}) + 3), 4))
            draw(ax, entries)
            ax.set_title(f"{task}: {name.replace('_', ' ')} (mean ± std over seeds)", fontsize=10)
            ax.set_ylabel(entries[0]["metric"].upper())
            ax.grid(axis="y", alpha=0.3)
            fig.tight_layout()
            for ext in ("png", "svg"):
                path = out_dir / f"{task}_{name}.{ext}"
                fig.savefig(path, dpi=120)
                paths.append(path)
            plt.close(fig)
    return paths


def _series_name(entry: dict) -> str:
    return f"{entry['model']} ({entry['setting']})" if entry["setting"] else entry["model"]


def _draw_bars(ax, entries: list[dict]) -> None:
    series = sorted({_series_name(e) for e in entries})
    fractions = sorted({e["label_fraction"] for e in entries})
    width = 0.8 / len(fractions)
    for j, fraction in enumerate(fractions):
        by_series = {_series_name(e): e for e in entries if e["label_fraction"] == fraction}
        xs = [i + (j - (len(fractions) - 1) / 2) * width for i, s in enumerate(series) if s in by_series]
        chosen = [by_series[s] for s in series if s in by_series]
        ax.bar(
            xs,
            [e["mean"] for e in chosen],
            width,
            yerr=[e["std"] for e in chosen],
            capsize=3,
            label=f"{fraction:.0%} of labels",
        )
        reported = [
            (x, e["reported_mean"])
            for x, e in zip(xs, chosen, strict=False)
            if e["reported_mean"] is not None
        ]
        if reported and fraction == max(fractions):
            ax.scatter(*zip(*reported, strict=False), marker="x", color="black", zorder=3, label="reported")
    ax.set_xticks(range(len(series)), series, rotation=20, ha="right", fontsize=8)
    ax.legend(fontsize=8)


def _draw_efficiency(ax, entries: list[dict]) -> None:
    for name in sorted({_series_name(e) for e in entries}):
        points = sorted(
            (e["label_fraction"], e["mean"], e["std"]) for e in entries if _series_name(e) == name
        )
        xs, ys, errs = zip(*points, strict=False)
        ax.errorbar(xs, ys, yerr=errs, marker="o", capsize=3, label=name)
    ax.set_xlabel("label fraction")
    ax.legend(fontsize=8)
