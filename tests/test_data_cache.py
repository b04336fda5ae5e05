"""The decode-once cache: built once, memory-mapped after, invalidated when the source changes; loaders."""

from __future__ import annotations

import json
import os
import shutil

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
