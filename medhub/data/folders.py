"""The two generic layouts for users' own data: class sub-folders, and a CSV manifest (path + labels)."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np

from medhub.data.images import SUPPORTED_SUFFIXES, unnamed_dicoms
from medhub.data.sources import SPLITS, SplitData, TaskData, find_files, patient_split
from medhub.errors import DataError

SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
                 "test": "test", "testing": "test"}
FOLDER_LAYOUT = ("<dir>/{train,val,test}/<class name>/<image files> (val may be 'valid'; DICOM, also without "
                 ".dcm, PNG, JPEG or TIFF)")
CSV_LAYOUT = ("<dir>/labels.csv with a 'path' column (relative to the CSV), an optional 'split' column "
              "(train/val/test) and either a 'label' column (class index or name) or one 0/1 column per label")


def _label_key(name: str) -> str:
    """'0_normal' -> 'normal', 'Pleural Effusion' -> 'pleural_effusion': for matching folder names to labels."""
    name = re.sub(r"^\d+[_\-\s]+", "", name.strip().lower())
    return re.sub(r"[\s\-]+", "_", name)


def class_index(names: list[str], labels: tuple[str, ...]) -> dict[str, int]:
    """Map class names (folders or CSV values) onto the task's label order; unknown names are an error."""
    if not labels:
        return {n: i for i, n in enumerate(sorted(names))}
    wanted = {_label_key(label): i for i, label in enumerate(labels)}
    mapping, unknown = {}, []
    for name in names:
        key = _label_key(name)
        if key in wanted:
            mapping[name] = wanted[key]
        elif name.isdigit() and int(name) < len(labels):
            mapping[name] = int(name)
        else:
            unknown.append(name)
    if unknown:
        raise DataError(f"class names {', '.join(sorted(unknown))} are not labels of this task "
                        f"({', '.join(labels)}); rename the folders or values")
    return mapping


def _find_split_root(root: Path) -> Path:
    """``root`` or the one sub-folder (up to two levels down) that holds a ``train`` folder."""
    for candidate in [root, *sorted(p for p in root.iterdir() if p.is_dir()),
                      *sorted(p for p in root.glob("*/*") if p.is_dir())]:
        if any((candidate / alias).is_dir() and SPLIT_ALIASES[alias] == "train" for alias in SPLIT_ALIASES):
            return candidate
    return root


def _carve_val(splits: dict[str, SplitData], notes: list[str]) -> None:
    """No val split given: take a deterministic 10% of train (by file name hash) as val."""
    train = splits["train"]
    ids = train.ids or [str(i) for i in range(len(train))]
    parts = patient_split(ids, fractions=(0.9, 0.1, 0.0))
    splits["val"] = train.subset(parts["val"])
    splits["val"].name = "val"
    splits["train"] = train.subset(parts["train"])
    notes.append("split: no val split found; 10% of train (by file-name hash) used as val")


def read_image_folder(task, root: Path, img_size: int = 0, explicit: bool = True) -> TaskData:
    """``<root>/{train,val,test}/<class>/*``: one class per sub-folder, classes matched to the task's labels."""
    if not root.is_dir():
        raise DataError(f"{root}: data folder not found; expected {FOLDER_LAYOUT}", path=root)
    base = _find_split_root(root)
    found = {SPLIT_ALIASES[p.name.lower()]: p for p in sorted(base.iterdir())
             if p.is_dir() and p.name.lower() in SPLIT_ALIASES}
    missing = [s for s in ("train", "test") if s not in found]
    if missing:
        listing = ", ".join(sorted(p.name for p in base.iterdir())[:8]) or "nothing"
        raise DataError(f"{base}: missing split folder(s) {', '.join(missing)} (found {listing}); "
                        f"expected {FOLDER_LAYOUT}", path=base, missing=missing)
    class_names = sorted({c.name for folder in found.values() for c in folder.iterdir() if c.is_dir()})
    mapping = class_index(class_names, tuple(task.labels))
    splits, problems = {}, []
    for split, folder in found.items():
        paths, labels = [], []
        for class_dir in sorted(c for c in folder.iterdir() if c.is_dir()):
            files = sorted(find_files(class_dir, SUPPORTED_SUFFIXES) + unnamed_dicoms(class_dir))
            paths += files
            labels += [mapping[class_dir.name]] * len(files)
        if not paths:
            problems.append(f"{folder.name}/ has no image files in class sub-folders")
            continue
        ids = [str(p.relative_to(base)) for p in paths]
        splits[split] = SplitData(split, labels=np.array(labels, dtype=np.int64), paths=paths, ids=ids)
    if problems:
        raise DataError(f"{base}: {'; '.join(problems)}; expected {FOLDER_LAYOUT}", path=base)
    notes = [f"data: class folders under {base} ({', '.join(class_names)})"]
    if "val" not in splits:
        _carve_val(splits, notes)
    return TaskData(task.id, splits, tuple(task.labels) or tuple(class_names), root=base, notes=notes)


def _manifest_path(task, root: Path) -> Path:
    names = [*(f for f in task.layout.files if f.endswith(".csv")), "labels.csv", "manifest.csv"]
    for name in names:
        if (root / name).is_file():
            return root / name
    listing = ", ".join(sorted(p.name for p in root.iterdir())[:8]) if root.is_dir() else "folder missing"
    raise DataError(f"{root}: no manifest ({' or '.join(dict.fromkeys(names))}; found {listing}); "
                    f"expected {CSV_LAYOUT}", path=root, missing=names[:1])


def _row_labels(rows: list[dict], columns: list[str], task, where: Path) -> np.ndarray:
    labels = tuple(task.labels)
    if task.type == "multi-label":
        keys = {_label_key(c): c for c in columns}
        absent = [label for label in labels if _label_key(label) not in keys]
        if absent:
            raise DataError(f"{where}: no column for label(s) {', '.join(absent)}; expected {CSV_LAYOUT}", path=where)
        cols = [keys[_label_key(label)] for label in labels]
        try:
            return np.array([[float(r[c] or 0) for c in cols] for r in rows], dtype=np.float32)
        except ValueError as exc:
            raise DataError(f"{where}: a label column holds a non-number ({exc})", path=where) from exc
    if "label" not in columns:
        raise DataError(f"{where}: no 'label' column (columns: {', '.join(columns)}); expected {CSV_LAYOUT}",
                        path=where)
    values = [r["label"].strip() for r in rows]
    mapping = class_index(sorted(set(values)), labels)
    return np.array([mapping[v] for v in values], dtype=np.int64)


def read_csv_manifest(task, root: Path, img_size: int = 0, explicit: bool = True) -> TaskData:
    """A CSV with ``path`` (+ ``split``) and labels; every listed file must exist."""
    manifest = _manifest_path(task, root)
    with open(manifest, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        columns = list(reader.fieldnames or [])
        rows = list(reader)
    if "path" not in columns:
        raise DataError(f"{manifest}: no 'path' column (columns: {', '.join(columns)}); expected {CSV_LAYOUT}",
                        path=manifest)
    if not rows:
        raise DataError(f"{manifest}: the manifest lists no images", path=manifest)
    paths = [(manifest.parent / r["path"]).resolve() for r in rows]
    absent = [r["path"] for r, p in zip(rows, paths, strict=False) if not p.is_file()]
    if absent:
        raise DataError(f"{manifest}: {len(absent)} listed file(s) missing, e.g. {', '.join(absent[:3])}",
                        path=manifest, missing=absent)
    labels = _row_labels(rows, columns, task, manifest)
    split_of = [SPLIT_ALIASES.get((r.get("split") or "").strip().lower(), "") for r in rows]
    notes = [f"data: manifest {manifest}"]
    if not any(split_of):
        parts = patient_split([r["path"] for r in rows])
        split_of = [""] * len(rows)
        for name, idx in parts.items():
            for i in idx:
                split_of[i] = name
        notes.append("split: no 'split' column; 70/10/20 by path hash")
    splits = {}
    for name in SPLITS:
        pick = [i for i, s in enumerate(split_of) if s == name]
        if pick:
            splits[name] = SplitData(name, labels=labels[pick], paths=[paths[i] for i in pick],
                                     ids=[rows[i]["path"] for i in pick])
    if "train" not in splits or "test" not in splits:
        raise DataError(f"{manifest}: needs rows for both train and test splits (found {', '.join(splits)})",
                        path=manifest)
    if "val" not in splits:
        _carve_val(splits, notes)
    return TaskData(task.id, splits, tuple(task.labels), root=manifest.parent, notes=notes)
