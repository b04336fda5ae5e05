"""Segmentation sets (images + binary masks): Montgomery, SIIM-ACR (PNG release), DRIVE, JSRT/SCR, BUSI.

What each reader expects on disk is documented once, in its task's registry `layout.description`.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from medhub.data.images import SUPPORTED_SUFFIXES
from medhub.data.sources import SPLITS, SplitData, TaskData, expected_layout, find_files, patient_split
from medhub.errors import DataError


def _by_key(files: list[Path], key=lambda p: p.stem) -> dict[str, Path]:
    return {key(p): p for p in files}


def _pairs(root: Path, image_dir: Path, mask_dirs: list[Path], layout: str, key=lambda p: p.stem):
    """Images of ``image_dir`` each paired with the file of every mask folder that has the same ``key``."""
    absent_dirs = [str(d.relative_to(root)) for d in [image_dir, *mask_dirs] if not d.is_dir()]
    if absent_dirs:
        raise DataError(f"{root}: missing {', '.join(absent_dirs)}; expected {layout}", path=root,
                        missing=absent_dirs)
    images = find_files(image_dir, SUPPORTED_SUFFIXES)
    if not images:
        raise DataError(f"{image_dir}: no image files; expected {layout}", path=image_dir)
    masks = [_by_key(find_files(d, SUPPORTED_SUFFIXES), key) for d in mask_dirs]
    unmatched = [p.name for p in images if any(key(p) not in m for m in masks)]
    if unmatched:
        raise DataError(f"{root}: {len(unmatched)} image(s) without a mask, e.g. {', '.join(unmatched[:3])}; "
                        f"expected {layout}", path=root, missing=unmatched)
    return images, [tuple(m[key(p)] for m in masks) for p in images]


def _split(task, root: Path, images: list[Path], masks: list[tuple[Path, ...]], parts: dict, notes: list[str],
           channels: int = 1) -> TaskData:
    splits = {}
    for name in SPLITS:
        idx = parts[name]
        if len(idx) == 0:
            continue
        splits[name] = SplitData(name, labels=np.zeros(len(idx), dtype=np.int64),
                                 paths=[images[i] for i in idx], masks=[masks[i] for i in idx],
                                 ids=[images[i].name for i in idx])
    return TaskData(task.id, splits, tuple(task.labels), channels=channels, root=root, notes=notes,
                    segmentation=True)


def read_montgomery(task, root: Path, img_size: int = 0, explicit: bool = True) -> TaskData:
    """Montgomery County lungs: the mask is the union of the left and right lung masks."""
    lungs = [root / "ManualMask" / "leftMask", root / "ManualMask" / "rightMask"]
    images, masks = _pairs(root, root / "CXR_png", lungs, expected_layout(task, "montgomery"))
    parts = patient_split([p.name for p in images])
    return _split(task, root, images, masks, parts, ["split: 70/10/20 by file-name hash (no official split)"])


def read_siim_acr(task, root: Path, img_size: int = 0, explicit: bool = True) -> TaskData:
    """SIIM-ACR pneumothorax, PNG release; split from its stage_1 CSVs when present."""
    images, masks = _pairs(root, root / "png_images", [root / "png_masks"], expected_layout(task, "siim_acr"))
    names = [p.name for p in images]
    lists = [root / "stage_1_train_images.csv", root / "stage_1_test_images.csv"]
    if all(p.is_file() for p in lists):
        def listed(path: Path) -> set[str]:
            with open(path, newline="", encoding="utf-8") as handle:
                return {row.get("new_filename") or row.get("ImageId", "") for row in csv.DictReader(handle)}

        train_names, test_names = listed(lists[0]), listed(lists[1])
        train_idx = [i for i, n in enumerate(names) if n in train_names]
        inner = patient_split([names[i] for i in train_idx], fractions=(0.9, 0.1, 0.0))
        parts = {"train": np.array([train_idx[i] for i in inner["train"]], dtype=np.int64),
                 "val": np.array([train_idx[i] for i in inner["val"]], dtype=np.int64),
                 "test": np.array([i for i, n in enumerate(names) if n in test_names], dtype=np.int64)}
        notes = ["split: stage_1 test CSV is the test set; val = 10% of train by hash"]
    else:
        parts, notes = patient_split(names), ["split: 70/10/20 by file-name hash"]
    return _split(task, root, images, masks, parts, notes)


def read_drive(task, root: Path, img_size: int = 0, explicit: bool = True) -> TaskData:
    """DRIVE retinal vessels (RGB): official 20 training / 20 test images; val = 4 training images."""
    def key(p: Path) -> str:
        return p.stem.split("_")[0]

    def folder(*names: str) -> Path:
        return next((root / n for n in names if (root / n).is_dir()), root / names[0])

    train, test = folder("training", "train"), folder("test")
    layout = expected_layout(task, "drive")
    train_masks_dir = folder(f"{train.name}/1st_manual", f"{train.name}/label", f"{train.name}/labels")
    train_imgs, train_masks = _pairs(root, train / "images", [train_masks_dir], layout, key=key)
    test_imgs, test_masks = _pairs(root, test / "images", [folder("test/1st_manual", "test/label", "test/labels")],
                                   layout, key=key)
    images, masks = train_imgs + test_imgs, train_masks + test_masks
    inner = patient_split([p.name for p in train_imgs], fractions=(0.8, 0.2, 0.0))
    parts = {"train": inner["train"], "val": inner["val"],
             "test": np.arange(len(train_imgs), len(images), dtype=np.int64)}
    notes = ["split: official test set; val = 20% of the training images by hash"]
    return _split(task, root, images, masks, parts, notes, channels=3)


SCR_FOLD_SOURCE = ("SCR database two-fold protocol (van Ginneken et al., Med Image Anal 10 (2006) 19-40): fold 1 = the "
                   "odd-numbered JSRT images (77 JPCLN + 47 JPCNN = 124), fold 2 = the even-numbered (77 + 46 = 123)")


def scr_fold(name: str) -> int:
    """SCR fold (1 or 2) of a JSRT image name such as ``JPCLN001.png``: odd case numbers are fold 1.

    Raises:
        DataError: a name without the JSRT case number ``JPC(LN|NN)<nnn>``.
    """
    import re

    match = re.match(r"JPC(?:LN|NN)(\d{3})", Path(name).name.upper())
    if not match:
        raise DataError(f"{name}: not a JSRT image name (JPCLN<nnn> or JPCNN<nnn>); rename it as in the JSRT release",
                        path=Path(name))
    return 1 if int(match.group(1)) % 2 else 2


def scr_split(names: list[str]) -> dict[str, np.ndarray]:
    """train = SCR fold 1 (124 of the 247 JSRT images); val = 20% of fold 2 by name hash; test = the rest of fold 2.

    The 2025 paper trains on 124 images (#Train, MedIA A2), which is fold 1; which fold-2 images were the
    validation set is not in the released code (it reads user lists, ``Version2/main_segmentation.py:34-39``).
    """
    folds = np.array([scr_fold(n) for n in names])
    second = np.flatnonzero(folds == 2)
    inner = patient_split([names[i] for i in second], fractions=(0.0, 0.2, 0.8))
    return {"train": np.flatnonzero(folds == 1), "val": second[inner["val"]], "test": second[inner["test"]]}


def read_jsrt_scr(task, root: Path, img_size: int = 0, explicit: bool = True) -> TaskData:
    """JSRT images with SCR masks; the task's labels name the structure(s) whose union is the mask.

    Split: :func:`scr_split` (the SCR database's official fold 1 for training).
    """
    structures = [s.lower().replace("_", " ") for s in task.labels] or ["heart"]
    mask_root = root / "masks"
    folders = sorted(p for p in mask_root.iterdir() if p.is_dir()) if mask_root.is_dir() else []
    # "heart" -> masks/heart; "clavicle" -> masks/left clavicle + masks/right clavicle (their union)
    dirs = [d for s in structures for d in folders if s in d.name.lower().replace("_", " ")]
    if not dirs:
        dirs = [mask_root / s for s in structures]
    images, masks = _pairs(root, root / "images", dirs, expected_layout(task, "jsrt_scr"))
    parts = scr_split([p.name for p in images])
    notes = [f"split: train = SCR fold 1 ({len(parts['train'])} images), val/test = fold 2 split 20/80 by name "
             f"hash ({len(parts['val'])}/{len(parts['test'])}); {SCR_FOLD_SOURCE}"]
    return _split(task, root, images, masks, parts, notes)


def read_busi(task, root: Path, img_size: int = 0, explicit: bool = True) -> TaskData:
    """Breast ultrasound (BUSI layout): every ``<name>.png`` with ``<name>_mask*.png`` beside it."""
    files = find_files(root, SUPPORTED_SUFFIXES) if root.is_dir() else []
    masks: dict[Path, list[Path]] = {}
    for path in files:
        stem, _, rest = path.stem.partition("_mask")
        if _ or rest:
            masks.setdefault(path.with_name(stem + path.suffix), []).append(path)
    images = [p for p in files if "_mask" not in p.stem]
    if not images:
        raise DataError(f"{root}: no images; expected {expected_layout(task, 'busi')}", path=root)
    unmatched = [p.name for p in images if p not in masks]
    if unmatched:
        raise DataError(f"{root}: {len(unmatched)} image(s) without a mask, e.g. {', '.join(unmatched[:3])}; "
                        f"expected {expected_layout(task, 'busi')}", path=root, missing=unmatched)
    pairs = [tuple(sorted(masks[p])) for p in images]
    parts = patient_split([str(p.relative_to(root)) for p in images])
    return _split(task, root, images, pairs, parts, ["split: 70/10/20 by file-name hash (no official split)"])
