"""The verdict a reproduce report ends with: reproduced, not reproduced, not comparable, or no published number.

One rule for every recipe (classification, MedMNIST, segmentation), applied to the plan
(:func:`medhub.train.protocol.make_plan`) and the runs' test values:

* ``not comparable``: the run deviates from the published setting (an override that no published number was
  made with, a shortened schedule, ...). Each deviation is listed; no verdict on the number.
* ``no published number``: the registry has no number for exactly this (model, task, metric, setting).
* ``split unknown``: the task's published split is not known (``plan["split"]["unknown"]``, e.g. Montgomery,
  SIIM, the breast set): the number is shown for context, never judged.
* otherwise the mean over runs is compared with the published mean: ``reproduced`` when
  ``|mean - published| <= tolerance``, else ``not reproduced`` (by how much, in which direction).

Tolerance on the 0-1 scale (docs/verdict.md argues for it)::

    max(2 * published std, 2 * reproduced std / sqrt(runs), 0.01)

two published standard deviations (the spread of the paper's own runs), two standard errors of our mean
(population std over our runs, as the released code prints), and never less than one point, the rounding and
test-set noise floor of numbers printed with 2-3 decimals.
"""

from __future__ import annotations

import math
from typing import Any

REPRODUCED, NOT_REPRODUCED, NOT_COMPARABLE, NO_PUBLISHED, SPLIT_UNKNOWN = (
    "reproduced", "not reproduced", "not comparable", "no published number", "split unknown")
VERDICTS = (REPRODUCED, NOT_REPRODUCED, NOT_COMPARABLE, NO_PUBLISHED, SPLIT_UNKNOWN)
MIN_TOLERANCE = 0.01


def tolerance(published_std: float | None, reproduced_std: float, runs: int) -> float:
    """``max(2 * published std, 2 * reproduced std / sqrt(runs), 0.01)`` (0-1 scale; an unknown std counts 0)."""
    if runs < 1:
        raise ValueError("tolerance needs at least one run")
    return max(2.0 * (published_std or 0.0), 2.0 * reproduced_std / math.sqrt(runs), MIN_TOLERANCE)


def verdict(plan: dict[str, Any], mean: float, std: float, runs: int) -> dict[str, Any]:
    """``{"verdict", "verdict_reasons", "tolerance", "difference"}`` for ``runs`` values of mean ``mean``.

    Args:
        plan: ``Plan.as_dict()`` (reads ``published``, ``deviations``, ``reference``, ``metric``,
            ``protocol_partly_unknown``).
        mean, std: mean and population std of the runs' test metric (0-1 scale).
        runs: number of runs.
    """
    published = plan.get("published")
    deviations = list(plan.get("deviations") or [])
    unknown = [f"protocol partly unknown: {item}" for item in plan.get("protocol_partly_unknown") or []]
    metric = str(plan.get("metric", "metric")).upper()
    if isinstance(mean, float) and math.isnan(mean):
        return {"verdict": NOT_COMPARABLE, "verdict_reasons": ["the test metric is undefined (NaN)"] + unknown,
                "tolerance": None, "difference": None}
    if deviations:
        reference = published or plan.get("reference")
        context = []
        if reference is not None:
            context = [f"for context only: published {metric} {reference['mean']:.4f}, this run "
                       f"{mean - reference['mean']:+.4f} from it"]
        return {"verdict": NOT_COMPARABLE, "verdict_reasons": deviations + context + unknown, "tolerance": None,
                "difference": None if reference is None else mean - reference["mean"]}
    if published is None:
        setting = ", ".join(f"{k}={v}" for k, v in (plan.get("setting") or {}).items())
        return {"verdict": NO_PUBLISHED,
                "verdict_reasons": [f"no published {metric} in the registry for {plan.get('model')} on "
                                    f"{plan.get('task')} with {setting}"] + unknown,
                "tolerance": None, "difference": None}
    split_unknown = (plan.get("split") or {}).get("unknown")
    if split_unknown:
        return {"verdict": SPLIT_UNKNOWN,
                "verdict_reasons": [f"the published split is not known ({split_unknown}): the test set may differ "
                                    "from the paper's",
                                    f"for context only: published {metric} {published['mean']:.4f}, this run "
                                    f"{mean - published['mean']:+.4f} from it"] + unknown,
                "tolerance": None, "difference": mean - published["mean"]}
    tol = tolerance(published.get("std"), std, runs)
    difference = mean - published["mean"]
    if abs(difference) <= tol:
        reasons = [f"mean {metric} {mean:.4f} is {abs(difference):.4f} {_side(difference)} the published "
                   f"{published['mean']:.4f}, within the tolerance {tol:.4f}"]
        outcome = REPRODUCED
    else:
        reasons = [f"mean {metric} {mean:.4f} is {abs(difference):.4f} {_side(difference)} the published "
                   f"{published['mean']:.4f}, outside the tolerance {tol:.4f} by {abs(difference) - tol:.4f}"]
        outcome = NOT_REPRODUCED
    if runs < 3:
        reasons.append(f"{runs} run(s): the run-to-run spread is not measured (use --runs 3 or more)")
    return {"verdict": outcome, "verdict_reasons": reasons + unknown, "tolerance": tol, "difference": difference}


def _side(difference: float) -> str:
    return "above" if difference > 0 else "below" if difference < 0 else "at"
