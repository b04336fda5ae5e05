"""Decode and resize each image once into a uint8 memory-mapped array, reused by every later epoch and run.

One ``.npy`` per (task, split, size, channels) under :func:`medhub.data.paths.cache_root`, with a JSON
manifest holding the source fingerprint (every file's path, size and mtime, and the labels), the pixel
rule that decoded the files (window, photometric handling, bit-depth mapping; ``pixels``) and the sha256
of the array. A changed source folder or rule changes the key, so the stale array is replaced.
Arrays are built in a temporary file and renamed into place: a crash never leaves half an array.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from filelock import FileLock, Timeout

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
    building: CacheBuild | None = None  # set while the arrays are still being decoded (``first_order``)

    def __len__(self) -> int:
        return len(self.labels)

    def wait(self, indices) -> None:
        """Block until the rows ``indices`` are decoded (no-op once built); raises the build's error."""
        if self.building is not None:
            self.building.wait(indices)

    def finish_build(self) -> None:
        """Block until a background build has put the arrays in place; raises its error. No-op when built."""
        if self.building is not None:
            self.building.join()
            self.building = None


def _decode(split: SplitData, index: int, size: int, channels: int,
            mode: str = "bilinear") -> tuple[np.ndarray, np.ndarray | None]:
    if split.images is not None:  # MedMNIST arrays: upsampled with NEAREST, as MedMNIST v2's "(224)" runs did
        image = set_channels(split.images[index], channels)
        image = resize(image, size, nearest=mode == "nearest" or size > image.shape[0])
    elif mode != "bilinear":  # the benchmark's segmentation loaders: OpenCV on the full-size image
        image = resize_cv2(mode, read_image(split.paths[index], channels=channels, decoder=split.decoder,
                                              rule=split.pixels), size)
    else:
        image = read_image(split.paths[index], channels=channels, decoder=split.decoder, min_size=size,
                           rule=split.pixels, size=size)
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


class CacheBuild:
    """Decodes a split into its temporary arrays on threads (one per usable core), rows in a chosen order.

    The rows are written straight into memory-mapped temporary files (memory stays bounded: no decoded image
    waits in a queue). When every row is in, the arrays are flushed, fsync'ed and renamed into place and
    ``finish`` (the manifest) runs; on an error or :meth:`cancel` the temporary files are removed instead.
    ``release`` (the folder's file lock) runs last either way. Readers of a split still being built call
    :meth:`wait` with the rows they need: with ``order`` equal to the first epoch's sample order, training
    starts as soon as the first batch is decoded and the build overlaps the first epoch.
    """

    def __init__(self, split: SplitData, size: int, channels: int, mode: str, targets: tuple[Path, Path | None],
                 order: Sequence[int] | None, finish: Callable[[], None], release: Callable[[], None]):
        target, mask_target = targets
        count = len(split)
        self.order = list(range(count)) if order is None else [int(i) for i in order]
        if sorted(self.order) != list(range(count)):
            raise ValueError(f"first_order must be a permutation of range({count}), the split's indices")
        self.split, self.size, self.channels, self.mode = split, size, channels, mode
        self.targets, self.finish, self.release = targets, finish, release
        self.tmp = [target.with_name(f".{target.name}.{os.getpid()}.tmp"),
                    mask_target.with_name(f".{mask_target.name}.{os.getpid()}.tmp") if mask_target else None]
        try:
            self.images = np.lib.format.open_memmap(self.tmp[0], mode="w+", dtype=np.uint8,
                                                    shape=(count, channels, size, size))
            self.masks = (np.lib.format.open_memmap(self.tmp[1], mode="w+", dtype=np.uint8,
                                                    shape=(count, size, size)) if self.tmp[1] else None)
        except BaseException:
            self._remove_temporary()
            raise
        self.ready = np.zeros(count, dtype=bool)
        self.taken, self.error, self.cancelled = 0, None, False
        self.condition = threading.Condition()
        self.done = threading.Event()
        self.workers = min(8, usable_cpus()) if split.paths is not None else 1

    def start(self) -> CacheBuild:
        """Start decoding in the background; returns ``self``.

        Raises:
            RuntimeError: the thread could not be started (temporary files removed, lock released).
        """
        with _BUILDS_LOCK:
            _BUILDS.add(self)
        try:
            threading.Thread(target=self._run, name="medhub-cache-build", daemon=True).start()
        except BaseException:
            self._close()
            raise
        return self

    def wait(self, indices) -> None:
        """Block until the rows ``indices`` are decoded.

        Raises:
            DataError: the build failed (or the decoder's own error) or was cancelled first.
        """
        with self.condition:
            while not self.ready[indices].all():
                self._raise_if_stopped()
                self.condition.wait()

    def join(self, progress: Progress = False, label: str = "") -> None:
        """Block until the arrays are in place (or removed after a failure), with a progress bar if asked.

        Raises:
            DataError: the build failed (or the decoder's own error) or was cancelled.
        """
        from tqdm.auto import tqdm

        with tqdm(total=len(self.order), desc=label, unit="img", disable=progress_mode(progress) != BAR,
                  leave=False) as bar:
            while not self.done.wait(0.2):
                bar.update(int(self.ready.sum()) - bar.n)
            bar.update(int(self.ready.sum()) - bar.n)
        with self.condition:
            self._raise_if_stopped()

    def cancel(self) -> None:
        """Stop decoding new rows; a build whose rows are all decoded still finishes."""
        with self.condition:
            self.cancelled = True
            self.condition.notify_all()

    def _raise_if_stopped(self) -> None:
        if self.error is not None:
            raise self.error
        if self.cancelled and not self.ready.all():
            raise DataError(f"{self.targets[0].name}: the decode-once cache build was cancelled; run again",
                            path=self.targets[0])

    def _next(self) -> int | None:
        with self.condition:
            if self.error is not None or self.cancelled or self.taken >= len(self.order):
                return None
            self.taken += 1
            return self.order[self.taken - 1]

    def _work(self) -> None:
        while (index := self._next()) is not None:
            try:
                image, mask = _decode(self.split, index, self.size, self.channels, self.mode)
                self.images[index] = image
                if self.masks is not None:
                    self.masks[index] = mask
            except BaseException as exc:  # noqa: BLE001 - handed to every reader
                with self.condition:
                    self.error = self.error or exc
                    self.condition.notify_all()
                return
            with self.condition:
                self.ready[index] = True
                self.condition.notify_all()

    def _run(self) -> None:
        try:
            threads = [threading.Thread(target=self._work, name=f"medhub-decode-{i}", daemon=True)
                       for i in range(self.workers)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            if self.error is None and self.ready.all():
                self._put_in_place()
        except BaseException as exc:  # noqa: BLE001 - disk full at fsync, a manifest that cannot be written
            with self.condition:
                self.error = self.error or exc
        finally:
            self._close()

    def _remove_temporary(self) -> None:
        for path in self.tmp:
            if path is not None:
                path.unlink(missing_ok=True)  # already renamed into place after a successful build

    def _close(self) -> None:
        """The end of a build, successful or not: temporary files gone, lock released, readers woken."""
        self._remove_temporary()
        self.release()
        with _BUILDS_LOCK:
            _BUILDS.discard(self)
        with self.condition:
            self.condition.notify_all()
        self.done.set()

    def _put_in_place(self) -> None:
        for array, path in ((self.images, self.tmp[0]), (self.masks, self.tmp[1])):
            if array is not None:
                array.flush()
                with open(path, "rb+") as handle:
                    os.fsync(handle.fileno())
        for path, target in zip(self.tmp, self.targets, strict=True):
            if path is not None:
                os.replace(path, target)
        self.finish()


_BUILDS: set[CacheBuild] = set()
_BUILDS_LOCK = threading.Lock()


@atexit.register
def _stop_builds() -> None:
    """At exit, builds still decoding stop and remove their temporary files; finished ones complete."""
    with _BUILDS_LOCK:
        builds = list(_BUILDS)
    for build in builds:
        build.cancel()
    for build in builds:
        build.done.wait()


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
                 root: Path | None = None, verify: bool = False, resize_mode: str = "bilinear",
                 first_order: Sequence[int] | None = None) -> CachedSplit:
    """The split decoded at ``size x size`` with ``channels``; built on first use, memory-mapped afterwards.

    ``resize_mode``: ``bilinear`` (PIL, antialiased; masks nearest), or OpenCV from full resolution as the
    benchmark's segmentation loaders do: ``nearest`` (``cv2.INTER_NEAREST`` for image and mask, BTL
    ``Version1/dataloader.py:313-314``) or ``linear`` (``cv2.INTER_LINEAR`` for both, the mask thresholded at
    127 of 255, the DRIVE loader ``Version1/dataloader.py:356-358``).

    ``first_order``: when the array must be built, decode the rows in this order (a permutation of the
    split's indices, e.g. the first epoch's, :func:`medhub.data.loader.epoch_order`) in the background and
    return at once: the split's ``building`` is set, readers wait for the rows they need
    (:meth:`CachedSplit.wait`, which the loader calls), and :meth:`CachedSplit.finish_build` waits for the
    end. The arrays, manifest and file lock are the same as a blocking build's; a build still running at
    exit is cancelled and leaves nothing behind.

    Raises:
        ValueError: an unknown ``resize_mode``; a ``first_order`` that is not a permutation.
        DataError: a file cannot be decoded (from a blocking build; a background one raises it to readers),
            or the arrays would not fit on the disk.

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
    # parallel runs (grid workers) build each array once; a background build releases the lock when it ends
    lock = FileLock(str(folder / f".{stem}.lock"), thread_local=False)
    _acquire(lock)
    try:
        build = _ensure(task_id, split, size, channels, key, stem, (target, mask_target, manifest_path), verify,
                        resize_mode, first_order, lock.release)
    except BaseException:
        lock.release()
        raise
    if build is None:
        lock.release()
    else:
        label = f"decode {task_id}/{split.name} {size}px"
        if first_order is not None:
            say(progress, f"{label}: decoding {len(split)} images into the decode-once cache while the first "
                          "epoch trains (later runs reuse it)")
            build.start()
            return CachedSplit(split.name, build.images, split.labels, build.masks, target, mask_target, build)
        say(progress, f"{label}: building the decode-once cache ({len(split)} images; later runs reuse it)")
        build.start().join(progress, label)
    images = np.load(target, mmap_mode="r")
    masks = np.load(mask_target, mmap_mode="r") if mask_target else None
    return CachedSplit(split.name, images, split.labels, masks, target, mask_target)


def _acquire(lock: FileLock) -> None:
    """Take the folder's lock, however long another build (another process's, or this one's) holds it.

    Polled with a finite timeout: filelock 4 refuses an endless wait for a lock that another instance took in
    this thread, as a deadlock, but a background build started here by an earlier call (whose run then failed
    or was interrupted) holds it until its own thread ends and releases it, without this thread's help.
    """
    while True:
        try:
            lock.acquire(timeout=1.0)
            return
        except Timeout:
            continue


def _ensure(task_id: str, split: SplitData, size: int, channels: int, key: str, stem: str,
            paths: tuple[Path, Path | None, Path], verify: bool, mode: str, order: Sequence[int] | None,
            release: Callable[[], None]) -> CacheBuild | None:
    """A (not yet started) build of the array, or None when a valid one exists (called under the folder's lock)."""
    target, mask_target, manifest_path = paths
    folder = target.parent
    if verify and _valid(manifest_path, target, mask_target, key):
        manifest = json.loads(manifest_path.read_text())
        if sha256_file(target) != manifest["sha256"]["images"]:
            log.warning("%s does not match its manifest; rebuilding", target)
            manifest_path.unlink()
    if _valid(manifest_path, target, mask_target, key):
        return None
    for stale in [*folder.glob(f"{stem}-*"), *folder.glob(f".{stem}-*.tmp")]:  # old keys, killed builds
        stale.unlink(missing_ok=True)
    check_disk_space(folder, cache_bytes(len(split), size, channels, masks=mask_target is not None),
                     f"decode {task_id}/{split.name} {size}px")
    started = time.perf_counter()

    def finish() -> None:
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

    return CacheBuild(split, size, channels, mode, (target, mask_target), order, finish, release)
