"""RSNA PE reader on synthetic Kaggle-layout series made from a real CT slice (pydicom's CT_small.dcm)."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from medhub.data import load_task_data
from medhub.data.cache import cached_split
from medhub.data.images import read_image
from medhub.errors import DataError
from medhub.registry import load_registry

COLUMNS = ["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "pe_present_on_image", "negative_exam_for_pe"]


def write_rsna_pe(root: Path, source: Path, studies: int = 10, slices: int = 3) -> list[dict]:
    """``studies`` one-series studies of ``slices`` copies of ``source`` under fresh UIDs, plus train.csv."""
    rows = []
    for s in range(studies):
        study, series = generate_uid(entropy_srcs=[f"study{s}"]), generate_uid(entropy_srcs=[f"series{s}"])
        folder = root / "train" / study / series
        folder.mkdir(parents=True)
        for k in range(slices):
            ds = pydicom.dcmread(source)
            sop = generate_uid(entropy_srcs=[f"sop{s}.{k}"])
            ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = study, series, sop
            ds.file_meta.MediaStorageSOPInstanceUID = sop
            ds.InstanceNumber = k + 1
            ds.save_as(folder / f"{sop}.dcm")
            rows.append({"StudyInstanceUID": study, "SeriesInstanceUID": series, "SOPInstanceUID": sop,
                         "pe_present_on_image": str(int(s % 2 == 0 and k > 0)), "negative_exam_for_pe": str(s % 2)})
    with open(root / "train.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return rows


@pytest.fixture
def task():
    return load_registry().get_task("rsna_pe")


@pytest.fixture
def ct_slice(shared_data) -> Path:
    return shared_data / "dicom_pydicom" / "CT_small.dcm"


def test_slices_labels_and_study_split(tmp_path, task, ct_slice):
    rows = write_rsna_pe(tmp_path, ct_slice)
    data = load_task_data(task, tmp_path)
    assert data.channels == 3 and sum(len(data.split(s)) for s in ("train", "val", "test")) == len(rows)
    label_of = {r["SOPInstanceUID"]: int(r["pe_present_on_image"]) for r in rows}
    study_of = {r["SOPInstanceUID"]: r["StudyInstanceUID"] for r in rows}
    studies = {}
    for name in ("train", "val", "test"):
        split = data.split(name)
        assert [label_of[i] for i in split.ids] == split.labels.tolist()
        studies[name] = {study_of[i] for i in split.ids}
    assert [len(studies[s]) for s in ("train", "val", "test")] == [7, 1, 2]
    assert not (studies["train"] & studies["val"] or studies["train"] & studies["test"] or
                studies["val"] & studies["test"])
    again = load_task_data(task, tmp_path)  # deterministic
    assert again.split("test").ids == data.split("test").ids


def test_three_hu_windows_as_rgb(tmp_path, task, ct_slice):
    write_rsna_pe(tmp_path, ct_slice, studies=10, slices=1)
    data = load_task_data(task, tmp_path)
    path = data.split("train").paths[0]
    rgb = read_image(path, channels=3, decoder=data.split("train").decoder)
    ds = pydicom.dcmread(ct_slice)
    hu = ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    for channel, (center, width) in enumerate(((-600, 1500), (100, 700), (40, 400))):
        expected = np.round(np.clip(((hu - (center - 0.5)) / (width - 1) + 0.5) * 255, 0, 255))  # PS3.3 C.11.2.1.2.1
        assert np.array_equal(rgb[..., channel], expected.astype(np.uint8)), channel
    assert len({rgb[..., c].tobytes() for c in range(3)}) == 3  # three different windows, not gray copies
    cached = cached_split(task.id, data.split("val"), 32, data.channels, progress=False)
    assert cached.images.shape == (1, 3, 32, 32)


def test_missing_pieces_are_named(tmp_path, task, ct_slice):
    with pytest.raises(DataError, match="missing train.csv, train;.*medhub tasks --json"):
        load_task_data(task, tmp_path)
    rows = write_rsna_pe(tmp_path, ct_slice, studies=10, slices=2)
    gone = tmp_path / "train" / rows[3]["StudyInstanceUID"] / rows[3]["SeriesInstanceUID"] / \
        f"{rows[3]['SOPInstanceUID']}.dcm"
    gone.unlink()
    with pytest.raises(DataError, match=f"1 slice.*missing.*{rows[3]['SOPInstanceUID']}.dcm"):
        load_task_data(task, tmp_path)
    shutil.rmtree(tmp_path / "train" / rows[3]["StudyInstanceUID"])  # a whole study absent: skipped
    data = load_task_data(task, tmp_path)
    assert sum(len(data.split(s)) for s in ("train", "val", "test")) == len(rows) - 2
    assert any("9 of the 10 studies" in note for note in data.notes)
    (tmp_path / "train.csv").write_text("StudyInstanceUID,SOPInstanceUID\n1,2\n")
    with pytest.raises(DataError, match="no column.*SeriesInstanceUID, pe_present_on_image"):
        load_task_data(task, tmp_path)
    shutil.rmtree(tmp_path / "train")
    (tmp_path / "train").mkdir()
    write = tmp_path / "train.csv"
    write.write_text(",".join(COLUMNS) + "\n1.2.3,1.2.4,1.2.5,0,1\n")
    with pytest.raises(DataError, match=r"none of the 1 studies.*train/1\.2\.3/"):
        load_task_data(task, tmp_path)
