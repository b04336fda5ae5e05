"""CT slice classification: RSNA STR Pulmonary Embolism Detection (Kaggle layout), one sample per slice."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from medhub.data.sources import SPLITS, SplitData, TaskData, expected_layout, patient_split
from medhub.errors import DataError

RSNA_PE_COLUMNS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "pe_present_on_image")


def _rsna_rows(task, root: Path) -> list[dict]:
    layout = expected_layout(task, "rsna_pe")
    absent = [n for n in ("train.csv", "train") if not (root / n).exists()]
    if absent:
        raise DataError(f"{root}: missing {', '.join(absent)}; expected {layout}", path=root, missing=absent)
    with open(root / "train.csv", newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        columns = list(reader.fieldnames or [])
        lacking = [c for c in RSNA_PE_COLUMNS if c not in columns]
        if lacking:
            raise DataError(f"{root / 'train.csv'}: no column(s) {', '.join(lacking)}; expected {layout}",
                            path=root / "train.csv", missing=lacking)
        rows = [{c: r[c].strip() for c in RSNA_PE_COLUMNS} for r in reader]
    if not rows:
        raise DataError(f"{root / 'train.csv'}: lists no slices", path=root / "train.csv")
    return rows


def _slice_path(root: Path, row: dict) -> Path:
    return root / "train" / row["StudyInstanceUID"] / row["SeriesInstanceUID"] / f"{row['SOPInstanceUID']}.dcm"


def read_rsna_pe(task, root: Path, img_size: int = 0, explicit: bool = True) -> TaskData:
    """RSNA PE: every slice of ``train.csv`` whose study folder is present, labelled ``pe_present_on_image``.

    Studies absent from ``train/`` are skipped (a partial download); a present study missing one of its
    listed slices is an error. Slices are decoded in Hounsfield units through three windows as RGB
    (``medhub.data.images.CT_PE_WINDOWS``, DICOM's LINEAR VOI function onto 0..255); the split is 70/10/20
    by a hash of ``StudyInstanceUID``.
    """
    rows = _rsna_rows(task, root)
    studies = sorted({r["StudyInstanceUID"] for r in rows})
    present = {s for s in studies if (root / "train" / s).is_dir()}
    if not present:
        raise DataError(f"{root / 'train'}: none of the {len(studies)} studies of train.csv is there (e.g. "
                        f"train/{studies[0]}/); expected {expected_layout(task, 'rsna_pe')}", path=root / "train",
                        missing=studies[:10])
    rows = [r for r in rows if r["StudyInstanceUID"] in present]
    paths = [_slice_path(root, r) for r in rows]
    absent = [str(p.relative_to(root)) for p in paths if not p.is_file()]
    if absent:
        raise DataError(f"{root}: {len(absent)} slice(s) listed in train.csv are missing from present studies, "
                        f"e.g. {', '.join(absent[:3])}", path=root, missing=absent)
    bad = sorted({r["pe_present_on_image"] for r in rows} - {"0", "1"})
    if bad:
        raise DataError(f"{root / 'train.csv'}: pe_present_on_image must be 0 or 1, found {', '.join(bad[:3])}",
                        path=root / "train.csv")
    labels = np.array([int(r["pe_present_on_image"]) for r in rows], dtype=np.int64)
    parts = patient_split([r["StudyInstanceUID"] for r in rows])
    splits = {name: SplitData(name, labels=labels[idx], paths=[paths[i] for i in idx],
                              ids=[rows[i]["SOPInstanceUID"] for i in idx], decoder="ct_pe_windows")
              for name in SPLITS if len(idx := parts[name])}
    notes = [f"data: {len(rows)} slices of {len(present)} of the {len(studies)} studies in train.csv",
             "split: 70/10/20 by sha256 of StudyInstanceUID (every slice of a study in one split)",
             "input: HU windows lung (-600/1500), PE (100/700), mediastinal (40/400) as RGB"]
    return TaskData(task.id, splits, tuple(task.labels), channels=3, root=root, notes=notes)
