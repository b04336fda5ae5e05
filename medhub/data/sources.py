"""What a reader hands on: per split, either decoded arrays or image files, with labels (and masks)."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medhub.errors import DataError
from medhub.schema import PixelRule

SPLITS = ("train", "val", "test")


@dataclass
class SplitData:
    """One split of a task, before decoding.

    Exactly one of ``images`` (uint8, ``(N, H, W)`` or ``(N, H, W, C)``) and ``paths`` is set.
    ``labels`` is ``(N, L)`` float32 (multi-label, soft labels allowed) or ``(N,)`` int64 class indices.
    Segmentation splits carry ``masks``: one tuple of mask files per image (their union is the mask),
    or a uint8 array.
    """

    name: str
    labels: np.ndarray
    paths: list[Path] | None = None
    images: np.ndarray | None = None
    masks: list[tuple[Path, ...]] | np.ndarray | None = None
    ids: list[str] | None = None
    source: str | None = None  # a cheap identity of ``images`` (file, size, mtime) instead of hashing them
    decoder: str | None = None  # a special decoder of medhub.data.images.DECODERS for ``paths`` (CT windows)
    pixels: PixelRule | None = None  # how ``paths`` become grey levels (load_task_data sets the task's rule)

    def __post_init__(self) -> None:
        count = len(self.paths) if self.paths is not None else len(self.images)
        if len(self.labels) != count:
            raise DataError(f"split '{self.name}': {count} images but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: np.ndarray) -> SplitData:
        """The samples at ``indices`` (label fractions, quick tests)."""
        pick = [int(i) for i in indices]
        return SplitData(
            name=self.name,
            labels=self.labels[pick],
            paths=[self.paths[i] for i in pick] if self.paths is not None else None,
            images=self.images[pick] if self.images is not None else None,
            masks=(self.masks[pick] if isinstance(self.masks, np.ndarray)
                   else [self.masks[i] for i in pick] if self.masks is not None else None),
            ids=[self.ids[i] for i in pick] if self.ids is not None else None,
            source=f"{self.source}[{hashlib.sha256(np.asarray(pick).tobytes()).hexdigest()[:16]}]"
            if self.source else None,
            decoder=self.decoder,
            pixels=self.pixels,
        )

    def fingerprint(self) -> str:
        """A digest that changes when any file, label or mask of the split changes."""
        digest = hashlib.sha256(self.name.encode())
        digest.update(np.ascontiguousarray(self.labels).tobytes())
        if self.decoder:
            digest.update(f"decoder:{self.decoder}".encode())
        if self.images is not None and self.source:
            digest.update(self.source.encode())
        elif self.images is not None:
            digest.update(str(self.images.shape).encode())
            digest.update(hashlib.sha256(np.ascontiguousarray(self.images).data).digest())
        for path in self.paths or ():
            _update_with_file(digest, path)
        if isinstance(self.masks, np.ndarray):
            digest.update(hashlib.sha256(np.ascontiguousarray(self.masks).data).digest())
        elif self.masks is not None:
            for group in self.masks:
                for path in group:
                    _update_with_file(digest, path)
        return digest.hexdigest()


def _update_with_file(digest, path: Path) -> None:
    try:
        stat = os.stat(path)
    except OSError as exc:
        raise DataError(f"{path}: listed in the data folder but missing; restore it or fix the split", path=path) from exc
    digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())


UNCERTAIN = -1.0  # a stored label value meaning "uncertain": see TaskData.uncertain_range


@dataclass
class TaskData:
    """A task's data as a reader found it: splits, label names, channels and how it was split."""

    task: str
    splits: dict[str, SplitData]
    label_names: tuple[str, ...]
    channels: int = 1
    root: Path | None = None
    notes: list[str] = field(default_factory=list)
    segmentation: bool = False
    # labels stored as UNCERTAIN are drawn uniformly from this range each time a training/validation sample is
    # read (CheXpert's LSR-Ones, BenchmarkTransferLearning Version2/dataloader.py:167-176); None: no such labels
    uncertain_range: tuple[float, float] | None = None

    def split(self, name: str) -> SplitData:
        """One split; a clear error when the reader did not find it."""
        if name not in self.splits:
            raise DataError(
                f"task '{self.task}': no '{name}' split in {self.root}; found {', '.join(self.splits) or 'none'}"
            )
        return self.splits[name]


def patient_split(ids: list[str], *, fractions: tuple[float, float, float] = (0.7, 0.1, 0.2),
                  key_len: int | None = None) -> dict[str, np.ndarray]:
    """Deterministic split of sample indices into train/val/test, grouped by a patient key.

    The group key is ``ids[i][:key_len]`` (the whole id when ``key_len`` is None); groups are ordered by
    a hash of the key, so the split does not depend on file order or on a random seed.
    """
    keys = [i[:key_len] if key_len else i for i in ids]
    groups = sorted(set(keys), key=lambda k: hashlib.sha256(k.encode()).hexdigest())
    cut1 = round(len(groups) * fractions[0])
    cut2 = round(len(groups) * (fractions[0] + fractions[1]))
    where = {k: ("train" if n < cut1 else "val" if n < cut2 else "test") for n, k in enumerate(groups)}
    return {name: np.array([i for i, k in enumerate(keys) if where[k] == name], dtype=np.int64) for name in SPLITS}


def find_files(root: Path, suffixes: set[str]) -> list[Path]:
    """Files under ``root`` (recursively) whose suffix is in ``suffixes``, sorted, hidden files skipped."""
    return sorted(
        p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in suffixes and not p.name.startswith(".")
    )


def missing_report(root: Path, expected: list[str], found: list[str], layout: str) -> DataError:
    """A DataError that names the folder, what is missing, and the layout the reader expects."""
    missing = [e for e in expected if e not in found]
    return DataError(
        f"{root}: missing {', '.join(missing)}; expected layout: {layout}",
        path=root, missing=missing,
    )


def expected_layout(task, reader: str) -> str:
    """What ``reader`` expects on disk, as the registry documents it (the one source: ``medhub tasks --json``).

    ``task``'s own ``layout.description`` when the task is read with ``reader``; otherwise that of the
    first registry task that is (a task read with another task's reader).
    """
    from medhub.data import READER_ALIASES
    from medhub.registry import load_registry

    def uses(candidate) -> bool:
        layout = getattr(candidate, "layout", None)
        return layout is not None and READER_ALIASES.get(layout.reader, layout.reader) == reader

    owner = task if uses(task) else next((t for t in load_registry().tasks.values() if uses(t)), None)
    if owner is None:
        return f"the '{reader}' layout"
    return f"{owner.layout.description.rstrip('.')} (task '{owner.id}' layout in 'medhub tasks --json')"
