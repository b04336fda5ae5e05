"""Data readers on real images: MedMNIST files, class folders, CSV manifests, NIH layout, DICOM; broken folders."""

from __future__ import annotations

import shutil

import numpy as np
import pydicom
import pytest

from medhub.data import load_task_data
from medhub.data.images import read_image
from medhub.errors import DataError
from medhub.registry import load_registry


@pytest.fixture
def registry():
    return load_registry()


def folder_task(registry, reader: str):
    """A binary normal/abnormal task for the NIH 1000-image subset, read with ``reader``."""
    base = registry.get_task("breastmnist")
    layout = base.layout.model_copy(update={"reader": reader, "files": (), "md5": {}})
    return base.model_copy(update={"id": "nih1000", "labels": ("normal", "abnormal"), "layout": layout})


def without_md5(task):
    """The task with no recorded md5, for hand-made files."""
    return task.model_copy(update={"layout": task.layout.model_copy(update={"md5": {}})})


def test_embedded_medmnist_when_no_data_dir(registry):
    data = load_task_data(registry.get_task("pneumoniamnist"))
    assert {k: len(v) for k, v in data.splits.items()} == {"train": 4708, "val": 524, "test": 624}
    assert data.channels == 1
    assert data.split("train").images.shape == (4708, 28, 28)
    assert data.split("train").labels.dtype == np.int64
    assert any("embedded" in note for note in data.notes)


def test_explicit_folder_with_official_file(registry, shared_data):
    data = load_task_data(registry.get_task("breastmnist"), shared_data / "breastmnist")
    assert len(data.split("test")) == 156
    assert np.bincount(data.split("train").labels).tolist() == [147, 399]


def test_md5_mismatch_names_the_file(registry, shared_data, tmp_path):
    target = tmp_path / "breastmnist.npz"
    shutil.copy(shared_data / "breastmnist" / "breastmnist.npz", target)
    with open(target, "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(DataError, match=r"breastmnist\.npz: md5 .* differs from the official"):
        load_task_data(registry.get_task("breastmnist"), tmp_path)


def test_npz_missing_arrays_are_listed(registry, shared_data, tmp_path):
    with np.load(shared_data / "breastmnist" / "breastmnist.npz") as npz:
        np.savez(tmp_path / "breastmnist_64.npz", train_images=npz["train_images"], train_labels=npz["train_labels"])
    with pytest.raises(DataError, match="missing arrays val_images, val_labels, test_images, test_labels") as info:
        load_task_data(without_md5(registry.get_task("breastmnist")), tmp_path, img_size=64, native_size=True)
    assert "val_images" in info.value.missing


def test_folder_without_the_file_lists_what_it_found(registry, tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match=r"no breastmnist\.npz \(found notes\.txt\)"):
        load_task_data(registry.get_task("breastmnist"), tmp_path)


def test_medmnist_plus_file_only_with_native_size(registry, shared_data, tmp_path):
    with np.load(shared_data / "breastmnist" / "breastmnist.npz") as npz:
        arrays = {k: npz[k] for k in npz.files}
    big = {k: (np.kron(v, np.ones((1, 2, 2), dtype=np.uint8)) if k.endswith("images") else v) for k, v in arrays.items()}
    np.savez(tmp_path / "breastmnist_64.npz", **big)  # 56 px stand-in, named as the 64 px file
    np.savez(tmp_path / "breastmnist.npz", **arrays)
    task = without_md5(registry.get_task("breastmnist"))
    # MedMNIST v2's numbers at any size come from the 28 px file (upsampled by the cache with NEAREST)
    assert load_task_data(task, tmp_path, img_size=64).split("train").images.shape[1] == 28
    native = load_task_data(task, tmp_path, img_size=64, native_size=True)
    assert native.split("train").images.shape[1] == 56
    with pytest.raises(DataError, match="not 100"):
        load_task_data(task, tmp_path, img_size=100, native_size=True)


def test_medmnist_plus_md5_is_checked(registry, shared_data, tmp_path):
    with np.load(shared_data / "breastmnist" / "breastmnist.npz") as npz:
        np.savez(tmp_path / "breastmnist_64.npz", **{k: npz[k] for k in npz.files})
    with pytest.raises(DataError, match="md5"):
        load_task_data(registry.get_task("breastmnist"), tmp_path, img_size=64, native_size=True)


def test_class_folders_on_nih_subset(registry, shared_data):
    data = load_task_data(folder_task(registry, "image_folder"), shared_data / "nih_cxr14_1000_64px")
    sizes = {k: len(v) for k, v in data.splits.items()}
    assert sizes == {"train": 600, "val": 200, "test": 200}
    assert data.split("train").labels.sum() == 300  # 300 abnormal -> label index 1


def test_class_folders_missing_split(registry, shared_data, tmp_path):
    root = tmp_path / "NIH"
    shutil.copytree(shared_data / "nih_cxr14_1000_64px" / "NIH1000" / "train", root / "train")
    with pytest.raises(DataError, match="missing split folder.*test") as info:
        load_task_data(folder_task(registry, "image_folder"), root)
    assert info.value.missing == ["test"]


def test_csv_manifest_and_missing_rows(registry, shared_data, tmp_path):
    task = folder_task(registry, "csv_manifest")
    data = load_task_data(task, shared_data / "nih_cxr14_1000_64px")
    assert len(data.split("val")) == 200
    lines = (shared_data / "nih_cxr14_1000_64px" / "labels.csv").read_text().splitlines()
    (tmp_path / "labels.csv").write_text("\n".join(lines[:4]) + "\n")
    with pytest.raises(DataError, match="3 listed file.* missing"):
        load_task_data(task, tmp_path)


def test_unknown_class_name_is_reported(registry, shared_data, tmp_path):
    task = folder_task(registry, "image_folder").model_copy(update={"labels": ("healthy", "sick")})
    with pytest.raises(DataError, match="not labels of this task"):
        load_task_data(task, shared_data / "nih_cxr14_1000_64px")


def test_nih_layout_with_official_lists(registry, shared_data, tmp_path):
    """The NIH reader on real NIH images laid out as Data_Entry_2017.csv + images/ + official lists."""
    src = shared_data / "nih_cxr14_1000_64px" / "NIH1000"
    (tmp_path / "images").mkdir()
    rows, train_val, test = ["Image Index,Finding Labels,Patient ID"], [], []
    for png in sorted(src.glob("*/*/*.png"))[:300]:
        (tmp_path / "images" / png.name).symlink_to(png)
        finding = "No Finding" if png.parent.name.startswith("0") else "Effusion|Mass"
        rows.append(f"{png.name},{finding},{png.name[:8]}")
        (test if png.parts[-3] == "test" else train_val).append(png.name)
    task = registry.get_task("chestxray14")
    with pytest.raises(DataError, match="missing train_val_list.txt, test_list.txt, Data_Entry_2017.csv"):
        load_task_data(task, tmp_path)
    (tmp_path / "Data_Entry_2017.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "train_val_list.txt").write_text("\n".join(train_val) + "\n")
    (tmp_path / "test_list.txt").write_text("\n".join(test) + "\n")
    data = load_task_data(task, tmp_path)
    assert len(data.split("test")) == len(test)
    assert len(data.split("train")) + len(data.split("val")) == len(train_val)
    labels = np.concatenate([data.split(s).labels for s in ("train", "val", "test")])
    columns = [label.lower() for label in task.labels]
    assert labels.shape[1] == 14
    effusion = next(i for i, c in enumerate(columns) if "effusion" in c)
    assert labels[:, effusion].sum() == labels[:, columns.index("mass")].sum() > 0
    patients = lambda split: {i[:8] for i in data.split(split).ids}  # noqa: E731
    assert not patients("train") & patients("val")

    # the benchmark's split files carry the 14 labels themselves: no CSV needed
    (tmp_path / "Data_Entry_2017.csv").unlink()
    for split in ("train", "val", "test"):
        lines = [f"images/{n} " + " ".join(str(int(v)) for v in data.split(split).labels[i])
                 for i, n in enumerate(data.split(split).ids)]
        (tmp_path / f"Xray14_{split}_official.txt").write_text("\n".join(lines) + "\n")
    again = load_task_data(task, tmp_path)
    for split in ("train", "val", "test"):
        assert np.array_equal(again.split(split).labels, data.split(split).labels)


def test_dicom_inputs(shared_data):
    folder = shared_data / "dicom_pydicom"
    ct = read_image(folder / "CT_small.dcm")  # no window: signed 16-bit range, through the rescale, onto 0..255
    stored = pydicom.dcmread(folder / "CT_small.dcm").pixel_array
    assert ct.shape == (128, 128) and ct.dtype == np.uint8
    assert np.array_equal(ct, np.round((stored + 32768.0) * 255 / 65535).astype(np.uint8))
    reference = read_image(folder / "MR_small.dcm")
    for name in ("MR_small_implicit.dcm", "MR_small_bigendian.dcm", "MR_small_RLE.dcm"):
        assert np.array_equal(read_image(folder / name), reference), name
    assert read_image(folder / "ExplVR_BigEnd.dcm", channels=3).shape == (60, 80, 3)
    assert read_image(folder / "ExplVR_BigEnd.dcm", channels=1).shape == (60, 80)


def test_grayscale_png_made_explicit(shared_data):
    png = next((shared_data / "nih_cxr14_1000_64px" / "NIH1000" / "train" / "0_normal").glob("*.png"))
    gray = read_image(png)
    assert gray.shape == (64, 64)
    assert read_image(png, channels=3).shape == (64, 64, 3)


def test_large_jpeg_decodes_at_a_reduced_scale_for_a_small_cache(shared_data, tmp_path):
    """A 2320x2828 JPEG (a real X-ray, upscaled) read for a 256 px cache: smaller decode, same picture."""
    from PIL import Image

    from medhub.data.images import resize

    png = next((shared_data / "nih_cxr14_1000_64px" / "NIH1000" / "train" / "1_abnormal").glob("*.png"))
    jpeg = tmp_path / "big.jpg"
    Image.open(png).convert("L").resize((2320, 2828), Image.BICUBIC).save(jpeg, quality=92)
    full = read_image(jpeg)
    reduced = read_image(jpeg, min_size=256)
    assert full.shape == (2828, 2320)
    assert reduced.shape == (354, 290)  # 1/8 scale: the smallest with both sides >= 256
    assert read_image(jpeg, min_size=400).shape == (707, 580)  # 1/4: 1/8 would be below 400
    difference = np.abs(resize(full, 256).astype(int) - resize(reduced, 256).astype(int))
    assert difference.mean() < 1.5 and np.percentile(difference, 99) <= 6
    assert read_image(png, min_size=16).shape == (64, 64)  # PNGs decode in full


def test_undecodable_file_is_named(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(DataError, match="broken.png: cannot decode image"):
        read_image(bad)


def test_download_with_md5_check(registry, shared_data, tmp_path, monkeypatch):
    """The Zenodo path, served from a file:// URL: an empty folder is filled; a bad md5 leaves nothing behind."""
    from medhub.data import medmnist

    monkeypatch.setattr(medmnist, "ZENODO_URL", (shared_data / "breastmnist").as_uri() + "/{name}")
    data = load_task_data(registry.get_task("breastmnist"), tmp_path / "fresh")
    assert (tmp_path / "fresh" / "breastmnist.npz").is_file() and len(data.split("train")) == 546

    corrupt = tmp_path / "mirror"
    corrupt.mkdir()
    (corrupt / "breastmnist.npz").write_bytes((shared_data / "breastmnist" / "breastmnist.npz").read_bytes()[:-10])
    monkeypatch.setattr(medmnist, "ZENODO_URL", corrupt.as_uri() + "/{name}")
    with pytest.raises(DataError, match="differs from the official"):
        load_task_data(registry.get_task("breastmnist"), tmp_path / "second")
    assert not (tmp_path / "second" / "breastmnist.npz").exists()

    monkeypatch.setattr(medmnist, "ZENODO_URL", (tmp_path / "no-mirror").as_uri() + "/{name}")
    with pytest.raises(DataError, match="download failed"):
        load_task_data(registry.get_task("breastmnist"), tmp_path / "made" / "by" / "us")
    assert not (tmp_path / "made").exists()  # a failed download leaves no folder it created


def test_rgb_and_multilabel_medmnist_files(registry, shared_data, tmp_path):
    """A 3-channel file (PathMNIST-like) and a multi-label file (ChestMNIST-like) go through reader and cache."""
    from medhub.data.cache import cached_split

    with np.load(shared_data / "breastmnist" / "breastmnist.npz") as npz:
        arrays = {k: npz[k] for k in npz.files}
    rgb = {k: (np.repeat(v[..., None], 3, axis=3) if k.endswith("images") else v) for k, v in arrays.items()}
    np.savez(tmp_path / "pathmnist.npz", **rgb)
    data = load_task_data(without_md5(registry.get_task("pathmnist")), tmp_path)
    assert data.channels == 3
    cached = cached_split("pathmnist", data.split("val"), 32, 3, progress=False)
    assert cached.images.shape == (78, 3, 32, 32)

    multi = {k: (np.repeat(v, 14, axis=1) if k.endswith("labels") else v) for k, v in arrays.items()}
    np.savez(tmp_path / "chestmnist.npz", **multi)
    chest = load_task_data(without_md5(registry.get_task("chestmnist")), tmp_path)
    assert chest.split("train").labels.shape == (546, 14) and chest.split("train").labels.dtype == np.float32
