"""MedMNIST ``.npz`` files: every 2D flag, sizes 28/64/128/224, md5-checked, embedded copies, Zenodo download."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import zipfile
from pathlib import Path

import numpy as np

from medhub.data.sources import SPLITS, SplitData, TaskData
from medhub.errors import DataError, first_line

log = logging.getLogger(__name__)

SIZES = (28, 64, 128, 224)
EMBEDDED_DIR = Path(__file__).resolve().parent.parent / "_data" / "medmnist"
ZENODO_URL = "https://zenodo.org/records/10519652/files/{name}?download=1"
KEYS = tuple(f"{split}_{kind}" for split in SPLITS for kind in ("images", "labels"))
LAYOUT = "<flag>.npz (28 px) or <flag>_<64|128|224>.npz with keys " + ", ".join(KEYS)


def file_name(flag: str, size: int) -> str:
    """Official file name for a flag and size: ``pneumoniamnist.npz``, ``pneumoniamnist_224.npz``."""
    return f"{flag}.npz" if size == 28 else f"{flag}_{size}.npz"


def md5_file(path: Path) -> str:
    """md5 of a file, remembered per (path, size, mtime) so large files are hashed once."""
    stat = path.stat()
    from medhub.data.paths import cache_root

    memo = cache_root() / "md5" / (hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:24] + ".json")
    key = f"{stat.st_size}:{stat.st_mtime_ns}"
    try:
        cached = json.loads(memo.read_text())
        if cached.get("key") == key:
            return cached["md5"]
    except (OSError, ValueError):
        pass
    digest = hashlib.md5()  # noqa: S324 - the official MedMNIST checksum is md5
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    value = digest.hexdigest()
    try:
        from medhub._io import atomic_write_text

        atomic_write_text(memo, json.dumps({"key": key, "md5": value}))
    except OSError:
        pass  # read-only folder: hash again next time
    return value


def verify_md5(path: Path, expected: dict[str, str]) -> None:
    """Compare ``path`` with the task entry's md5, when the entry records one for this file name."""
    want = expected.get(path.name)
    if want is None:
        log.info("no md5 recorded for %s; not verified", path.name)
        return
    got = md5_file(path)
    if got != want:
        raise DataError(
            f"{path}: md5 {got} differs from the official {want}; the file is corrupt or not the official "
            "release: delete it and download it again",
            path=path,
        )


def download(flag: str, size: int, folder: Path, md5: dict[str, str]) -> Path:
    """Fetch the official file from Zenodo into ``folder`` with the md5 check (needs medhub.hub.download)."""
    name = file_name(flag, size)
    try:
        from medhub.hub.download import download_url
    except ImportError as exc:
        raise DataError(
            f"no {name} in {folder}, and this medhub cannot download it; fetch {ZENODO_URL.format(name=name)} "
            f"into {folder} (or pass --data-dir)",
            path=folder,
        ) from exc
    from medhub.errors import MedhubError

    target = folder / name
    url = ZENODO_URL.format(name=name)
    created = next((p for p in reversed([folder, *folder.parents]) if not p.exists()), None)
    log.warning("downloading %s from %s into %s", name, url, folder)
    try:
        download_url(url, target)
    except MedhubError as exc:
        if created:  # leave no trace of a folder this failed download made
            shutil.rmtree(created, ignore_errors=True)
        raise DataError(f"no {name} in {folder} and the download failed ({exc}); fetch {url} into {folder} "
                        "by hand, or pass --data-dir", path=folder) from exc
    try:
        verify_md5(target, md5)
    except DataError:
        target.unlink(missing_ok=True)  # never keep a file that failed its checksum
        raise
    return target


def read_npz(path: Path, flag: str) -> dict[str, np.ndarray]:
    """The six arrays of a MedMNIST file; a DataError lists missing or malformed keys."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            found = set(npz.files)
            missing = [k for k in KEYS if k not in found]
            if missing:
                raise DataError(
                    f"{path}: missing arrays {', '.join(missing)} (found {', '.join(sorted(found)) or 'none'}); "
                    f"expected {LAYOUT}",
                    path=path, missing=missing,
                )
            arrays = {k: npz[k] for k in KEYS}
    except DataError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        why = "empty file" if path.is_file() and path.stat().st_size == 0 else first_line(exc)
        raise DataError(f"{path}: not a readable .npz file ({why}); download {file_name(flag, 28)} again",
                        path=path) from exc
    problems = []
    for split in SPLITS:
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.dtype != np.uint8 or images.ndim not in (3, 4):
            problems.append(f"{split}_images is {images.dtype} {images.shape}, expected uint8 (N,H,W[,3])")
        if len(labels) != len(images):
            problems.append(f"{split}: {len(images)} images but {len(labels)} labels")
    if problems:
        raise DataError(f"{path}: malformed: {'; '.join(problems)}", path=path)
    return arrays


def locate(task, data_dir: Path, size: int, explicit: bool) -> tuple[Path, list[str]]:
    """The ``.npz`` of exactly ``size`` px: in ``data_dir``; else (28 px, default folder) the embedded copy; else Zenodo."""
    flag = Path(task.layout.files[0]).stem if task.layout.files else task.id
    if size not in SIZES:
        raise DataError(f"MedMNIST files exist at {', '.join(map(str, SIZES))} px, not {size}; choose one of those "
                        "with --img-size, or drop --native-size to upsample the 28 px images")
    wanted = data_dir / file_name(flag, size)
    if wanted.is_file():
        return wanted, []
    embedded = EMBEDDED_DIR / file_name(flag, 28)
    if size == 28 and not explicit and embedded.is_file():
        return embedded, [f"data: the copy of {embedded.name} embedded in medhub (CC BY 4.0, see ATTRIBUTION.md)"]
    listing = sorted(p.name for p in data_dir.iterdir()) if data_dir.is_dir() else []
    if listing:
        shown = ", ".join(listing[:8]) + (" ..." if len(listing) > 8 else "")
        raise DataError(f"{data_dir}: no {file_name(flag, size)} (found {shown}); expected {LAYOUT}",
                        path=data_dir, missing=[file_name(flag, size)])
    return download(flag, size, data_dir, dict(task.layout.md5)), [f"data: downloaded {file_name(flag, size)}"]


def read_medmnist(task, data_dir: Path, img_size: int, explicit: bool = True, native_size: bool = False) -> TaskData:
    """Read a MedMNIST task from ``data_dir`` (see :func:`locate` for the fallbacks).

    MedMNIST v2's published numbers at every size come from the 28 px file (upsampled with NEAREST to
    ``img_size`` by the cache, as ``train_and_eval_pytorch.py --resize`` does), so that file is read unless
    ``native_size`` asks for the MedMNIST+ file of ``img_size`` (64, 128 or 224 px; a different setting).
    Binary and multi-class labels become class indices ``(N,)``; multi-label (ChestMNIST) stays ``(N, 14)``.
    """
    path, notes = locate(task, data_dir, img_size if native_size else 28, explicit)
    flag = path.name.split(".")[0].split("_")[0]
    verify_md5(path, dict(task.layout.md5))
    arrays = read_npz(path, flag)
    multi_label = task.type == "multi-label"
    stat = path.stat()
    source = f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    splits = {}
    for split in SPLITS:
        labels = arrays[f"{split}_labels"]
        labels = labels.astype(np.float32) if multi_label else labels.reshape(len(labels), -1)[:, 0].astype(np.int64)
        splits[split] = SplitData(split, labels=labels, images=arrays[f"{split}_images"], source=f"{source}:{split}")
    channels = 3 if arrays["train_images"].ndim == 4 else 1
    made = (f"upsampled to {img_size} px with NEAREST" if img_size > arrays["train_images"].shape[1] else "as stored")
    notes.append(f"data: {path} ({arrays['train_images'].shape[1]} px, {made}); md5 checked when the registry "
                 "records it")
    return TaskData(task.id, splits, tuple(task.labels), channels=channels, root=path.parent, notes=notes)
