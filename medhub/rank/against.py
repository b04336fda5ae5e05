"""Validate a ranking against fine-tuning: Kendall's tau and weighted tau between each score and the
fine-tuned metric that ``medhub benchmark`` stored for the same task and candidates.

Per candidate the fine-tuned value is the mean over seeds of the stored test metric (AUC or ACC, as the task
defines) in one (label fraction, settings) group: the group covering the most candidates, label fraction
1.0 first on ties. Tau uses :func:`scipy.stats.kendalltau` (tau-b, ties handled) and
:func:`scipy.stats.weightedtau` (hyperbolic weights, emphasising agreement at the top; Vigna, WWW 2015).
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

MIN_POINTS = 3  # tau over fewer candidates says nothing


def finetuned(rows: list[dict], models: list[str]) -> tuple[dict[str, dict], dict]:
    """``({model: {"mean", "std", "n", "seconds"}}, group)`` from done store rows of one task."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for row in rows:
        if row["status"] == "done" and row["model"] in models and row["metric"] is not None:
            key = (row["label_fraction"], tuple(sorted(row["settings"].items())), row["metric_name"])
            groups[key].append(row)
    if not groups:
        return {}, {}
    best = max(groups, key=lambda k: (len({r["model"] for r in groups[k]}), k[0] == 1.0, k[0]))
    per_model: dict[str, list[dict]] = defaultdict(list)
    for row in groups[best]:
        per_model[row["model"]].append(row)
    values = {
        model: {"mean": float(np.mean([r["metric"] for r in cells])),
                "std": float(np.std([r["metric"] for r in cells], ddof=1)) if len(cells) > 1 else 0.0,
                "n": len(cells), "seconds": float(sum(r["seconds"] or 0.0 for r in cells))}
        for model, cells in per_model.items()
    }
    group = {"label_fraction": best[0], "settings": dict(best[1]), "metric": best[2], "groups_found": len(groups)}
    return values, group


def taus(x: list[float], y: list[float]) -> dict:
    """``{"tau", "p", "weighted_tau", "n"}`` between two equally long lists (None below MIN_POINTS)."""
    from scipy.stats import kendalltau, weightedtau

    if len(x) < MIN_POINTS:
        return {"tau": None, "p": None, "weighted_tau": None, "n": len(x)}
    tau = kendalltau(x, y)
    weighted = weightedtau(x, y)
    clean = lambda v: None if v is None or not np.isfinite(v) else float(v)  # noqa: E731
    return {"tau": clean(tau.statistic), "p": clean(tau.pvalue), "weighted_tau": clean(weighted.statistic),
            "n": len(x)}


def compare(report: dict, url: str) -> dict:
    """The ``against`` section of a rank report: fine-tuned values, per-score taus, and the plot's points.

    Raises:
        UsageError: a database that cannot be opened or holds no results (from :class:`ResultStore`).
    """
    from medhub.grid.store import ResultStore

    store = ResultStore(url, create=False)
    try:
        rows = store.rows(task=report["task"])
    finally:
        store.close()
    models = [c["model"] for c in report["candidates"]]
    values, group = finetuned(rows, models)
    section: dict = {"db": url, "group": group, "finetuned": values, "scores": {}, "points": [],
                     "missing": [m for m in models if m not in values],
                     "finetune_seconds": round(sum(v["seconds"] for v in values.values()), 1)}
    if not values:
        section["note"] = (f"no finished fine-tuning results for these candidates on {report['task']} in {url}; "
                           f"run 'medhub benchmark --models ... --tasks {report['task']} --results {url}'")
        return section
    for name in report["scores"]:
        pairs = [(c["scores"][name], values[c["model"]]["mean"]) for c in report["candidates"]
                 if c["model"] in values and c["scores"].get(name) is not None]
        section["scores"][name] = taus([p[0] for p in pairs], [p[1] for p in pairs])
    section["points"] = [{"model": c["model"], "scores": c["scores"], **values[c["model"]]}
                         for c in report["candidates"] if c["model"] in values]
    return section
