"""Stored cells -> the model x task matrix, significance against a baseline, published comparisons, plots.

Statistics follow the benchmark lab's reporting:

* std over seeds is the **population** std (``np.std``, as BenchmarkTransferLearning Version2/engine.py:155
  prints it);
* every model is compared with the baseline within each (task, label fraction, setting) by the **independent
  two-sample t-test** with equal variances (``scipy.stats.ttest_ind``'s default; "we conducted the independent
  two sample t-test", jlianglab/BenchmarkTransformers README.md:40), two-sided, raw p-values (no correction for
  multiple comparisons), marked with the figures' legend: n.s. (p >= 0.05), * (p < 0.05), ** (p < 0.01),
  *** (p < 0.0001);
* the registry's published comparisons (``comparisons:``, e.g. MedIA's ConvNeXt - Swin deltas) are checked
  against the grid's own difference and test where both checkpoints ran.

>>> summarize([])["matrix"]
[]
>>> level(0.03), level(0.002), level(0.00001), level(0.2)
('*', '**', '***', 'n.s.')
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
METHOD = ("independent two-sample t-test, equal variances, two-sided (scipy.stats.ttest_ind), as the benchmark "
          "lab reports; marks: n.s. p>=0.05, * p<0.05, ** p<0.01, *** p<0.0001")
LEVELS = ((1e-4, "***"), (0.01, "**"), (0.05, "*"))


def level(p: float | None) -> str | None:
    """The figure legend's mark for ``p``: ``***`` (< 0.0001), ``**`` (< 0.01), ``*`` (< 0.05), else ``n.s.``."""
    if p is None:
        return None
    return next((mark for bound, mark in LEVELS if p < bound), "n.s.")
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
        "std": statistics.pstdev(values),  # population std, as the released code's np.std
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
    """Test one model's per-seed values against the baseline's (``{seed: metric}`` each).

    Independent two-sample t-test with equal variances (``scipy.stats.ttest_ind``), every run of each side,
    seeds need not pair up; ``mark`` is the figure legend's level. Fewer than two runs on a side: no test.
    """
    return compare_many([(values, base)])[0]


def compare_many(pairs: list[tuple[dict[int, float], dict[int, float]]]) -> list[dict]:
    """:func:`compare` for many (values, base) pairs at once, in order.

    Pairs with the same run counts go to one vectorised ``scipy.stats.ttest_ind(..., axis=1)`` call (the same
    statistic and p-value as one call per pair): a 5,000-cell grid has ~1,000 comparisons.
    """
    import numpy as np
    from scipy import stats

    out: list[dict | None] = [None] * len(pairs)
    by_size: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, (values, base) in enumerate(pairs):
        n = (len(values), len(base))
        diff = statistics.fmean(values.values()) - statistics.fmean(base.values())
        out[i] = {"test": "none (fewer than 2 runs)", "n": n, "difference": diff, "t": None, "p": None,
                  "mark": None, "significant": False}
        if min(n) >= 2:
            by_size[n].append(i)
    for indices in by_size.values():
        ours = np.array([list(pairs[i][0].values()) for i in indices], dtype=float)
        theirs = np.array([list(pairs[i][1].values()) for i in indices], dtype=float)
        res = stats.ttest_ind(ours, theirs, axis=1)
        for i, t, p in zip(indices, np.atleast_1d(res.statistic), np.atleast_1d(res.pvalue), strict=True):
            t, p, test = float(t), float(p), "independent t-test"
            if math.isnan(p):  # identical values on both sides: no variance to test against
                t, p, test = None, None, f"{test} (no variance)"
            out[i].update({"test": test, "t": t, "p": p, "mark": level(p), "significant": p is not None and p < ALPHA})
    return out


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
    compared = [(entry, bases.get((entry["task"], entry["label_fraction"], entry["setting"]))) for entry in matrix]
    compared = [(entry, base) for entry, base in compared if entry["model"] != baseline and base is not None]
    results = compare_many([(dict(zip(entry["seeds"], entry["values"], strict=False)),
                             dict(zip(base["seeds"], base["values"], strict=False))) for entry, base in compared])
    for (entry, _), result in zip(compared, results, strict=True):
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


def check_published(matrix: list[dict], comparisons=None) -> list[dict]:
    """The registry's published comparisons whose two checkpoints both ran in the grid, with the grid's own.

    Matched on (model, baseline, task, label fraction); the grid's difference and independent t-test beside
    the published delta / p-value / mark. ``agrees`` is True when the published delta's sign (if printed) and
    mark (if printed) are both reproduced, None when the grid has too few runs to test.
    """
    if comparisons is None:
        from medhub.registry import load_registry

        comparisons = load_registry().comparisons
    entries = {(e["model"], e["task"], e["label_fraction"]): e for e in matrix}
    out = []
    for published in comparisons:
        fraction = float(published.setting.get("label_fraction", 1.0))
        ours, theirs = entries.get((published.model, published.task, fraction)), entries.get(
            (published.baseline, published.task, fraction))
        if ours is None or theirs is None:
            continue
        result = compare(dict(zip(ours["seeds"], ours["values"], strict=False)),
                         dict(zip(theirs["seeds"], theirs["values"], strict=False)))
        checks = []
        if published.delta is not None and published.delta != 0:
            checks.append(math.copysign(1, result["difference"]) == math.copysign(1, published.delta))
        mark = published.significance or level(published.p_value)
        if mark is not None:
            checks.append(None if result["mark"] is None else result["mark"] == mark)
        out.append({"model": published.model, "baseline": published.baseline, "task": published.task,
                    "label_fraction": fraction, "published_delta": published.delta, "published_p": published.p_value,
                    "published_mark": mark, "difference": result["difference"], "p": result["p"],
                    "mark": result["mark"], "n": result["n"], "source": published.source,
                    "agrees": None if None in checks else all(checks)})
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
        "published_comparisons": check_published(matrix),
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
