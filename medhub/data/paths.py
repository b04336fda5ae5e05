"""Where data and decoded caches live.

* data root: ``$MEDHUB_DATA`` if set, else ``$MEDHUB_HOME/data`` (``~/.cache/medhub/data``); a task's
  default ``--data-dir`` is ``<data root>/<task id>``.
* decoded-array cache: ``$MEDHUB_HOME/arrays`` (``~/.cache/medhub/arrays``).
"""

from __future__ import annotations

import os
from pathlib import Path


def medhub_home() -> Path:
    """medhub's cache folder: ``$MEDHUB_HOME``, else ``$XDG_CACHE_HOME/medhub``, else ``~/.cache/medhub``."""
    if os.environ.get("MEDHUB_HOME"):
        return Path(os.environ["MEDHUB_HOME"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "medhub"


def data_root() -> Path:
    """Folder holding one sub-folder per task: ``$MEDHUB_DATA`` or ``<medhub home>/data``."""
    return Path(os.environ["MEDHUB_DATA"]) if os.environ.get("MEDHUB_DATA") else medhub_home() / "data"


def default_data_dir(task_id: str) -> Path:
    """The folder ``reproduce`` reads a task from when no ``--data-dir`` is given."""
    return data_root() / task_id


def cache_root() -> Path:
    """Folder of decoded, resized uint8 arrays (safe to delete; rebuilt on demand)."""
    return medhub_home() / "arrays"
