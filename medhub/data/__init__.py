"""Task data: readers for each documented layout, a decode-once cache, and loaders over cached arrays.

>>> from medhub.registry import load_registry
>>> from medhub.data import load_task_data
>>> data = load_task_data(load_registry().get_task("pneumoniamnist"))   # embedded copy when nothing local
>>> len(data.split("train"))
4708

Each reader checks the folder against the layout its task entry documents and raises
:class:`~medhub.errors.DataError` naming what is missing or malformed.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from pathlib import Path

from medhub.data.ct import read_rsna_pe
from medhub.data.cxr import read_chexpert, read_nih_cxr14, read_shenzhen, read_vindr_cxr
from medhub.data.folders import read_csv_manifest, read_image_folder
from medhub.data.medmnist import read_medmnist
from medhub.data.paths import cache_root, data_root, default_data_dir
from medhub.data.segmentation import read_busi, read_drive, read_jsrt_scr, read_montgomery, read_siim_acr
from medhub.data.sources import SplitData, TaskData
from medhub.errors import DataError

log = logging.getLogger(__name__)

READERS: dict[str, Callable[..., TaskData]] = {
    "medmnist_npz": read_medmnist,
    "image_folder": read_image_folder,
    "csv_manifest": read_csv_manifest,
    "nih_cxr14": read_nih_cxr14,
    "chexpert": read_chexpert,
    "vindr_cxr": read_vindr_cxr,
    "shenzhen": read_shenzhen,
    "montgomery": read_montgomery,
    "siim_acr": read_siim_acr,
    "drive": read_drive,
    "jsrt_scr": read_jsrt_scr,
    "busi": read_busi,
    "rsna_pe": read_rsna_pe,
}
READER_ALIASES = {"medmnist": "medmnist_npz", "chestxray14": "nih_cxr14", "class_folders": "image_folder",
                  "folders": "image_folder", "manifest": "csv_manifest", "csv": "csv_manifest",
                  "siim": "siim_acr", "vindr": "vindr_cxr", "vindrcxr": "vindr_cxr", "chexpert_csv": "chexpert", "jsrt": "jsrt_scr", "scr": "jsrt_scr", "usbreast": "busi"}

__all__ = ["READERS", "DataError", "SplitData", "TaskData", "cache_root", "data_root", "default_data_dir",
           "load_task_data", "reader_for"]


def reader_for(name: str) -> Callable[..., TaskData]:
    """The reader function registered under ``name`` (a task entry's ``layout.reader``)."""
    key = READER_ALIASES.get(name, name)
    if key not in READERS:
        raise DataError(f"no data reader named '{name}'; known readers: {', '.join(sorted(READERS))}")
    return READERS[key]


def load_task_data(task, data_dir: str | Path | None = None, *, img_size: int | None = None,
                   reader: str | None = None, **options) -> TaskData:
    """Read ``task``'s data from ``data_dir`` (default: ``<data root>/<task id>``) with its layout's reader.

    Args:
        task: a :class:`medhub.schema.Task`.
        data_dir: the folder laid out as ``task.layout`` describes; None for the default folder.
        img_size: the size training will use (MedMNIST picks the matching file).
        reader: override ``task.layout.reader`` (e.g. ``image_folder`` for your own data).
        **options: reader options, e.g. ``uncertain="u-ones"`` for CheXpert.
    """
    explicit = data_dir is not None
    folder = Path(data_dir).expanduser() if explicit else default_data_dir(task.id)
    read = reader_for(reader or task.layout.reader)
    if explicit and folder.exists() and not folder.is_dir():
        raise DataError(f"--data-dir {folder} is a file; pass the task's data folder (laid out as 'medhub tasks' "
                        "documents)", path=folder)
    if read is not read_medmnist and not folder.exists():
        hint = f"; get it from {task.layout.download}" if task.layout.download else ""
        raise DataError(
            f"{folder}: data folder not found for task '{task.id}' (expected: {task.layout.description}){hint}; "
            "pass --data-dir or put the data there",
            path=folder,
        )
    accepted = inspect.signature(read).parameters
    unknown = [k for k in options if k not in accepted]
    if unknown:
        raise DataError(f"reader '{task.layout.reader}' takes no option(s) {', '.join(unknown)}")
    data = read(task, folder, img_size or task.protocol.img_size, explicit, **options)
    for note in data.notes:
        log.info("%s: %s", task.id, note)
    return data
