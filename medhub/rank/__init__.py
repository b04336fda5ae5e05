"""``medhub rank``: which checkpoint should I start from for my data? Ranked from frozen features, in minutes.

The flow::

    candidates (ids, patterns, hf-hub:, folders, files with arch, random:) ─► stratified sample of the task's
    training split ─► per candidate: cached or extracted features ─► scores (LogME by default) ─► ranked
    table, bar plot, rank.json ─► optionally compared with fine-tuned results (``against``: Kendall's tau)

A candidate that fails (unknown id, weights that cannot be loaded, a file without ``arch``) is listed with a
one-line reason while the others still rank. Research software, not a medical device.

>>> report = rank("pneumoniamnist", ["random:resnet18", "random:test_resnet"], n_images=200)  # doctest: +SKIP
>>> [c["model"] for c in report["candidates"]]  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import math
import os
import re
import sys
import time
import types
from pathlib import Path
from typing import Any

import numpy as np

from medhub._io import atomic_write_text
from medhub.errors import MedhubError, UsageError

log = logging.getLogger(__name__)
DEFAULT_N_IMAGES = 1000
_WILDCARDS = re.compile(r"[*?\[]")


def resolve_candidates(spec: str | list[str]) -> tuple[list[str], list[dict]]:
    """``(candidates, failures)`` from a comma list: ids, aliases, patterns, ``random:``, ``hf-hub:``, paths.

    A pattern matching nothing or an unknown id becomes a failure entry ``{"model", "error"}``, so the rest
    still rank. Raises :class:`UsageError` when nothing at all is given.
    """
    from medhub.grid.cells import split_list
    from medhub.loader import HF_PREFIX
    from medhub.registry import load_registry
    from medhub.schema import RANDOM_PREFIX

    names = split_list(spec)
    if not names:
        raise UsageError("no candidates given; pass --models ID[,ID...], a pattern like 'resnet50_*', a folder, "
                         "or random:<arch>")
    registry = load_registry()
    candidates: list[str] = []
    failures: list[dict] = []
    for name in names:
        if name.startswith((RANDOM_PREFIX, HF_PREFIX)) or Path(name).expanduser().exists():
            if name == RANDOM_PREFIX:
                failures.append({"model": name, "error": "'random:' needs a timm architecture, e.g. random:resnet18"})
            else:
                candidates.append(name)
        elif _WILDCARDS.search(name):
            found = [entry.id for entry in registry.list_models(name)]
            if not found:
                failures.append({"model": name, "error": f"pattern '{name}' matches no checkpoint; see 'medhub list'"})
            candidates.extend(found)
        else:
            try:
                candidates.append(registry.resolve_id(name))
            except MedhubError as exc:
                failures.append({"model": name, "error": str(exc)})
    return list(dict.fromkeys(candidates)), failures


def _sample(task, data_dir, n_images: int, img_size: int | None, seed: int, progress):
    """``(cached split of the sample, plan, data fingerprint, class counts)`` for the task's training split."""
    from medhub.data import load_task_data
    from medhub.data.cache import cached_split
    from medhub.rank.features import stratified_sample
    from medhub.rank.scores import check_labels
    from medhub.train.protocol import make_plan

    if n_images < 2:
        raise UsageError(f"--n-images must be at least 2, got {n_images}")
    plan = make_plan(task, img_size=img_size)
    data = load_task_data(task, data_dir, img_size=plan.img_size)
    train = data.split("train")
    index = stratified_sample(train.labels, n_images, seed)
    subset = train.subset(index)
    subset.name = f"train-rank{len(index)}-seed{seed}"
    check_labels(subset.labels, task.type)
    cached = cached_split(task.id, subset, plan.cache_size, data.channels, progress=progress)
    labels = np.asarray(subset.labels)
    if labels.ndim == 1:
        values, counts = np.unique(labels, return_counts=True)
        names = list(task.labels)
        classes = {(names[int(v)] if int(v) < len(names) else str(v)): int(c) for v, c in zip(values, counts, strict=True)}
    else:
        classes = {name: int(c) for name, c in zip(task.labels, (labels >= 0.5).sum(axis=0), strict=False)}
    return cached, plan, subset.fingerprint(), classes, data


def _check_inputs(*, arch: str | None, out: str | os.PathLike | None, against: str | None) -> None:
    """Refuse, before features are extracted, an unknown --arch, an --out that cannot be a folder and an
    --against database that cannot be opened."""
    from medhub._io import check_output_dir

    if arch:
        from medhub.build import architecture_spec

        architecture_spec(arch)
    if out is not None:
        check_output_dir(out, "--out")
    if against:
        from medhub.grid.store import ResultStore

        ResultStore(against, create=False).close()


def rank(task: str, models: str | list[str], *, data_dir: str | os.PathLike | None = None,
         n_images: int = DEFAULT_N_IMAGES, scores: str | list[str] | None = None, arch: str | None = None,
         img_size: int | None = None, device: str = "auto", batch_size: int | None = None, seed: int = 0,
         out: str | os.PathLike | None = None, against: str | None = None, refresh: bool = False,
         progress: bool | str = False) -> dict[str, Any]:
    """Rank candidate checkpoints for ``task`` by transferability scores of their frozen features.

    Args:
        task: a task id of the registry (``medhub tasks``); classification tasks only.
        models: comma list or list of registry ids, aliases, patterns, ``hf-hub:`` repos, folders, files
            (with ``arch``) and ``random:<arch>`` baselines.
        data_dir: the task's data folder (default as for ``medhub reproduce``).
        n_images: size of the stratified sample of the training split (all of it when smaller).
        scores: names from :data:`medhub.rank.scores.SCORES`; the first orders the table (default LogME).
        arch: timm architecture for bare checkpoint files.
        img_size: input size (default: the task protocol's, i.e. what fine-tuning uses).
        device: ``auto``, ``cpu`` or ``cuda`` (batches of 256 on a GPU, 64 on a CPU unless ``batch_size``).
        seed: seed of the sample.
        out: folder for ``rank.json`` and ``rank.png`` (and ``against.png``); None writes nothing.
        against: a ``medhub benchmark`` results database URL: adds Kendall's tau and weighted tau per score.
        refresh: recompute features even when cached.
        progress: decode-cache progress output (see :mod:`medhub.data.progress`).

    Returns:
        The report: ``task``, ``scores``, ``candidates`` (ranked: model, rank, scores, unavailable, dim,
        seconds, feature_seconds, cached), ``failures`` (model, error), ``sample``, ``against`` (or None),
        ``files``.

    Raises:
        UsageError: no candidates, unknown scores, one class in the sample, a non-classification task.
        UnknownTaskError, DataError: the task or its data.
    """

    from medhub.rank import scores as score_lib
    from medhub.rank.features import candidate_features
    from medhub.registry import load_registry
    from medhub.reproduce import pick_device

    started = time.perf_counter()
    entry = load_registry().get_task(task)
    names = score_lib.parse_scores(scores)
    if entry.type not in score_lib.TASK_TYPES:
        raise UsageError(f"ranking needs a classification task; '{entry.id}' is {entry.type}")
    candidates, failures = resolve_candidates(models)
    if not candidates:  # nothing to rank: refused before any data is read
        raise UsageError(f"no candidate to rank: {failures[0]['model']}: {failures[0]['error']}" if failures
                         else "no candidate to rank; pass --models ID[,ID...]")
    _check_inputs(arch=arch, out=out, against=against)
    torch_device = pick_device(device)
    batch = batch_size or (256 if torch_device.type == "cuda" else 64)
    cached, plan, fingerprint, classes, data = _sample(entry, data_dir, n_images, img_size, seed, progress)
    labels = np.asarray(cached.labels)
    images = np.asarray(cached.images)
    rows: list[dict] = []
    for model in candidates:
        t0 = time.perf_counter()
        try:
            feats = candidate_features(model, arch=arch, images=images, channels=data.channels,
                                       data_fingerprint=fingerprint, plan=plan, device=torch_device,
                                       batch_size=batch, refresh=refresh)
        except Exception as exc:  # one candidate failing never stops the others
            log.debug("candidate %s failed", model, exc_info=True)
            failures.append({"model": model, "error": _one_line(exc)})
            continue
        row = score_candidate(model, feats, names, labels, entry.type)
        row["seconds"] = round(time.perf_counter() - t0, 3)
        rows.append(row)
    primary = names[0]
    rows.sort(key=lambda r: (r["scores"][primary] is None, -(r["scores"][primary] or 0.0)))
    for position, row in enumerate(rows, 1):
        row["rank"] = position if row["scores"][primary] is not None else None
    report: dict[str, Any] = {
        "task": entry.id, "task_type": entry.type, "metric_hint": "higher score = expected to transfer better",
        "scores": names, "primary": primary, "handling": {n: score_lib.HANDLING[n] for n in names},
        "sample": {"n_images": len(labels), "seed": seed, "split": "train", "classes": classes,
                   "img_size": plan.img_size, "data_root": str(data.root) if data.root else None},
        "candidates": rows, "failures": failures, "against": None, "files": [],
        "seconds": None, "device": str(torch_device),
        "disclaimer": "Research software, not a medical device: never use it for clinical decisions.",
    }
    if against:
        from medhub.rank.against import compare

        report["against"] = compare(report, against)
    report["seconds"] = round(time.perf_counter() - started, 3)
    if out is not None:
        report["files"] = write_outputs(report, Path(out))
    return report


def score_candidate(model: str, feats, names: list[str], labels: np.ndarray, task_type: str) -> dict[str, Any]:
    """One table row: each score of ``feats`` (:class:`medhub.rank.features.Features`) on ``labels``; a score
    that does not apply, or is not finite, is None with its reason under ``unavailable``."""
    from threadpoolctl import threadpool_limits

    from medhub.rank import scores as score_lib

    row: dict[str, Any] = {"model": model, "scores": {}, "unavailable": {}, "score_seconds": {}, "dim": feats.dim,
                           "feature_seconds": round(feats.seconds, 3), "cached": feats.cached,
                           "has_head": feats.logits is not None}
    for name in names:
        started = time.perf_counter()
        try:
            with threadpool_limits(limits=1, user_api="blas"):  # small matrices: one BLAS thread is fastest
                value = score_lib.compute(name, feats.features, labels, task_type, feats.logits)
            row["scores"][name] = value if math.isfinite(value) else None
            if not math.isfinite(value):
                row["unavailable"][name] = "not finite on these features"
        except score_lib.ScoreUnavailable as exc:
            row["scores"][name] = None
            row["unavailable"][name] = str(exc)
        row["score_seconds"][name] = round(time.perf_counter() - started, 4)
    return row


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    message = text[0] if text else ""
    return message if isinstance(exc, MedhubError) else f"{type(exc).__name__}: {message}"[:500]


def write_outputs(report: dict, out: Path) -> list[str]:
    """``rank.json``, ``rank.png`` (bar plot of each score) and, with ``against``, ``against.png``."""
    import json

    from medhub.rank.plots import plot_against, plot_scores

    out.mkdir(parents=True, exist_ok=True)
    files = []
    if report["candidates"]:
        plot_scores(report, out / "rank.png")
        files.append(str(out / "rank.png"))
    if report.get("against") and report["against"].get("points"):
        plot_against(report, out / "against.png")
        if (out / "against.png").is_file():
            files.append(str(out / "against.png"))
    files.append(str(out / "rank.json"))
    atomic_write_text(out / "rank.json", json.dumps({**report, "files": files}, indent=1, default=str))
    return files


class _CallableModule(types.ModuleType):
    """Makes ``medhub.rank(...)`` call :func:`rank` even when ``medhub.rank`` is this package (imported first)."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return rank(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
