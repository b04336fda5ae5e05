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
from medhub.data.cxr import read_chexpert, read_mimic_cxr, read_nih_cxr14, read_shenzhen, read_vindr_cxr
from medhub.data.folders import read_csv_manifest, read_image_folder
from medhub.data.images import describe_rule
from medhub.data.medmnist import read_medmnist
from medhub.data.paths import cache_root, data_root, default_data_dir
from medhub.data.segmentation import read_busi, read_drive, read_jsrt_scr, read_montgomery, read_siim_acr
from medhub.data.sources import SplitData, TaskData
from medhub.errors import DataError
from medhub.schema import PixelRule

log = logging.getLogger(__name__)

READERS: dict[str, Callable[..., TaskData]] = {
    "medmnist_npz": read_medmnist,
    "image_folder": read_image_folder,
    "csv_manifest": read_csv_manifest,
    "nih_cxr14": read_nih_cxr14,
    "chexpert": read_chexpert,
    "mimic_cxr": read_mimic_cxr,
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

__all__ = ["READERS", "DataError", "PixelRule", "SplitData", "TaskData", "cache_root", "data_root",
           "default_data_dir", "load_task_data", "pixel_rule", "reader_for"]


def pixel_rule(task, pixels: PixelRule | dict | None = None) -> PixelRule:
    """The task's ``layout.pixels``, replaced by a user's PixelRule or updated by a dict of its fields.

    Raises:
        DataError: ``pixels`` names an unknown field or a value the rule does not allow.
    """
    if pixels is None:
        return task.layout.pixels
    if isinstance(pixels, PixelRule):
        return pixels
    try:
        return PixelRule(**{**task.layout.pixels.model_dump(), **pixels})
    except (TypeError, ValueError) as exc:
        reason = " ".join(str(exc).split())[:300]
        raise DataError(f"invalid pixel rule {pixels!r} ({reason}); fields: window=(center, width), "
                        "voi_function, frame, bits") from exc


def reader_for(name: str) -> Callable[..., TaskData]:
    """The reader function registered under ``name`` (a task entry's ``layout.reader``)."""
    key = READER_ALIASES.get(name, name)
    if key not in READERS:
        raise DataError(f"no data reader named '{name}'; known readers: {', '.join(sorted(READERS))}")
    return READERS[key]


def load_task_data(task, data_dir: str | Path | None = None, *, img_size: int | None = None,
                   reader: str | None = None, pixels: PixelRule | dict | None = None, **options) -> TaskData:
    """Read ``task``'s data from ``data_dir`` (default: ``<data root>/<task id>``) with its layout's reader.

    Args:
        task: a :class:`medhub.schema.Task`.
        data_dir: the folder laid out as ``task.layout`` describes; None for the default folder.
        img_size: the size training will use (MedMNIST picks the matching file).
        reader: override ``task.layout.reader`` (e.g. ``image_folder`` for your own data).
        pixels: the user's :class:`~medhub.schema.PixelRule` replacing the task's ``layout.pixels``, or
            a dict of fields updating it (e.g. ``{"window": (-600, 1500)}``); recorded in the notes (so in
            the report) and in the cache manifest.
        **options: reader options, e.g. ``uncertain="u-ones"`` for CheXpert.

    Raises:
        DataError: the folder is missing or does not match the layout; ``pixels`` is not a valid rule.
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
    rule = pixel_rule(task, pixels)
    data = read(task, folder, img_size or task.protocol.img_size, explicit, **options)
    for split in data.splits.values():
        split.pixels = rule
    if any(split.paths is not None for split in data.splits.values()):
        data.notes.append(describe_rule(rule))
    for note in data.notes:
        log.info("%s: %s", task.id, note)
    return data
