"""The official layouts of CheXpert, VinDr-CXR (DICOM), Shenzhen, SIIM-ACR, DRIVE and JSRT/SCR, built from real images."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

from medhub.data import load_task_data
from medhub.data.cache import cached_split
from medhub.errors import DataError
from medhub.registry import load_registry


@pytest.fixture
def pngs(shared_data):
    return sorted((shared_data / "nih_cxr14_1000_64px" / "NIH1000").glob("*/*/*.png"))[::25]  # 40 real X-rays


def task(task_id: str, **update):
    entry = load_registry().get_task(task_id)
    return entry.model_copy(update=update) if update else entry


def test_chexpert_uncertain_policies(tmp_path, pngs):
    root = tmp_path / "CheXpert-v1.0-small"
    labels = task("chexpert").labels
    header = "Path,Sex,Age,Frontal/Lateral,AP/PA," + ",".join(labels)
    for csv_name, split, items in (("train.csv", "train", pngs[:30]), ("valid.csv", "valid", pngs[30:])):
        rows = [header]
        for i, png in enumerate(items):
            rel = f"CheXpert-v1.0-small/{split}/patient{i:05d}/study1/view1_frontal.jpg"
            (tmp_path / rel).parent.mkdir(parents=True)
            Image.open(png).convert("L").save(tmp_path / rel)
            values = ["-1" if split == "train" else "1", "", "1", "0", "-1.0" if split == "train" else "0"]
            rows.append(f"{rel},Male,50,Frontal,PA," + ",".join(values))
        (root / csv_name).write_text("\n".join(rows) + "\n")
    ones = load_task_data(task("chexpert"), root, uncertain="u-ones")
    zeros = load_task_data(task("chexpert"), root, uncertain="u-zeros")
    lsr = load_task_data(task("chexpert"), root)
    assert len(ones.split("test")) == 10 and len(ones.split("train")) + len(ones.split("val")) == 30
    assert set(np.unique(ones.split("train").labels[:, 0])) == {1.0}
    assert set(np.unique(zeros.split("train").labels[:, 0])) == {0.0}
    soft = lsr.split("train").labels[:, 0]
    assert soft.min() >= 0.55 and soft.max() <= 0.85
    assert np.array_equal(lsr.split("train").labels[:, 1], np.zeros(len(soft)))  # blank -> 0
    with pytest.raises(DataError, match="unknown uncertain-label policy"):
        load_task_data(task("chexpert"), root, uncertain="maybe")
    (root / "valid.csv").unlink()
    with pytest.raises(DataError, match="missing valid.csv"):
        load_task_data(task("chexpert"), root)


def test_vindr_dicom_layout_majority_vote(tmp_path, shared_data):
    labels = task("vindrcxr").labels
    (tmp_path / "train").mkdir()
    (tmp_path / "test").mkdir()
    dicoms = ["CT_small", "MR_small", "MR_small_implicit", "MR_small_bigendian", "MR_small_RLE"]
    train_rows, test_rows = ["image_id,rad_id," + ",".join(labels)], ["image_id," + ",".join(labels)]
    for i, name in enumerate(dicoms):
        split = "test" if i == 4 else "train"
        shutil.copy(shared_data / "dicom_pydicom" / f"{name}.dcm", tmp_path / split / f"img{i}.dicom")
        if split == "train":
            for rad, vote in (("R1", 1), ("R2", 1), ("R3", 0)):
                train_rows.append(f"img{i},{rad}," + ",".join(str(vote if j == 0 else 0) for j in range(len(labels))))
        else:
            test_rows.append(f"img{i}," + ",".join("1" if j == 1 else "0" for j in range(len(labels))))
    (tmp_path / "image_labels_train.csv").write_text("\n".join(train_rows) + "\n")
    (tmp_path / "image_labels_test.csv").write_text("\n".join(test_rows) + "\n")
    data = load_task_data(task("vindrcxr"), tmp_path)
    train = np.concatenate([data.split("train").labels, data.split("val").labels])
    assert train[:, 0].tolist() == [1.0] * 4 and data.split("test").labels[0, 1] == 1.0
    cached = cached_split("vindrcxr", data.split("train"), 32, 1, progress=False)
    assert cached.images.shape[1:] == (1, 32, 32) and int(np.asarray(cached.images).max()) == 255


def test_shenzhen_label_from_file_name(tmp_path, pngs):
    (tmp_path / "CXR_png").mkdir()
    for i, png in enumerate(pngs):
        shutil.copy(png, tmp_path / "CXR_png" / f"CHNCXR_{i:04d}_{i % 2}.png")
    data = load_task_data(task("shenzhen"), tmp_path)
    assert sum(len(s) for s in data.splits.values()) == 40
    for split in data.splits.values():
        assert [int(n.split("_")[2][0]) for n in split.ids] == split.labels.tolist()


def _masks_from(png, path):
    gray = np.asarray(Image.open(png).convert("L"))
    Image.fromarray(((gray > 128) * 255).astype(np.uint8)).save(path)


def test_siim_drive_jsrt_pair_images_and_masks(tmp_path, pngs):
    siim = tmp_path / "siim"
    for sub in ("png_images", "png_masks"):
        (siim / sub).mkdir(parents=True)
    for i, png in enumerate(pngs[:10]):
        shutil.copy(png, siim / "png_images" / f"{i}_train_0_.png")
        _masks_from(png, siim / "png_masks" / f"{i}_train_0_.png")
    data = load_task_data(task("siim_pneumothorax"), siim)
    assert data.segmentation and sum(len(s) for s in data.splits.values()) == 10
    (siim / "png_masks" / "3_train_0_.png").unlink()
    with pytest.raises(DataError, match="1 image\\(s\\) without a mask, e.g. 3_train_0_.png"):
        load_task_data(task("siim_pneumothorax"), siim)

    drive = tmp_path / "drive"
    for split, first in (("training", 21), ("test", 1)):
        for sub in ("images", "1st_manual"):
            (drive / split / sub).mkdir(parents=True)
        for i, png in enumerate(pngs[:5]):
            n = first + i
            Image.open(png).convert("RGB").save(drive / split / "images" / f"{n:02d}_{split}.tif")
            _masks_from(png, drive / split / "1st_manual" / f"{n:02d}_manual1.gif")
    data = load_task_data(task("drive_vessels"), drive)
    assert data.channels == 3 and len(data.split("test")) == 5
    cached = cached_split("drive_vessels", data.split("test"), 48, 3, progress=False)
    assert cached.images.shape == (5, 3, 48, 48) and set(np.unique(cached.masks)) <= {0, 1}

    jsrt = tmp_path / "jsrt"
    (jsrt / "images").mkdir(parents=True)
    (jsrt / "masks" / "heart").mkdir(parents=True)
    for i, png in enumerate(pngs[:6]):
        shutil.copy(png, jsrt / "images" / f"JPCLN{i:03d}.png")
        _masks_from(png, jsrt / "masks" / "heart" / f"JPCLN{i:03d}.gif")
    data = load_task_data(task("scr_heart"), jsrt)
    assert sum(len(s) for s in data.splits.values()) == 6


def test_busi_layout_for_usbreast(tmp_path, pngs):
    for i, png in enumerate(pngs[:9]):
        folder = tmp_path / ("benign" if i % 2 else "malignant")
        folder.mkdir(exist_ok=True)
        shutil.copy(png, folder / f"case ({i}).png")
        _masks_from(png, folder / f"case ({i})_mask.png")
    _masks_from(pngs[0], tmp_path / "malignant" / "case (0)_mask_1.png")
    data = load_task_data(task("usbreast"), tmp_path)
    assert data.segmentation and sum(len(s) for s in data.splits.values()) == 9
    groups = [g for s in data.splits.values() for g in s.masks]
    assert sorted(len(g) for g in groups) == [1] * 8 + [2]  # the extra mask is merged
    (tmp_path / "benign" / "case (1)_mask.png").unlink()
    with pytest.raises(DataError, match=r"1 image\(s\) without a mask, e.g. case \(1\).png"):
        load_task_data(task("usbreast"), tmp_path)


# The first lines of the benchmark's shipped lists, verbatim (BenchmarkTransferLearning@5656fec Version2/dataset/):
# ShenzenCXR_train_data.txt starts "CHNCXR_0402_1.png,1", Xray14_train_official.txt "00000001_000.png 0 1 0 ...".
SHENZHEN_LISTS = {"train": ["CHNCXR_0402_1.png,1", "CHNCXR_0374_1.png,1", "CHNCXR_0592_1.png,1",
                            "CHNCXR_0001_0.png,0", "CHNCXR_0002_0.png,0"],
                  "valid": ["CHNCXR_0003_0.png,0", "CHNCXR_0400_1.png,1"],
                  "test": ["CHNCXR_0004_0.png,0", "CHNCXR_0401_1.png,1", "CHNCXR_0005_0.png,0"]}


def test_shenzhen_reads_the_published_comma_separated_lists(tmp_path, pngs):
    (tmp_path / "CXR_png").mkdir()
    names = [line.split(",")[0] for lines in SHENZHEN_LISTS.values() for line in lines]
    for png, name in zip(pngs, names + ["CHNCXR_0600_1.png"]):  # one image in no list
        shutil.copy(png, tmp_path / "CXR_png" / name)
    for split, lines in SHENZHEN_LISTS.items():
        (tmp_path / f"ShenzenCXR_{split}_data.txt").write_text("\n".join(lines) + "\n")
    data = load_task_data(task("shenzhen"), tmp_path)
    assert {k: len(v) for k, v in data.splits.items()} == {"train": 5, "val": 2, "test": 3}
    assert data.split("train").ids == [line.split(",")[0] for line in SHENZHEN_LISTS["train"]]  # list order kept
    assert data.split("train").labels.tolist() == [1, 1, 1, 0, 0] and data.split("test").labels.tolist() == [0, 1, 0]
    assert any("ShenzenCXR_" in note for note in data.notes)
    # a broken line names the file and the line
    (tmp_path / "ShenzenCXR_test_data.txt").write_text("CHNCXR_0004_0.png,0\nCHNCXR_0401_1.png 1\n")
    with pytest.raises(DataError, match=r"ShenzenCXR_test_data\.txt:2: 1 field\(s\).*<image>,<label 1>"):
        load_task_data(task("shenzhen"), tmp_path)


def test_list_readers_split_as_the_released_code_does(tmp_path):
    from medhub.data.cxr import read_split_list

    xray = tmp_path / "Xray14_train_official.txt"
    xray.write_text("00000001_000.png 0 1 0 0 0 0 0 0 0 0 0 0 0 0\n00000001_001.png 0 1 0 0 0 0 0 0 0 0 1 0 0 0\n")
    names, labels = read_split_list(xray, labels=14, labels_optional=True)
    assert names == ["00000001_000.png", "00000001_001.png"] and labels["00000001_001.png"][10] == 1.0
    shenzhen = tmp_path / "ShenzenCXR_valid_data.txt"
    shenzhen.write_text("CHNCXR_0402_1.png,1\r\nCHNCXR_0001_0.png,0\r\n")
    assert read_split_list(shenzhen, labels=1, separator=",") == (
        ["CHNCXR_0402_1.png", "CHNCXR_0001_0.png"], {"CHNCXR_0402_1.png": np.array([1.0], np.float32),
                                                     "CHNCXR_0001_0.png": np.array([0.0], np.float32)})
    with pytest.raises(DataError, match="1 field"):  # a comma list read on whitespace is refused, not kept as a name
        read_split_list(shenzhen, labels=1)
    vindr = tmp_path / "VinDrCXR_train_pe_global_one.txt"
    # jlianglab/BenchmarkTransformers@488ddd3 dataset/VinDrCXR_train_pe_global_one.txt, first line (trailing space)
    vindr.write_text("train_jpeg/000434271f63a053c4128a0ba6352c7f 0 0 0 0 0 1 \n")
    assert read_split_list(vindr, labels=6)[0] == ["000434271f63a053c4128a0ba6352c7f"]
    vindr.write_text("000434271f63a053c4128a0ba6352c7f 0 0 0 0 1\n")
    with pytest.raises(DataError, match=r":1: 6 field"):
        read_split_list(vindr, labels=6)
