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


# CheXpert-v1.0 train.csv header: 5 columns, then the 14 observations the released code trains on (line[5:])
CHEXPERT_HEADER = ("Path,Sex,Age,Frontal/Lateral,AP/PA,No Finding,Enlarged Cardiomediastinum,Cardiomegaly,Lung Opacity,"
                   "Lung Lesion,Edema,Consolidation,Pneumonia,Atelectasis,Pneumothorax,Pleural Effusion,Pleural Other,"
                   "Fracture,Support Devices")


def test_chexpert_trains_14_labels_and_draws_lsr_ones_per_read(tmp_path, pngs):
    from medhub.data.loader import make_loader, set_epoch
    from medhub.data.sources import UNCERTAIN

    root = tmp_path / "CheXpert-v1.0-small"
    for csv_name, split, items in (("train.csv", "train", pngs[:30]), ("valid.csv", "valid", pngs[30:])):
        rows = [CHEXPERT_HEADER]
        for i, png in enumerate(items):
            rel = f"CheXpert-v1.0-small/{split}/patient{i:05d}/study1/view1_frontal.jpg"
            (tmp_path / rel).parent.mkdir(parents=True)
            Image.open(png).convert("L").save(tmp_path / rel)
            # Atelectasis (13th column) uncertain in train; Support Devices 1; Lung Opacity blank
            values = ["", "0", "1", "", "0", "0", "0", "0", "-1.0" if split == "train" else "1", "0", "1", "0", "0", "1"]
            rows.append(f"{rel},Male,50,Frontal,PA," + ",".join(values))
        (root / csv_name).write_text("\n".join(rows) + "\n")
    entry = task("chexpert")
    lsr = load_task_data(entry, root)
    assert lsr.label_names == entry.labels_trained and len(lsr.label_names) == 14
    train = lsr.split("train").labels
    atelectasis = entry.labels_trained.index("Atelectasis")
    assert train.shape[1] == 14 and set(np.unique(train[:, atelectasis])) == {UNCERTAIN}  # drawn when read
    assert set(np.unique(train[:, entry.labels_trained.index("Lung Opacity")])) == {0.0}  # blank -> 0
    assert set(np.unique(lsr.split("test").labels[:, atelectasis])) == {1.0}
    ones = load_task_data(entry, root, uncertain="u-ones")
    zeros = load_task_data(entry, root, uncertain="u-zeros")
    assert set(np.unique(ones.split("train").labels[:, atelectasis])) == {1.0}
    assert set(np.unique(zeros.split("train").labels[:, atelectasis])) == {0.0}
    assert ones.uncertain_range is None and lsr.uncertain_range == (0.55, 0.85)

    split = cached_split("chexpert", lsr.split("train"), 16, 1, progress=False)
    loader = make_loader(split, batch_size=8, shuffle=True, seed=3, uncertain_range=lsr.uncertain_range)

    def epoch_labels(epoch):
        set_epoch(loader, epoch)
        return np.concatenate([labels.numpy()[:, atelectasis] for _, labels in loader])

    first, again, second = epoch_labels(0), epoch_labels(0), epoch_labels(1)
    assert first.min() >= 0.55 and first.max() <= 0.85 and len(np.unique(first)) == len(first)
    assert np.array_equal(first, again)  # seeded by (run seed, epoch, batch): a resumed run reads the same
    assert not np.array_equal(np.sort(first), np.sort(second))  # a fresh draw every epoch (Version2/dataloader.py:174)
    with pytest.raises(DataError, match="unknown uncertain-label policy"):
        load_task_data(entry, root, uncertain="maybe")
    (root / "valid.csv").unlink()
    with pytest.raises(DataError, match="missing valid.csv"):
        load_task_data(entry, root)


def test_chexpert_metric_averages_the_five_test_diseases():
    import torch

    from medhub.train.loop import FitConfig, evaluate
    from medhub.train.metrics import per_class_auc

    entry = task("chexpert")
    rng = np.random.default_rng(0)
    truth = (rng.random((64, 14)) > 0.5).astype(np.float32)
    scores = rng.random((64, 14)).astype(np.float32)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Identity())
    loader = [(torch.from_numpy(np.log(scores / (1 - scores))).reshape(64, 1, 14, 1), torch.from_numpy(truth))]
    config = FitConfig(task_type="multi-label", label_names=entry.labels_trained, normalization="none", channels=1,
                       evaluated=entry.labels)
    result = evaluate(model, loader, torch.device("cpu"), config)
    keep = [entry.labels_trained.index(n) for n in entry.labels]  # Version2/main_classification.py:130-131
    expected = per_class_auc(truth[:, keep], scores[:, keep], "multi-label", entry.labels)
    assert list(result.per_class) == list(entry.labels)
    assert result.metric == pytest.approx(float(np.mean(list(expected.values()))), abs=1e-6)


def test_mimic_cxr_jpg_layout(tmp_path, pngs):
    import gzip

    subjects = [("10000032", "50414267"), ("10000032", "53189527"), ("10000764", "57375967"), ("10000898", "50771383")]
    header = "subject_id,study_id," + ",".join(task("mimiccxr").labels)
    split_rows, label_rows = ["dicom_id,study_id,subject_id,split"], [header]
    for i, ((subject, study), split) in enumerate(zip(subjects, ("train", "train", "validate", "test"), strict=True)):
        for view in range(2):
            dicom = f"{i:08x}-{view:08x}"
            folder = tmp_path / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.open(pngs[2 * i + view]).convert("L").save(folder / f"{dicom}.jpg")
            split_rows.append(f"{dicom},{study},{subject},{split}")
        label_rows.append(f"{subject},{study}," + ",".join(["1.0", "", "-1.0"] + ["0.0"] * 11))
    with gzip.open(tmp_path / "mimic-cxr-2.0.0-split.csv.gz", "wt") as handle:
        handle.write("\n".join(split_rows) + "\n")
    with gzip.open(tmp_path / "mimic-cxr-2.0.0-chexpert.csv.gz", "wt") as handle:
        handle.write("\n".join(label_rows) + "\n")
    data = load_task_data(task("mimiccxr"), tmp_path)
    assert {k: len(v) for k, v in data.splits.items()} == {"train": 4, "val": 2, "test": 2}
    train = data.split("train").labels
    assert train.shape == (4, 14) and set(train[:, 0]) == {1.0} and set(train[:, 1]) == {0.0}
    assert set(train[:, 2]) == {-1.0} and set(data.split("test").labels[:, 2]) == {0.0}  # LSR-Ones on train only
    assert data.uncertain_range == (0.55, 0.85)
    next(tmp_path.glob("files/p10/p10000898/s50771383/*.jpg")).unlink()
    with pytest.raises(DataError, match="1 of 2 test image"):
        load_task_data(task("mimiccxr"), tmp_path)


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
