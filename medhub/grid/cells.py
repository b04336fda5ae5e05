"""Grid expansion: models x tasks x label fractions x seeds -> cells, each one ``reproduce`` run.

>>> cells = expand_grid(["random:resnet18"], ["pneumoniamnist"], [0.5, 1.0], runs=2)
>>> [c.key for c in cells][:2]
['random:resnet18|pneumoniamnist|lf=0.5|seed=0', 'random:resnet18|pneumoniamnist|lf=0.5|seed=1']
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field

from medhub.errors import UsageError
from medhub.registry import load_registry
from medhub.schema import RANDOM_PREFIX

_WILDCARDS = re.compile(r"[*?\[]")
# reproduce() overrides that change what a cell measures, so they are part of its identity
SETTING_NAMES = ("epochs", "batch_size", "lr", "img_size", "linear_probe", "cifar_stem")


@dataclass(frozen=True)
class Cell:
    """One grid cell: a single fine-tuning run of ``model`` on ``task`` with one seed.

    Attributes:
        model: a registry id or ``random:<timm arch>``.
        task: a registry task id.
        label_fraction: share of the training labels used, in (0, 1].
        seed: the run's seed; seeds pair up across models for paired tests.
        settings: the non-default ``reproduce`` overrides (epochs, lr, ...), part of the cell's identity.
    """

    model: str
    task: str
    label_fraction: float
    seed: int
    settings: dict = field(default_factory=dict, hash=False, compare=False)

    @property
    def setting_key(self) -> str:
        """The settings as a short stable string (``epochs=1,lr=0.001``); empty when all defaults."""
        return settings_key(self.settings)

    @property
    def key(self) -> str:
        """Unique id of the cell in a results database."""
        base = f"{self.model}|{self.task}|lf={self.label_fraction:g}|seed={self.seed}"
        return f"{base}|{self.setting_key}" if self.settings else base

    def to_dict(self) -> dict:
        """Plain data, for a worker process or a Ray task."""
        return {**asdict(self), "key": self.key}

    def label(self) -> str:
        """A short human label for progress lines."""
        return f"{self.model} {self.task} lf={self.label_fraction:g} seed={self.seed}"


def settings_key(settings: dict) -> str:
    """``{"epochs": 1}`` -> ``"epochs=1"`` (sorted, stable)."""
    return ",".join(f"{k}={json.dumps(v)}" for k, v in sorted(settings.items()))


def split_list(text: str | list[str] | None) -> list[str]:
    """``"a, b,c"`` (or a list of such strings) -> ``["a", "b", "c"]``, order kept, duplicates dropped."""
    if text is None:
        return []
    parts = text if isinstance(text, list) else [text]
    items = [item.strip() for part in parts for item in part.split(",")]
    return list(dict.fromkeys(item for item in items if item))


def resolve_models(spec: str | list[str]) -> list[str]:
    """Model ids from a comma list of ids, aliases, shell patterns and ``random:<arch>`` baselines.

    Raises:
        UsageError: nothing given, or a pattern that matches no checkpoint.
        UnknownModelError: an id that the registry does not know.
    """
    names = split_list(spec)
    if not names:
        raise UsageError("no models given; pass --models ID[,ID...] or a pattern like 'resnet50_*'")
    registry = load_registry()
    models: list[str] = []
    for name in names:
        if name.startswith(RANDOM_PREFIX):
            if not name[len(RANDOM_PREFIX) :]:
                raise UsageError("'random:' needs a timm architecture, e.g. random:resnet18")
            models.append(name)
        elif _WILDCARDS.search(name):
            found = [entry.id for entry in registry.list_models(name)]
            if not found:
                raise UsageError(f"pattern '{name}' matches no checkpoint; run 'medhub list' to see the ids")
            models.extend(found)
        else:
            models.append(registry.resolve_id(name))
    return list(dict.fromkeys(models))


def resolve_tasks(spec: str | list[str]) -> list[str]:
    """Task ids from a comma list; each must be registered (raises :class:`UnknownTaskError`)."""
    tasks = split_list(spec)
    if not tasks:
        raise UsageError("no tasks given; pass --tasks TASK[,TASK...] (see 'medhub tasks')")
    registry = load_registry()
    return [registry.get_task(task).id for task in tasks]


def parse_fractions(spec: str | list[float] | None) -> list[float]:
    """``"0.1,0.25,1.0"`` -> ``[0.1, 0.25, 1.0]``; each must lie in (0, 1]."""
    if spec is None:
        return [1.0]
    values = spec if isinstance(spec, list) else split_list(spec)
    fractions: list[float] = []
    for value in values:
        try:
            fraction = float(value)
        except ValueError:
            raise UsageError(
                f"label fraction '{value}' is not a number; use e.g. --label-fractions 0.1,1.0"
            ) from None
        if not 0.0 < fraction <= 1.0:
            raise UsageError(
                f"label fraction {fraction:g} is outside (0, 1]; use e.g. 0.1 for 10% of the labels"
            )
        fractions.append(fraction)
    return list(dict.fromkeys(fractions))


def expand_grid(
    models: list[str],
    tasks: list[str],
    fractions: list[float],
    *,
    runs: int = 1,
    first_seed: int = 0,
    settings: dict | None = None,
) -> list[Cell]:
    """Every (model, task, label fraction, seed) cell; seeds are ``first_seed .. first_seed + runs - 1``.

    The same seeds are used for every model, so runs pair up across checkpoints (paired tests).
    """
    if runs < 1:
        raise UsageError(f"--runs must be at least 1, got {runs}")
    clean = {k: v for k, v in (settings or {}).items() if v is not None and v is not False}
    unknown = set(clean) - set(SETTING_NAMES)
    if unknown:
        raise UsageError(f"unknown grid setting(s) {sorted(unknown)}; known: {', '.join(SETTING_NAMES)}")
    return [
        Cell(model, task, fraction, first_seed + run, dict(clean))
        for model in models
        for task in tasks
        for fraction in fractions
        for run in range(runs)
    ]
