"""The names of timm's architectures, without importing timm (and torch) on every registry read.

The list is written once per installed timm version to ``<medhub home>/timm-models-<version>.txt`` and read
from there afterwards, so validating an overlay's ``arch`` costs a file read, not a 2-second import.
"""

from __future__ import annotations

import difflib
import functools
from importlib import metadata


@functools.lru_cache(maxsize=1)
def timm_model_names() -> frozenset[str]:
    """Every name ``timm.is_model`` accepts in the installed timm (pretrained tags stripped)."""
    from medhub.data.paths import medhub_home

    version = metadata.version("timm")
    path = medhub_home() / f"timm-models-{version}.txt"
    try:
        return frozenset(path.read_text(encoding="utf-8").split())
    except OSError:
        pass
    import timm

    names = frozenset(timm.list_models())
    try:
        from medhub._io import atomic_write_text

        atomic_write_text(path, "\n".join(sorted(names)) + "\n")
    except OSError:
        pass  # a read-only home: list them again next time
    return names


def similar_names(name: str, names: frozenset[str], limit: int = 5) -> list[str]:
    """Up to ``limit`` names close to ``name`` (difflib ratio), best first."""
    return difflib.get_close_matches(name, sorted(names), n=limit, cutoff=0.6)
