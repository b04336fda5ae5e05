"""Decode and resize each image once into a uint8 memory-mapped array, reused by every later epoch and run.

One ``.npy`` per (task, split, size, channels) under :func:`medhub.data.paths.cache_root`, with a JSON
manifest holding the source fingerprint (every file's path, size and mtime, and the labels), the pixel
rule that decoded the files (window, photometric handling, bit-depth mapping; ``pixels``) and the sha256
of the array. A changed source folder or rule changes the key, so the stale array is replaced.
Arrays are built in a temporary file and renamed into place: a crash never leaves half an array.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from filelock import FileLock

from medhub._io import atomic_write_text, sha256_file
from medhub.cpu import usable_cpus
from medhub.data.images import (
    RESIZE_MODES,
    pixel_record,
    read_image,
    read_mask,
    resize,
    resize_cv2,
    set_channels,
)
from medhub.data.paths import cache_root
from medhub.data.progress import BAR, Progress, progress_mode, say
from medhub.data.sources import SplitData
from medhub.errors import DataError

log = logging.getLogger(__name__)
CACHE_VERSION = 4  # bump when decoding or resizing changes (3: JPEGs at a reduced DCT scale; 4: pixel rules)


@dataclass
class CachedSplit:
    """A split ready for training: ``images`` (N, C, S, S) uint8 memmap, labels, optional (N, S, S) masks."""

    name: str
    images: np.ndarray
    labels: np.ndarray
    masks: np.ndarray | None = None
    path: Path | None = None
    mask_path: Path | None = None

    def __len__(self) -> int:
        return len(self.labels)


def _decode(split: SplitData, index: int, size: int, channels: int,
            mode: str = "bilinear") -> tuple[np.ndarray, np.ndarray | None]:
    if split.images is not None:  # MedMNIST arrays: upsampled with NEAREST, as MedMNIST v2's "(224)" runs did
        image = set_channels(split.images[index], channels)
        image = resize(image, size, nearest=mode == "nearest" or size > image.shape[0])
    elif mode != "bilinear":  # the benchmark's segmentation loaders: OpenCV on the full-size image
        image = resize_cv2(mode, read_image(split.paths[index], channels=channels, decoder=split.decoder,
                                              rule=split.pixels), size)
    else:
        image = resize(read_image(split.paths[index], channels=channels, decoder=split.decoder, min_size=size,
                                  rule=split.pixels), size)
    image = image[None] if image.ndim == 2 else image.transpose(2, 0, 1)
    mask = None
    if mode == "bilinear":
        def shrink(array, side):
            return resize(array, side, nearest=True)
    else:
        def shrink(array, side):
            return resize_cv2(mode, array, side, mask=True)
    if isinstance(split.masks, np.ndarray):
        mask = shrink(split.masks[index], size)
    elif split.masks is not None:
        mask = shrink(read_mask(split.masks[index], split.pixels), size)
    return image, mask


# Room left on the disk beyond the arrays themselves, so a full cache never fills the disk to the last byte.
DISK_MARGIN_BYTES = 256 * 2**20


def cache_bytes(count: int, size: int, channels: int, *, masks: bool = False) -> int:
    """Bytes of a split's cached arrays: ``count x channels x size x size`` uint8 (plus ``count x size x size``
    for masks), the .npy headers aside."""
    return count * size * size * (channels + (1 if masks else 0))


def check_disk_space(folder: Path, needed: int, label: str) -> None:
    """Refuse a cache whose arrays would not fit on ``folder``'s disk (keeping :data:`DISK_MARGIN_BYTES` free).

    Raises:
        DataError: saying how much is needed and how much is free, before anything is written.
    """
    import shutil

    free = shutil.disk_usage(folder).free
    if needed + DISK_MARGIN_BYTES > free:
        raise DataError(f"{label}: the decode-once cache needs {_gib(needed)} but {folder} has {_gib(free)} free; "
                        "use a smaller --img-size, free space, or point MEDHUB_HOME at a larger disk", path=folder,
                        needed=needed, free=free)


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def _build(split: SplitData, size: int, channels: int, target: Path, mask_target: Path | None,
           progress: Progress, label: str, mode: str = "bilinear") -> None:
    """Decode every sample into temporary .npy files (threads), then rename them into place."""
    from tqdm.auto import tqdm

    count = len(split)
    check_disk_space(target.parent, cache_bytes(count, size, channels, masks=mask_target is not None), label)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    tmp_mask = mask_target.with_name(f".{mask_target.name}.{os.getpid()}.tmp") if mask_target else None
    try:
        images = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(count, channels, size, size))
        masks = (np.lib.format.open_memmap(tmp_mask, mode="w+", dtype=np.uint8, shape=(count, size, size))
                 if tmp_mask else None)
        workers = min(8, usable_cpus()) if split.paths is not None else 1
        say(progress, f"{label}: building the decode-once cache ({count} images; later runs reuse it)")
        with ThreadPoolExecutor(workers) as pool, tqdm(total=count, desc=label, unit="img",
                                                       disable=progress_mode(progress) != BAR, leave=False) as bar:
            for i, (image, mask) in enumerate(pool.map(lambda j: _decode(split, j, size, channels, mode), range(count))):
                images[i] = image
                if masks is not None:
                    masks[i] = mask
                bar.update()
        for array, path in ((images, tmp), (masks, tmp_mask)):
            if array is not None:
                array.flush()
                with open(path, "rb+") as handle:
                    os.fsync(handle.fileno())
        del images, masks
        os.replace(tmp, target)
        if tmp_mask:
            os.replace(tmp_mask, mask_target)
    finally:
        for path in (tmp, tmp_mask):
            if path is not None and path.exists():
                path.unlink()


def pixels_used(split: SplitData) -> dict | None:
    """The pixel rule that decodes ``split``'s files (:func:`medhub.data.images.pixel_record`); None for arrays."""
    return pixel_record(split.pixels) if split.paths is not None else None


def cache_key(task_id: str, split: SplitData, size: int, channels: int, mode: str = "bilinear") -> str:
    """Hex digest naming the cached array: changes with the source fingerprint, the pixel rule, size, channels,
    resampling and version."""
    parts = [CACHE_VERSION, task_id, split.name, size, channels, split.fingerprint(), pixels_used(split)]
    text = json.dumps(parts + ([mode] if mode != "bilinear" else []), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def _valid(manifest_path: Path, target: Path, mask_target: Path | None, key: str) -> bool:
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError):
        return False
    files = [(target, "images")] + ([(mask_target, "masks")] if mask_target else [])
    return manifest.get("key") == key and all(
        p.is_file() and p.stat().st_size == manifest.get("bytes", {}).get(kind) for p, kind in files
    )


def cached_split(task_id: str, split: SplitData, size: int, channels: int, *, progress: Progress = True,
                 root: Path | None = None, verify: bool = False, resize_mode: str = "bilinear") -> CachedSplit:
    """The split decoded at ``size x size`` with ``channels``; built on first use, memory-mapped afterwards.

    ``resize_mode``: ``bilinear`` (PIL, antialiased; masks nearest), or OpenCV from full resolution as the
    benchmark's segmentation loaders do: ``nearest`` (``cv2.INTER_NEAREST`` for image and mask, BTL
    ``Version1/dataloader.py:313-314``) or ``linear`` (``cv2.INTER_LINEAR`` for both, the mask thresholded at
    127 of 255, the DRIVE loader ``Version1/dataloader.py:356-358``).

    Raises:
        ValueError: an unknown ``resize_mode``.

    >>> # cached = cached_split("pneumoniamnist", task_data.split("train"), 28, 1)
    """
    folder = (root or cache_root()) / task_id
    folder.mkdir(parents=True, exist_ok=True)
    if resize_mode not in RESIZE_MODES:
        raise ValueError(f"unknown resize mode {resize_mode!r}; use one of {', '.join(RESIZE_MODES)}")
    key = cache_key(task_id, split, size, channels, resize_mode)
    stem = f"{split.name}-{size}px-{channels}ch" + (f"-{resize_mode}" if resize_mode != "bilinear" else "")
    target = folder / f"{stem}-{key}.npy"
    mask_target = folder / f"{stem}-{key}-masks.npy" if split.masks is not None else None
    manifest_path = folder / f"{stem}-{key}.json"
    with FileLock(str(folder / f".{stem}.lock")):  # parallel runs (grid workers) build each array once
        _ensure(task_id, split, size, channels, key, stem, (target, mask_target, manifest_path), progress, verify,
                resize_mode)
    images = np.load(target, mmap_mode="r")
    masks = np.load(mask_target, mmap_mode="r") if mask_target else None
    return CachedSplit(split.name, images, split.labels, masks, target, mask_target)


def _ensure(task_id: str, split: SplitData, size: int, channels: int, key: str, stem: str,
            paths: tuple[Path, Path | None, Path], progress: Progress, verify: bool, mode: str = "bilinear") -> None:
    """Build the array unless a valid one exists (called under the folder's lock)."""
    target, mask_target, manifest_path = paths
    folder = target.parent
    if verify and _valid(manifest_path, target, mask_target, key):
        manifest = json.loads(manifest_path.read_text())
        if sha256_file(target) != manifest["sha256"]["images"]:
            log.warning("%s does not match its manifest; rebuilding", target)
            manifest_path.unlink()
    if not _valid(manifest_path, target, mask_target, key):
        for stale in [*folder.glob(f"{stem}-*"), *folder.glob(f".{stem}-*.tmp")]:  # old keys, killed builds
            stale.unlink(missing_ok=True)
        started = time.perf_counter()
        _build(split, size, channels, target, mask_target, progress, f"decode {task_id}/{split.name} {size}px",
               mode)
        files = {"images": target, **({"masks": mask_target} if mask_target else {})}
        manifest = {
            "key": key, "task": task_id, "split": split.name, "size": size, "channels": channels,
            "resize": mode,
            "count": len(split), "source_fingerprint": split.fingerprint(), "version": CACHE_VERSION,
            "pixels": pixels_used(split),
            "bytes": {k: p.stat().st_size for k, p in files.items()},
            "sha256": {k: sha256_file(p) for k, p in files.items()},
            "seconds": round(time.perf_counter() - started, 3),
        }
        atomic_write_text(manifest_path, json.dumps(manifest, indent=1))
        log.info("cached %s/%s at %d px in %.1fs", task_id, split.name, size, manifest["seconds"])
