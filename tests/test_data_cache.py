"""The decode-once cache: built once, memory-mapped after, invalidated when the source changes; loaders."""

from __future__ import annotations

import json
import os
import shutil
import threading

import numpy as np
import pytest
import torch

from medhub._io import sha256_file
from medhub.data import load_task_data
from medhub.data.cache import cached_split
from medhub.data.loader import make_loader, set_epoch, to_model_input, train_transform
from medhub.registry import load_registry


def nih_task():
    base = load_registry().get_task("breastmnist")
    layout = base.layout.model_copy(update={"reader": "image_folder", "files": (), "md5": {}})
    return base.model_copy(update={"id": "nih1000", "labels": ("normal", "abnormal"), "layout": layout})


def test_cache_built_once_then_memory_mapped(shared_data, tmp_path):
    root = tmp_path / "NIH1000"
    for split in ("train", "test"):
        for label in ("0_normal", "1_abnormal"):
            (root / split / label).mkdir(parents=True)
            for png in sorted((shared_data / "nih_cxr14_1000_64px" / "NIH1000" / split / label).glob("*.png"))[:10]:
                shutil.copy(png, root / split / label / png.name)
    data = load_task_data(nih_task(), root)
    split = data.split("test")
    cached = cached_split("nih1000", split, 32, 1, progress=False)
    assert cached.images.shape == (20, 1, 32, 32) and cached.images.dtype == np.uint8
    assert isinstance(cached.images, np.memmap)
    manifest = json.loads(cached.path.with_suffix(".json").read_text())
    assert manifest["count"] == 20 and manifest["sha256"]["images"] == sha256_file(cached.path)
    built = cached.path.stat().st_mtime_ns

    again = cached_split("nih1000", load_task_data(nih_task(), root).split("test"), 32, 1, progress=False)
    assert again.path == cached.path and again.path.stat().st_mtime_ns == built  # reused, not rebuilt

    changed = next((root / "test" / "0_normal").glob("*.png"))
    os.utime(changed, ns=(built + 10**9, built + 10**9))  # a changed source file
    rebuilt = cached_split("nih1000", load_task_data(nih_task(), root).split("test"), 32, 1, progress=False)
    assert rebuilt.path != cached.path and not cached.path.exists()  # stale array replaced
    assert rebuilt.images.shape == (20, 1, 32, 32)
    assert list(rebuilt.path.parent.glob(".*.tmp")) == []


def test_loader_batches_are_seeded_by_epoch():
    data = load_task_data(load_registry().get_task("breastmnist"))
    cached = cached_split("breastmnist", data.split("val"), 28, 1, progress=False)
    augment = train_transform(("RandomResizedCrop(24)", "RandomHorizontalFlip", "RandomRotation(7)"), 24)
    loader = make_loader(cached, batch_size=16, shuffle=True, seed=3, transform=augment)

    def epoch(n):
        set_epoch(loader, n)
        return [(x.clone(), y.clone()) for x, y in loader]

    first, repeat, other = epoch(0), epoch(0), epoch(1)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, repeat, strict=False))
    assert not torch.equal(first[0][1], other[0][1])
    assert first[0][0].shape == (16, 1, 24, 24) and first[0][0].dtype == torch.uint8
    x = to_model_input(first[0][0], torch.device("cpu"), 3, "half")
    assert x.shape == (16, 3, 24, 24) and float(x.min()) >= -1.0 and float(x.max()) <= 1.0


def test_parallel_builders_share_one_array(tmp_path):
    """Two processes (grid workers) asking for the same array at once: one builds, both read the same file."""
    import subprocess
    import sys

    script = ("import sys, numpy as np; from medhub.registry import load_registry; from medhub.data import "
              "load_task_data; from medhub.data.cache import cached_split; "
              "d = load_task_data(load_registry().get_task('breastmnist')); "
              "c = cached_split('breastmnist', d.split('train'), 40, 1, progress=False); "
              "print(c.path, int(np.asarray(c.images, dtype=np.int64).sum()))")
    env = {**os.environ, "MEDHUB_HOME": str(tmp_path / "home")}
    procs = [subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-500:] for o in outputs]
    assert outputs[0][0] == outputs[1][0]
    folder = tmp_path / "home" / "arrays" / "breastmnist"
    assert len(list(folder.glob("train-40px-1ch-*.npy"))) == 1 and not list(folder.glob(".*.tmp"))


def test_a_file_that_cannot_be_decoded_stops_the_build_and_leaves_nothing(shared_data, tmp_path):
    """A truncated PNG among good ones: the build raises its DataError (naming the file) and leaves neither a
    temporary nor a final array behind."""
    import pytest

    from medhub.data.sources import SplitData
    from medhub.errors import DataError

    files = sorted((shared_data / "nih_cxr14_1000_64px" / "NIH1000" / "test" / "0_normal").glob("*.png"))[:20]
    broken = tmp_path / "broken.png"
    broken.write_bytes(files[0].read_bytes()[:200])
    bad = SplitData("train", labels=np.zeros(len(files), dtype=np.int64), paths=[*files[:-1], broken])
    with pytest.raises(DataError, match="broken.png"):
        cached_split("t", bad, 48, 3, progress=False, root=tmp_path / "bad")
    assert not [p for p in (tmp_path / "bad").rglob("*") if p.is_file() and p.suffix in (".tmp", ".npy", ".json")]


def test_a_cache_that_would_not_fit_on_disk_is_refused_before_writing(tmp_path, monkeypatch):
    """--img-size 2048 on BreastMNIST's train split: 546 x 2048 x 2048 bytes = 2.13 GiB, on a disk with 1 GiB
    free: refused with both figures, and no array file (sparse or not) is left."""
    from collections import namedtuple

    from medhub.data import cache
    from medhub.errors import DataError

    data = load_task_data(load_registry().get_task("breastmnist"))
    split = data.split("train")
    assert cache.cache_bytes(len(split), 2048, 1) == len(split) * 2048 * 2048 == 546 * 4 * 2**20
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(2**40, 2**40 - 2**30, 2**30))
    with pytest.raises(DataError, match=r"needs 2\.13 GiB but .* has 1\.00 GiB free; use a smaller --img-size"):
        cached_split("breastmnist", split, 2048, 1, progress=False, root=tmp_path)
    assert not [p for p in tmp_path.rglob("*") if p.suffix in (".npy", ".tmp")]


def _xray_pngs(shared_data, folder, count: int, side: int):
    """``count`` real chest X-rays upscaled to ``side`` px grey PNGs (slow enough to decode that a reader
    asking early has to wait)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    sources = sorted((shared_data / "nih_cxr14_1000_64px" / "NIH1000" / "test" / "0_normal").glob("*.png"))[:count]
    paths = []
    for i, source in enumerate(sources):
        target = folder / f"{i:03d}.png"
        with Image.open(source) as image:
            image.convert("L").resize((side, side), Image.BICUBIC).save(target)
        paths.append(target)
    return paths


def test_a_split_decoded_while_the_first_epoch_trains_gives_the_blocking_builds_array_and_batches(shared_data,
                                                                                                   tmp_path):
    """``first_order``: cached_split returns before the rows are decoded; the loader waits for each batch's rows
    (the last row of the order is asked for at once), and the arrays, manifest and batches equal a blocking
    build's. Afterwards the file lock is free and the array is reused."""
    from medhub.data.loader import epoch_order
    from medhub.data.sources import SplitData

    paths = _xray_pngs(shared_data, tmp_path / "png", 24, 768)
    split = SplitData("train", labels=np.arange(24) % 2, paths=paths)
    blocking = cached_split("t", split, 64, 1, progress=False, root=tmp_path / "a")
    order = epoch_order(24, True, 5, 0)
    streamed = cached_split("t", split, 64, 1, progress=False, root=tmp_path / "b", first_order=order)
    assert streamed.building is not None
    last = order[-1]
    streamed.wait([last])  # decoded last: this waits for the whole order
    assert np.array_equal(streamed.images[last], blocking.images[last])

    def batches(cached, epochs):
        loader = make_loader(cached, batch_size=5, shuffle=True, seed=5)
        out = []
        for n in range(epochs):
            set_epoch(loader, n)
            out += [(x.clone(), y.clone()) for x, y in loader]
        return out

    again = cached_split("t", split, 64, 1, progress=False, root=tmp_path / "c", first_order=order)
    got, want = batches(again, 2), batches(blocking, 2)
    assert len(got) == len(want) == 10
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(got, want, strict=True))
    for cached in (streamed, again):
        cached.finish_build()
        assert cached.building is None and np.array_equal(np.load(cached.path), np.load(blocking.path))
        manifest = json.loads(cached.path.with_suffix(".json").read_text())
        expected = json.loads(blocking.path.with_suffix(".json").read_text())
        assert {k: v for k, v in manifest.items() if k != "seconds"} == {
            k: v for k, v in expected.items() if k != "seconds"}
        assert not list(cached.path.parent.glob(".*.tmp"))
    reused = cached_split("t", split, 64, 1, progress=False, root=tmp_path / "b", first_order=order)
    assert reused.building is None and reused.path == streamed.path  # lock released, array valid: not rebuilt


def test_a_background_build_that_fails_raises_to_the_reader_and_leaves_nothing(shared_data, tmp_path):
    """A truncated PNG decoded in the background: the batch that needs it raises its DataError (naming the file),
    nothing is left in the cache folder, and the lock is free for the next build."""
    from medhub.data.sources import SplitData
    from medhub.errors import DataError

    paths = _xray_pngs(shared_data, tmp_path / "png", 12, 256)
    broken = tmp_path / "png" / "broken.png"
    broken.write_bytes(paths[0].read_bytes()[:200])
    bad = SplitData("train", labels=np.zeros(13, dtype=np.int64), paths=[*paths, broken])
    cached = cached_split("t", bad, 32, 1, progress=False, root=tmp_path / "bad", first_order=list(range(13)))
    loader = make_loader(cached, batch_size=13, shuffle=False)
    with pytest.raises(DataError, match="broken.png"):
        next(iter(loader))
    with pytest.raises(DataError, match="broken.png"):
        cached.finish_build()
    assert not [p for p in (tmp_path / "bad").rglob("*") if p.is_file() and p.suffix in (".tmp", ".npy", ".json")]
    good = SplitData("train", labels=np.zeros(12, dtype=np.int64), paths=paths)
    assert cached_split("t", good, 32, 1, progress=False, root=tmp_path / "bad").images.shape == (12, 1, 32, 32)


def test_loader_workers_wait_for_a_background_build_and_read_the_finished_array(shared_data, tmp_path):
    from medhub.data.sources import SplitData

    paths = _xray_pngs(shared_data, tmp_path / "png", 8, 256)
    split = SplitData("train", labels=np.arange(8) % 2, paths=paths)
    cached = cached_split("t", split, 32, 1, progress=False, root=tmp_path / "w", first_order=list(range(8))[::-1])
    loader = make_loader(cached, batch_size=4, shuffle=False, num_workers=1)
    assert cached.building is None and cached.path.is_file()
    images = torch.cat([x for x, _ in loader])
    assert torch.equal(images, torch.from_numpy(np.load(cached.path)))


def test_first_order_must_be_a_permutation_and_a_bad_one_writes_nothing(tmp_path):
    data = load_task_data(load_registry().get_task("breastmnist"))
    split = data.split("val")
    with pytest.raises(ValueError, match="permutation"):
        cached_split("breastmnist", split, 28, 1, progress=False, root=tmp_path, first_order=[0, 0, 1])
    assert not [p for p in tmp_path.rglob("*") if p.suffix in (".npy", ".tmp", ".json")]
    assert cached_split("breastmnist", split, 28, 1, progress=False, root=tmp_path).building is None


def test_a_second_call_in_the_thread_that_started_a_background_build_waits_for_it(shared_data, tmp_path,
                                                                                  monkeypatch):
    """A run that fails during its first epoch leaves its build decoding; calling cached_split for that split again
    from the same thread (the next grid cell of the task in that worker, the Python API called again) waits for
    the build and reuses its array. filelock 4 refuses an endless wait for a lock that another instance took in
    this thread (a "Deadlock" RuntimeError), although the build thread releases it without this one."""
    from PIL import Image

    from medhub.data import images
    from medhub.data.sources import SplitData

    gate = threading.Event()  # holds the build until the second call has started

    def gated_png(path, rule):
        gate.wait()
        return images.read_pil(path, rule=rule)

    monkeypatch.setitem(images.DECODERS, "gated_png", gated_png)
    paths = _xray_pngs(shared_data, tmp_path / "png", 6, 64)
    split = SplitData("train", labels=np.arange(6) % 2, paths=paths, decoder="gated_png")
    first = cached_split("t", split, 32, 1, progress=False, root=tmp_path / "c", first_order=[5, 4, 3, 2, 1, 0])
    assert first.building is not None
    opener = threading.Timer(1.0, gate.set)
    opener.start()
    try:
        second = cached_split("t", split, 32, 1, progress=False, root=tmp_path / "c")
    finally:
        gate.set()
        opener.cancel()
    expected = np.stack([np.asarray(Image.open(p).resize((32, 32), Image.Resampling.BILINEAR)) for p in paths])
    assert second.building is None and np.array_equal(second.images[:, 0], expected)
    first.finish_build()
    assert second.path == first.path and np.array_equal(first.images[:, 0], expected)


def test_a_build_whose_thread_cannot_start_leaves_nothing_and_frees_the_lock(tmp_path, monkeypatch):
    """``can't start new thread`` (a process at its thread limit): the error reaches the caller, the temporary
    array is removed and the folder's lock is free, so the next call builds normally."""
    import threading

    data = load_task_data(load_registry().get_task("breastmnist"))
    split = data.split("val")

    def refuse(self):
        raise RuntimeError("can't start new thread")

    with monkeypatch.context() as patch:
        patch.setattr(threading.Thread, "start", refuse)
        with pytest.raises(RuntimeError, match="start new thread"):
            cached_split("breastmnist", split, 28, 1, progress=False, root=tmp_path)
    assert not [p for p in tmp_path.rglob("*") if p.suffix in (".npy", ".tmp", ".json")]
    assert cached_split("breastmnist", split, 28, 1, progress=False, root=tmp_path).images.shape[0] == len(split)
