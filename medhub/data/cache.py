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
import sys
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


# Files decoded per task of the process pool: large enough to amortise a task's round trip, small enough that
# the progress bar moves and the cores share the tail of the work evenly.
CHUNK = 8
# Splits of image files this large are decoded by worker processes (each writing its slice of the array); smaller
# ones, and decoded arrays (MedMNIST), by threads in this process (forking the workers costs tens of ms).
PROCESS_MIN_IMAGES = 32


def decode_workers(split: SplitData) -> tuple[int, str]:
    """How the cache of ``split`` is built: ``(workers, "processes" | "threads")``.

    Image files use every core this process may run on (:func:`medhub.cpu.usable_cpus`): one worker process
    per core for :data:`PROCESS_MIN_IMAGES` files or more where processes can be forked (Linux: PNG
    inflation, DICOM and the resize are Python and C code that threads of one interpreter share through the
    GIL), threads below that and elsewhere. Decoded arrays (MedMNIST's ``.npz``) are resized in this thread
    only: a 28 px image costs microseconds.
    """
    if split.paths is None:
        return 1, "threads"
    cores = usable_cpus()
    if cores > 1 and sys.platform.startswith("linux") and len(split) >= PROCESS_MIN_IMAGES:
        return cores, "processes"
    return min(8, cores), "threads"


def _build(split: SplitData, size: int, channels: int, target: Path, mask_target: Path | None,
           progress: Progress, label: str, mode: str = "bilinear") -> None:
    """Decode every sample into temporary .npy files (worker processes or threads), then rename them into place.

    Memory stays bounded: each worker holds the image it decodes and writes it into the memory-mapped
    temporary file at its index; nothing is gathered in this process.
    """
    from tqdm.auto import tqdm

    count = len(split)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    tmp_mask = mask_target.with_name(f".{mask_target.name}.{os.getpid()}.tmp") if mask_target else None
    try:
        images = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(count, channels, size, size))
        masks = (np.lib.format.open_memmap(tmp_mask, mode="w+", dtype=np.uint8, shape=(count, size, size))
                 if tmp_mask else None)
        workers, kind = decode_workers(split)
        say(progress, f"{label}: building the decode-once cache ({count} images, {workers} {kind}; later runs "
                      "reuse it)")
        with tqdm(total=count, desc=label, unit="img", disable=progress_mode(progress) != BAR, leave=False) as bar:
            if kind == "processes":
                for array in (images, masks):  # the header is on disk; the workers open the files themselves
                    if array is not None:
                        array.flush()
                _decode_in_processes(split, size, channels, mode, (tmp, tmp_mask), workers, bar.update)
            else:
                _decode_in_threads(split, size, channels, mode, (images, masks), workers, bar.update)
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


def _decode_in_threads(split: SplitData, size: int, channels: int, mode: str,
                       arrays: tuple[np.ndarray, np.ndarray | None], workers: int, advance) -> None:
    images, masks = arrays
    with ThreadPoolExecutor(workers) as pool:
        for i, (image, mask) in enumerate(pool.map(lambda j: _decode(split, j, size, channels, mode),
                                                   range(len(split)))):
            images[i] = image
            if masks is not None:
                masks[i] = mask
            advance(1)


def _decode_in_processes(split: SplitData, size: int, channels: int, mode: str,
                         files: tuple[Path, Path | None], workers: int, advance) -> None:
    """Worker processes decode chunks of :data:`CHUNK` files, each writing its rows of the memory-mapped files.

    Workers are forked (as torch's DataLoader starts its workers on Linux): ``spawn`` and ``forkserver``
    would re-run an unguarded user script's top level in every worker. A worker touches only Pillow, NumPy,
    pydicom and OpenCV (one thread), none of which the parent's OpenMP pool is shared with.
    """
    import multiprocessing
    from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait

    chunks = [range(start, min(start + CHUNK, len(split))) for start in range(0, len(split), CHUNK)]
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"), initializer=_worker_setup,
                             initargs=(split, size, channels, mode, files)) as pool:
        pending = {pool.submit(_decode_rows, chunk.start, chunk.stop) for chunk in chunks}
        try:
            while pending:
                done, pending = wait(pending, return_when=FIRST_EXCEPTION)
                for future in done:
                    advance(future.result())  # a worker's DataError is raised here
        finally:
            for future in pending:
                future.cancel()


_WORKER: dict = {}


def _worker_setup(split: SplitData, size: int, channels: int, mode: str, files: tuple[Path, Path | None]) -> None:
    """In a worker process: keep the split and open the temporary files for writing (one thread per worker)."""
    try:
        import cv2

        cv2.setNumThreads(1)
    except ImportError:  # OpenCV is only needed by the segmentation loaders' resize modes
        pass
    tmp, tmp_mask = files
    _WORKER.update(split=split, size=size, channels=channels, mode=mode,
                   images=np.load(tmp, mmap_mode="r+"),
                   masks=np.load(tmp_mask, mmap_mode="r+") if tmp_mask else None)


def _decode_rows(start: int, stop: int) -> int:
    """In a worker process: decode samples ``start..stop-1`` into their rows; returns how many."""
    w = _WORKER
    for index in range(start, stop):
        image, mask = _decode(w["split"], index, w["size"], w["channels"], w["mode"])
        w["images"][index] = image
        if w["masks"] is not None:
            w["masks"][index] = mask
    return stop - start  # the rows sit in the shared page cache; the builder's fsync writes them out


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
