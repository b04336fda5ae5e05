"""Chest X-ray classification sets in their official layouts: ChestX-ray14, CheXpert, VinDr-CXR, Shenzhen."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from medhub.data.folders import _label_key
from medhub.data.images import SUPPORTED_SUFFIXES
from medhub.data.sources import UNCERTAIN, SplitData, TaskData, expected_layout, find_files, patient_split
from medhub.errors import DataError

LABEL_ALIASES = {"pe": "pleural_effusion", "effusion": "pleural_effusion", "pleural_effusion": "effusion",
                 "tb": "tuberculosis"}
UNCERTAIN_POLICIES = ("lsr-ones", "u-ones", "u-zeros")


def _read_csv(path: Path) -> tuple[list[str], list[dict]]:
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames or []), list(reader)


def _columns_for(labels: tuple[str, ...], columns: list[str], where: Path) -> list[str]:
    """Match task labels to CSV columns by normalized name (with a few clinical aliases)."""
    keys = {_label_key(c): c for c in columns}
    chosen, absent = [], []
    for label in labels:
        key = _label_key(label)
        col = keys.get(key) or keys.get(LABEL_ALIASES.get(key, ""))
        (chosen if col else absent).append(col or label)
    if absent:
        raise DataError(f"{where}: no column for label(s) {', '.join(absent)}", path=where, missing=absent)
    return chosen


def _image_index(root: Path) -> dict[str, Path]:
    return {p.name: p for p in find_files(root, SUPPORTED_SUFFIXES)}


def _missing(root: Path, names: list[str], layout: str) -> None:
    absent = [n for n in names if not (root / n).exists()]
    if absent:
        raise DataError(f"{root}: missing {', '.join(absent)}; expected {layout}", path=root, missing=absent)


def _split_from_lists(names: dict[str, list[str]], index: dict[str, Path], labels_of, root: Path) -> dict:
    splits = {}
    for split, members in names.items():
        absent = [n for n in members if n not in index]
        if absent:
            raise DataError(f"{root}: {len(absent)} image(s) of the {split} list are missing, e.g. "
                            f"{', '.join(absent[:3])}", path=root, missing=absent)
        splits[split] = SplitData(split, labels=np.stack([labels_of(n) for n in members]),
                                  paths=[index[n] for n in members], ids=members)
    return splits


def read_split_list(path: Path, *, labels: int = 0, separator: str | None = None,
                    labels_optional: bool = False) -> tuple[list[str], dict[str, np.ndarray]]:
    """A benchmark split list: one image per line, ``<image path>[<sep><label 1>...<sep><label n>]``.

    Returns the file names in list order (the order the label-fraction subset shuffles) and the labels per
    name. The released readers split ChestX-ray14 and VinDr-CXR lines on whitespace (``line.split()``,
    BenchmarkTransferLearning Version2/dataloader.py:92, :223) and Shenzhen lines on commas
    (``line.split(',')``, :197; ``CHNCXR_0402_1.png,1``): pass ``separator=","`` for the latter.

    Raises:
        DataError: a line with another number of fields than ``1 + labels`` (``1`` also accepted with
            ``labels_optional``), or a label that is not a number; the message names the file and line.
    """
    names: list[str] = []
    values: dict[str, np.ndarray] = {}
    shape = "<image>" + "".join(f"{separator or ' '}<label {i + 1}>" for i in range(min(labels, 2)))
    shape += f"{separator or ' '}... ({labels} labels)" if labels > 2 else ""
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        parts = [p.strip() for p in line.split(separator)] if separator else line.split()
        if not line.strip():
            continue
        if len(parts) != labels + 1 and not (labels_optional and len(parts) == 1):
            raise DataError(f"{path}:{number}: {len(parts)} field(s) in {line.strip()[:60]!r}; expected "
                            f"{shape} per line", path=path)
        name = parts[0].split("/")[-1]
        names.append(name)
        if len(parts) > 1:
            try:
                values[name] = np.array([float(v) for v in parts[1:]], dtype=np.float32)
            except ValueError:
                raise DataError(f"{path}:{number}: labels must be numbers in {line.strip()[:60]!r}",
                                path=path) from None
    return names, values


def _find_lists(root: Path, patterns: tuple[str, ...]) -> list[Path] | None:
    """The first file matching each glob pattern (at the top or one level down), or None if any is absent."""
    found = [next(iter(sorted(root.glob(p)) + sorted(root.glob(f"*/{p}"))), None) for p in patterns]
    return found if all(found) else None


def read_nih_cxr14(task, root: Path, img_size: int = 0, explicit: bool = True) -> TaskData:
    """NIH ChestX-ray14: the benchmark's Xray14_*_official.txt (with labels), else the official lists + CSV."""
    entry = next((root / n for n in ("Data_Entry_2017.csv", "Data_Entry_2017_v2020.csv") if (root / n).is_file()),
                 None)
    bench = _find_lists(root, ("*train_official.txt", "*val_official.txt", "*test_official.txt"))
    official = [root / "train_val_list.txt", root / "test_list.txt"]
    listed: dict[str, np.ndarray] = {}
    if bench:
        names = {}
        for split, path in zip(("train", "val", "test"), bench, strict=True):
            names[split], labels = read_split_list(path, labels=len(task.labels), labels_optional=True)
            listed.update(labels)
        notes = [f"split: the benchmark's {', '.join(p.name for p in bench)}"]
    else:
        absent = [p.name for p in official if not p.is_file()] + ([] if entry else ["Data_Entry_2017.csv"])
        if absent:
            raise DataError(f"{root}: missing {', '.join(absent)}; expected {expected_layout(task, 'nih_cxr14')}",
                            path=root, missing=absent)
        (train_val, _), (test, _) = read_split_list(official[0]), read_split_list(official[1])
        parts = patient_split(train_val, fractions=(0.87, 0.13, 0.0), key_len=8)
        names = {"train": [train_val[i] for i in parts["train"]], "val": [train_val[i] for i in parts["val"]],
                 "test": test}
        notes = ["split: official test_list.txt; val = 13% of train_val_list.txt by patient (hash order)"]
    findings: dict[str, set[str]] = {}
    if entry is not None:
        columns, rows = _read_csv(entry)
        if "Image Index" not in columns or "Finding Labels" not in columns:
            raise DataError(f"{entry}: needs 'Image Index' and 'Finding Labels' columns", path=entry)
        findings = {r["Image Index"]: {_label_key(f) for f in r["Finding Labels"].split("|")} for r in rows}
    keys = [_label_key(label) for label in task.labels]
    unlabeled = [n for split in names.values() for n in split if n not in listed and n not in findings]
    if unlabeled:
        raise DataError(f"{root}: no labels for {len(unlabeled)} image(s), e.g. {unlabeled[0]}: add "
                        "Data_Entry_2017.csv or use split files with 14 labels per line", path=root)
    index = _image_index(root)
    if not index:
        raise DataError(f"{root}: no image files found; expected {expected_layout(task, 'nih_cxr14')}", path=root,
                        missing=["images/"])

    def labels_of(name: str) -> np.ndarray:
        if name in listed:
            return listed[name]
        found = findings[name]
        return np.array([float(k in found or LABEL_ALIASES.get(k) in found) for k in keys], dtype=np.float32)

    splits = _split_from_lists(names, index, labels_of, root)
    return TaskData(task.id, splits, tuple(task.labels), root=root, notes=notes)


LSR_ONES = (0.55, 0.85)  # Version2/dataloader.py:173-174: random.uniform(0.55, 0.85) per read


def _uncertain(values: np.ndarray, policy: str) -> np.ndarray:
    """Map CheXpert's -1 (uncertain): U-Ones -> 1, U-Zeros -> 0; LSR-Ones keeps -1 (:data:`UNCERTAIN`).

    LSR-Ones labels are drawn when a sample is read (a fresh ``uniform(0.55, 0.85)`` each time, seeded per
    batch by the loader: :class:`medhub.data.loader.BatchDataset`), as the released ``CheXpertDataset.__getitem__``
    does, not once at load.
    """
    policy = policy.lower()
    if policy not in UNCERTAIN_POLICIES:
        raise DataError(f"unknown uncertain-label policy '{policy}'; use one of {', '.join(UNCERTAIN_POLICIES)}")
    mask = values == -1
    if policy == "u-ones":
        values[mask] = 1.0
    elif policy == "u-zeros":
        values[mask] = 0.0
    else:
        values[mask] = UNCERTAIN
    return values


def _resolve(root: Path, rel: str) -> Path:
    parts = Path(rel).parts
    for candidate in (root / rel, root.parent / rel, root.joinpath(*parts[1:]) if len(parts) > 1 else root / rel):
        if candidate.is_file():
            return candidate
    return root / rel


def read_chexpert(task, root: Path, img_size: int = 0, explicit: bool = True,
                  uncertain: str = "lsr-ones") -> TaskData:
    """CheXpert: ``train.csv`` -> train/val (by patient), ``valid.csv`` -> test; blanks are 0."""
    _missing(root, ["train.csv", "valid.csv"], expected_layout(task, "chexpert"))
    trained = tuple(task.trained_labels)
    splits, notes = {}, [f"labels: the {len(trained)} observations trained, {len(task.labels)} evaluated; uncertain "
                         f"(-1) handled with {uncertain}" + (" (a fresh draw each time a train/val sample is read)"
                         if uncertain.lower() == "lsr-ones" else "") + "; blank = 0; test uncertain -> 0"]
    for csv_name, split in (("train.csv", "train"), ("valid.csv", "test")):
        columns, rows = _read_csv(root / csv_name)
        cols = _columns_for(trained, columns, root / csv_name)
        raw = np.array([[float(r[c]) if r[c].strip() else 0.0 for c in cols] for r in rows], dtype=np.float32)
        paths = [_resolve(root, r["Path"]) for r in rows]
        absent = [str(p) for p in paths if not p.is_file()]
        if absent:
            raise DataError(f"{root / csv_name}: {len(absent)} listed image(s) missing, e.g. {absent[0]}",
                            path=root, missing=absent)
        labels = _uncertain(raw, uncertain) if split == "train" else np.clip(raw, 0, 1)
        splits[split] = SplitData(split, labels=labels, paths=paths, ids=[r["Path"] for r in rows])
    train = splits["train"]
    parts = patient_split([p.split("/")[-3] if p.count("/") >= 3 else p for p in train.ids],
                          fractions=(0.9, 0.1, 0.0))
    splits["val"] = train.subset(parts["val"])
    splits["val"].name = "val"
    splits["train"] = train.subset(parts["train"])
    notes.append("split: valid.csv is the test set; val = 10% of train.csv by patient")
    return TaskData(task.id, splits, trained, root=root, notes=notes,
                    uncertain_range=LSR_ONES if uncertain.lower() == "lsr-ones" else None)


def _vindr_from_lists(task, root: Path, lists: list[Path], index: dict[str, Path]) -> dict[str, SplitData]:
    splits = {}
    for split, path in zip(("train", "test"), lists, strict=True):
        names, labels = read_split_list(path, labels=len(task.labels))
        ids = [Path(n).stem for n in names]
        absent = [i for i in ids if i not in index] + [n for n in names if n not in labels][:1]
        if absent:
            raise DataError(f"{path}: {len(absent)} listed image(s) missing or unlabeled, e.g. {absent[0]}",
                            path=path, missing=absent)
        splits[split] = SplitData(split, labels=np.stack([labels[n] for n in names]),
                                  paths=[index[i] for i in ids], ids=ids)
    return splits


def _vindr_from_csv(task, folder: Path, root: Path, index: dict[str, Path]) -> dict[str, SplitData]:
    _missing(folder, ["image_labels_train.csv", "image_labels_test.csv"], expected_layout(task, "vindr_cxr"))
    splits = {}
    for split in ("train", "test"):
        columns, rows = _read_csv(folder / f"image_labels_{split}.csv")
        cols = _columns_for(tuple(task.labels), columns, folder / f"image_labels_{split}.csv")
        votes: dict[str, list[list[float]]] = {}
        for r in rows:
            votes.setdefault(r["image_id"], []).append([float(r[c] or 0) for c in cols])
        ids = sorted(votes)
        absent = [i for i in ids if i not in index]
        if absent:
            raise DataError(f"{root}: {len(absent)} {split} image(s) missing, e.g. {absent[0]}; expected "
                            f"{expected_layout(task, 'vindr_cxr')}", path=root, missing=absent)
        labels = np.array([(np.mean(votes[i], axis=0) >= 0.5) for i in ids], dtype=np.float32)
        splits[split] = SplitData(split, labels=labels, paths=[index[i] for i in ids], ids=ids)
    return splits


def read_vindr_cxr(task, root: Path, img_size: int = 0, explicit: bool = True) -> TaskData:
    """VinDr-CXR: the benchmark's VinDrCXR_{train,test}_*.txt lists, else the official image-label CSVs
    (the three readers of each training image merged by majority vote)."""
    folder = root / "annotations" if (root / "annotations").is_dir() else root
    index = {p.stem: p for p in find_files(root, SUPPORTED_SUFFIXES)}
    lists = _find_lists(root, ("VinDrCXR_train*.txt", "VinDrCXR_test*.txt"))
    if lists:
        splits = _vindr_from_lists(task, root, lists, index)
        notes = [f"labels and split: {lists[0].name}, {lists[1].name} (the benchmark validated on its test list; "
                 "medhub validates on 10% of train)"]
    else:
        splits = _vindr_from_csv(task, folder, root, index)
        notes = ["labels: train readers merged by majority vote; split: official test"]
    train = splits["train"]
    parts = patient_split(train.ids, fractions=(0.9, 0.1, 0.0))
    splits["val"], splits["train"] = train.subset(parts["val"]), train.subset(parts["train"])
    splits["val"].name = "val"
    notes.append("val = 10% of train by image-id hash")
    return TaskData(task.id, splits, tuple(task.labels), root=root, notes=notes)


def read_shenzhen(task, root: Path, img_size: int = 0, explicit: bool = True) -> TaskData:
    """Shenzhen TB: the label is the last digit of the file name; benchmark split files when present."""
    images = [p for p in find_files(root, SUPPORTED_SUFFIXES) if p.name.upper().startswith("CHNCXR_")
              and "mask" not in str(p.parent).lower()]
    if not images:
        raise DataError(f"{root}: no CHNCXR_*.png images; expected {expected_layout(task, 'shenzhen')}",
                        path=root,
                        missing=["CXR_png/"])
    index = {p.name: p for p in images}

    listed: dict[str, np.ndarray] = {}

    def labels_of(name: str) -> np.ndarray:
        if name in listed:  # the list's label, as the released code reads it
            return np.array(int(listed[name][0]), dtype=np.int64)
        return np.array(int(Path(name).stem.split("_")[-1]), dtype=np.int64)

    lists = {s: next(iter(sorted(root.rglob(f"ShenzenCXR_{f}_data.txt"))), None)
             for s, f in (("train", "train"), ("val", "valid"), ("test", "test"))}
    if all(lists.values()):
        names = {}
        for split, path in lists.items():
            names[split], labels = read_split_list(path, labels=1, separator=",")
            listed.update(labels)
        disagree = [n for n, v in listed.items() if int(v[0]) != int(Path(n).stem.split("_")[-1])]
        notes = ["split: the benchmark's ShenzenCXR_{train,valid,test}_data.txt (name,label per line)"]
        if disagree:
            notes.append(f"labels: {len(disagree)} list label(s) differ from the file name's last digit (the "
                         f"list's are used), e.g. {disagree[0]}")
    else:
        ordered = sorted(index)
        parts = patient_split(ordered)
        names = {s: [ordered[i] for i in idx] for s, idx in parts.items()}
        notes = ["split: 70/10/20 by file-name hash (the benchmark's split files were not found)"]
    splits = _split_from_lists(names, index, labels_of, root)
    return TaskData(task.id, splits, tuple(task.labels), root=root, notes=notes)


MIMIC_SPLIT_CSV = "mimic-cxr-2.0.0-split.csv"
MIMIC_LABEL_CSV = "mimic-cxr-2.0.0-chexpert.csv"
MIMIC_SPLITS = {"train": "train", "validate": "val", "test": "test"}


def _csv_maybe_gz(root: Path, name: str, task) -> Path:
    """``name`` or ``name.gz`` at the top of ``root`` (PhysioNet ships the CSVs gzipped)."""
    for candidate in (root / name, root / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    raise DataError(f"{root}: missing {name}(.gz); expected {expected_layout(task, 'mimic_cxr')}", path=root,
                    missing=[f"{name}.gz"])


def _read_csv_any(path: Path) -> tuple[list[str], list[dict]]:
    if path.suffix != ".gz":
        return _read_csv(path)
    import gzip

    with gzip.open(path, "rt", newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames or []), list(reader)


def read_mimic_cxr(task, root: Path, img_size: int = 0, explicit: bool = True,
                   uncertain: str = "lsr-ones") -> TaskData:
    """MIMIC-CXR-JPG v2.0.0: the official split CSV, the CheXpert-labeler CSV (labels per study), the JPEGs.

    Images are ``files/p<subject_id[:2]>/p<subject_id>/s<study_id>/<dicom_id>.jpg``; every image of the split
    CSV is one sample with its study's labels in ``task.trained_labels`` order (blank -> 0; -1 uncertain ->
    LSR-Ones drawn per read for train/val, as for CheXpert; 0 for test). Splits follow the CSV's
    train/validate/test column, in the CSV's row order.

    Raises:
        DataError: a missing CSV, label column or image (with the count), or a study without labels.
    """
    split_csv = _csv_maybe_gz(root, MIMIC_SPLIT_CSV, task)
    label_csv = _csv_maybe_gz(root, MIMIC_LABEL_CSV, task)
    trained = tuple(task.trained_labels)
    columns, rows = _read_csv_any(label_csv)
    for needed in ("subject_id", "study_id"):
        if needed not in columns:
            raise DataError(f"{label_csv}: needs a '{needed}' column", path=label_csv)
    cols = _columns_for(trained, columns, label_csv)
    by_study = {(r["subject_id"], r["study_id"]): np.array([float(r[c]) if r[c].strip() else 0.0 for c in cols],
                                                           dtype=np.float32) for r in rows}
    columns, rows = _read_csv_any(split_csv)
    absent_cols = [c for c in ("dicom_id", "study_id", "subject_id", "split") if c not in columns]
    if absent_cols:
        raise DataError(f"{split_csv}: missing column(s) {', '.join(absent_cols)}", path=split_csv)
    members: dict[str, list[dict]] = {"train": [], "val": [], "test": []}
    for r in rows:
        split = MIMIC_SPLITS.get(r["split"].strip())
        if split is None:
            raise DataError(f"{split_csv}: unknown split '{r['split']}' (expected train, validate or test)",
                            path=split_csv)
        members[split].append(r)
    splits: dict[str, SplitData] = {}
    for split, items in members.items():
        paths = [root / "files" / f"p{r['subject_id'][:2]}" / f"p{r['subject_id']}" / f"s{r['study_id']}" /
                 f"{r['dicom_id']}.jpg" for r in items]
        absent = [str(p.relative_to(root)) for p in paths if not p.is_file()]
        if absent:
            raise DataError(f"{root}: {len(absent)} of {len(paths)} {split} image(s) of {split_csv.name} are missing, "
                            f"e.g. {absent[0]}; download the whole MIMIC-CXR-JPG release", path=root, missing=absent)
        unlabeled = [r["study_id"] for r in items if (r["subject_id"], r["study_id"]) not in by_study]
        if unlabeled:
            raise DataError(f"{label_csv}: no labels for {len(unlabeled)} {split} stud(ies), e.g. s{unlabeled[0]}",
                            path=label_csv)
        raw = np.stack([by_study[(r["subject_id"], r["study_id"])].copy() for r in items]) if items else \
            np.zeros((0, len(trained)), dtype=np.float32)
        labels = _uncertain(raw, uncertain) if split != "test" else np.clip(raw, 0, 1)
        splits[split] = SplitData(split, labels=labels, paths=paths, ids=[r["dicom_id"] for r in items])
    notes = [f"split and labels: {split_csv.name}, {label_csv.name} (labels per study; uncertain -> {uncertain}, "
             "blank -> 0, test uncertain -> 0)"]
    return TaskData(task.id, splits, trained, root=root, notes=notes,
                    uncertain_range=LSR_ONES if uncertain.lower() == "lsr-ones" else None)
