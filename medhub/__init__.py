"""medhub: pretrained checkpoints for medical imaging, loaded in one line as timm models.

Research software, not a medical device: never use its outputs for clinical decisions.

>>> import medhub
>>> [m.id for m in medhub.list_models("resnet50_imagenet1k*")][:2]
['resnet50_imagenet1k', 'resnet50_imagenet1k_chestxray14']

Importing medhub is cheap: torch and timm are imported only when a function needs them.
"""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# OpenMP threads that wait for work sleep instead of spinning (unless the user chose a policy): on a busy
# machine, GNU OpenMP's default spin-wait made a 2-thread training step several times slower than 1 thread
# (medhub/cpu.py, BENCHMARKS.md "contention"). Takes effect only when torch has not been imported yet.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# public name -> "module:attribute", resolved on first use
_LAZY = {
    "list_models": "medhub.api:list_models",
    "get_model": "medhub.api:get_model",
    "list_tasks": "medhub.api:list_tasks",
    "get_task": "medhub.api:get_task",
    "reported_results": "medhub.api:reported_results",
    "load": "medhub.loader:load",
    "transforms": "medhub.loader:transforms",
    "convert_checkpoint": "medhub.convert:convert_checkpoint",
    "rank": "medhub.rank:rank",
    "MedhubError": "medhub.errors:MedhubError",
}

__all__ = ["__version__", *_LAZY]

if TYPE_CHECKING:  # pragma: no cover
    from medhub.api import get_model, get_task, list_models, list_tasks, reported_results  # noqa: F401
    from medhub.errors import MedhubError  # noqa: F401


def __getattr__(name: str):
    target = _LAZY.get(name)
    if target is None:
        raise AttributeError(f"module 'medhub' has no attribute '{name}'")
    module_name, attribute = target.split(":")
    value = getattr(importlib.import_module(module_name), attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
