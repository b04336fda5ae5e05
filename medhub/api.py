"""The browsing API: checkpoints, tasks and reported results from the merged registry."""

from __future__ import annotations

from medhub.registry import load_registry
from medhub.schema import Checkpoint, ReportedResult, Task


def list_models(
    pattern: str | None = None,
    *,
    arch: str | None = None,
    objective: str | None = None,
    data: str | None = None,
    task: str | None = None,
) -> list[Checkpoint]:
    """Checkpoints whose id matches ``pattern`` and every given filter (shell wildcards).

    >>> [m.id for m in list_models(objective="moco*", arch="vit")]
    ['vit_base_mocov3_imagenet1k', 'vit_small_mocov3_imagenet1k']
    """
    return load_registry().list_models(pattern, arch=arch, objective=objective, data=data, task=task)


def get_model(name: str) -> Checkpoint:
    """The registry entry for a checkpoint id or alias.

    >>> get_model("swin_base_imagenet21k_chestx").id
    'swin_base_imagenet21k_chestxray14'
    """
    return load_registry().get_model(name)


def list_tasks() -> list[Task]:
    """Every task, sorted by id."""
    return sorted(load_registry().tasks.values(), key=lambda t: t.id)


def get_task(name: str) -> Task:
    """The registry entry for a task id."""
    return load_registry().get_task(name)


def reported_results(*, model: str | None = None, task: str | None = None) -> list[ReportedResult]:
    """Published numbers, filtered by model and/or task."""
    return load_registry().results_for(model=model, task=task)
