"""Batches from cached uint8 arrays: augmentation on the arrays, normalization on the model's device.

A loader yields ``(images, targets)`` with images still uint8 ``(B, C, H, W)``; :func:`to_model_input`
turns them into normalized floats on the device, so workers ship 4x fewer bytes. Randomness comes
from a generator seeded by ``(seed, epoch)``: the same epoch gives the same batches, which is what
lets ``--resume`` end where an uninterrupted run would.
"""

from __future__ import annotations

import functools
import logging
import re

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from medhub.data.augment import GeometricAugment
from medhub.data.cache import CachedSplit
from medhub.data.sources import UNCERTAIN

log = logging.getLogger(__name__)

NORMALIZATION = {
    "half": ((0.5,), (0.5,)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "chestx-ray": ((0.5056,), (0.252,)),
    "none": ((0.0,), (1.0,)),
}


def train_transform(names: tuple[str, ...] | list[str], size: int, segmentation: bool = False,
                    batched: bool = True) -> GeometricAugment | v2.Compose | None:
    """The protocol's augmentations by name (random_resized_crop, horizontal_flip, rotation_7, ...).

    When every step is geometric (crops, flips, rotation) and ``batched`` is true, the result is one
    :class:`~medhub.data.augment.GeometricAugment` that resamples each batch once; otherwise torchvision's
    per-image transforms.
    """
    steps = [step for step in (_parse_step(name) for name in names) if step is not None]
    if not steps:
        return None
    if batched and all(kind in _GEOMETRIC for kind, _ in steps):
        return _batched(steps, size, segmentation)
    return v2.Compose([_torchvision_step(kind, arg, size, segmentation) for kind, arg in steps])


_GEOMETRIC = ("crop", "hflip", "vflip", "rotate")


def _parse_step(name: str) -> tuple[str, float | None] | None:
    """``("crop" | "hflip" | "vflip" | "rotate" | "color" | "elastic", argument)`` for a protocol name."""
    low = name.lower()
    if ("resized" in low or "sized" in low) and "crop" in low:
        return "crop", None
    if "flip" in low:
        return ("vflip" if "vertical" in low else "hflip"), None
    if "rot" in low:
        return "rotate", float(next(iter(re.findall(r"\d+(?:\.\d+)?", low)), 10))
    if "bright" in low or "contrast" in low or "gamma" in low:
        return "color", None
    if "elastic" in low or "distort" in low:
        return "elastic", None
    log.warning("augmentation '%s' is not known to medhub; skipped", name)
    return None


def describe_augment(names: tuple[str, ...] | list[str], size: int, segmentation: bool = False) -> list[dict]:
    """The steps :func:`train_transform` applies for ``names``, with their parameters (the plan's ``augment``).

    Each step is a dict with ``step`` (random_resized_crop, horizontal_flip, vertical_flip, rotation,
    color, elastic) and the parameters medhub uses, plus ``as_named`` (the protocol's own wording).
    """
    steps = []
    for name in names:
        parsed = _parse_step(name)
        if parsed is None:
            steps.append({"step": "skipped", "as_named": name, "why": "not known to medhub"})
            continue
        kind, arg = parsed
        if kind == "crop":
            scale, p = _crop_settings(segmentation)
            step = {"step": "random_resized_crop", "size": size, "scale": list(scale), "ratio": [3 / 4, 4 / 3], "p": p}
        elif kind in ("hflip", "vflip"):
            step = {"step": "horizontal_flip" if kind == "hflip" else "vertical_flip", "p": 0.5}
        elif kind == "rotate":
            step = {"step": "rotation", "degrees": arg, "fill": 0}
        elif kind == "color":
            step = {"step": "color", "brightness": 0.2, "contrast": 0.2, "p": 0.3}
        else:
            step = {"step": "elastic", "alpha": 30.0, "p": 0.3}
        steps.append({**step, "as_named": name})
    return steps


def _crop_settings(segmentation: bool) -> tuple[tuple[float, float], float]:
    """(area scale, probability) of the random resized crop: the benchmark's segmentation recipe is milder."""
    return ((0.49, 1.0), 0.25) if segmentation else ((0.08, 1.0), 1.0)


def _batched(steps: list[tuple[str, float | None]], size: int, segmentation: bool) -> GeometricAugment:
    kinds = {kind: arg for kind, arg in steps}
    scale, p = _crop_settings(segmentation)
    return GeometricAugment(size, crop_scale=scale if "crop" in kinds else None, crop_p=p if "crop" in kinds else 1.0,
                            hflip="hflip" in kinds, vflip="vflip" in kinds, degrees=float(kinds.get("rotate") or 0.0))


def _torchvision_step(kind: str, arg: float | None, size: int, segmentation: bool):
    if kind == "crop":
        scale, p = _crop_settings(segmentation)
        crop = v2.RandomResizedCrop(size, scale=scale, antialias=True)
        return v2.RandomApply([crop], p=p) if p < 1 else crop
    if kind in ("hflip", "vflip"):
        return v2.RandomVerticalFlip() if kind == "vflip" else v2.RandomHorizontalFlip()
    if kind == "rotate":
        return v2.RandomRotation(arg)
    if kind == "color":
        return v2.RandomApply([v2.ColorJitter(brightness=0.2, contrast=0.2)], p=0.3)
    return v2.RandomApply([v2.ElasticTransform(alpha=30.0)], p=0.3)


def draw_uncertain(labels: np.ndarray, bounds: tuple[float, float], seed: int) -> np.ndarray:
    """``labels`` with every :data:`~medhub.data.sources.UNCERTAIN` entry drawn from ``uniform(*bounds)``.

    CheXpert's LSR-Ones (BenchmarkTransferLearning Version2/dataloader.py:167-176): a fresh soft label each
    time a sample is read. The draw depends on ``seed`` only (the loader's per-(run seed, epoch, batch) seed),
    so a resumed run reads the same labels as an uninterrupted one.
    """
    mask = labels == UNCERTAIN
    if not mask.any():
        return labels
    out = labels.astype(np.float32, copy=True)
    out[mask] = np.random.default_rng(seed).uniform(bounds[0], bounds[1], size=int(mask.sum()))
    return out


class BatchDataset(torch.utils.data.Dataset):
    """Indexable by a list of sample indices: one item is one batch, gathered from the memmap at once."""

    def __init__(self, split: CachedSplit, transform: GeometricAugment | v2.Compose | None = None,
                 crop: int | None = None, uncertain_range: tuple[float, float] | None = None):
        self.split = split
        self.transform = transform
        self.uncertain_range = uncertain_range  # labels equal to UNCERTAIN drawn per read (LSR-Ones)
        self.crop = crop  # center crop for evaluation (resize 256 -> crop 224)

    def __len__(self) -> int:
        return len(self.split)

    def __getstate__(self) -> dict:
        """Workers reopen the memory maps by path instead of receiving a pickled copy of the arrays."""
        state = dict(self.__dict__)
        split = self.split
        if isinstance(split.images, np.memmap) and split.path is not None:
            state["split"] = CachedSplit(split.name, None, split.labels, None, split.path, split.mask_path)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        split = self.split
        if split.images is None:
            masks = np.load(split.mask_path, mmap_mode="r") if split.mask_path else None
            self.split = CachedSplit(split.name, np.load(split.path, mmap_mode="r"), split.labels, masks, split.path,
                                     split.mask_path)

    def __getitem__(self, item: tuple[int, list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        batch_seed, indices = item
        order = np.sort(np.asarray(indices))
        self.split.wait(order)  # a cache still being built: these rows first
        where = np.searchsorted(order, indices)
        images = torch.from_numpy(np.ascontiguousarray(self.split.images[order]))[where]
        masks = None
        if self.split.masks is not None:
            masks = torch.from_numpy(np.ascontiguousarray(self.split.masks[order]))[where]
        if isinstance(self.transform, GeometricAugment):  # augmentation depends on (seed, epoch, batch) only
            images, masks = self.transform(images, masks, torch.Generator().manual_seed(batch_seed))
        elif hasattr(self.transform, "augment_batch"):  # albumentations (segmentation), seeded per batch
            images, masks = self.transform.augment_batch(images, masks, batch_seed)
        elif self.transform is not None:
            torch.manual_seed(batch_seed)
            images, masks = self._augment(images, masks)
        if self.crop:
            images = v2.functional.center_crop(images, [self.crop, self.crop])
            masks = v2.functional.center_crop(masks, [self.crop, self.crop]) if masks is not None else None
        if masks is not None:
            return images, masks
        labels = np.array(self.split.labels[np.asarray(indices)])
        if self.uncertain_range is not None:
            labels = draw_uncertain(labels, self.uncertain_range, batch_seed)
        return images, torch.as_tensor(labels)

    def _augment(self, images: torch.Tensor, masks: torch.Tensor | None):
        out_images, out_masks = [], []
        for i in range(len(images)):
            if masks is None:
                out_images.append(self.transform(images[i]))
            else:
                image, mask = self.transform(tv_tensors.Image(images[i]), tv_tensors.Mask(masks[i]))
                out_images.append(image.as_subclass(torch.Tensor))
                out_masks.append(mask.as_subclass(torch.Tensor))
        return torch.stack(out_images), (torch.stack(out_masks) if masks is not None else None)


def epoch_order(count: int, shuffle: bool, seed: int, epoch: int) -> list[int]:
    """The sample order of one epoch of :func:`make_loader` (``randperm`` seeded by ``(seed, epoch)``, or
    ``0..count-1`` unshuffled); e.g. the order to build a cache in while the first epoch trains."""
    if not shuffle:
        return list(range(count))
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(count, generator=generator).tolist()


class EpochBatches(torch.utils.data.Sampler):
    """``(batch_seed, indices)`` per batch, shuffled by a generator seeded from ``(seed, epoch)``."""

    def __init__(self, count: int, batch_size: int, shuffle: bool, seed: int = 0):
        self.count, self.batch_size, self.shuffle, self.seed, self.epoch = count, batch_size, shuffle, seed, 0

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose order the next iteration yields."""
        self.epoch = epoch

    def __len__(self) -> int:
        return (self.count + self.batch_size - 1) // self.batch_size

    def __iter__(self):
        order = epoch_order(self.count, self.shuffle, self.seed, self.epoch)
        for number, start in enumerate(range(0, self.count, self.batch_size)):
            batch_seed = (self.seed * 1_000_003 + self.epoch * 10_007 + number) % (2**63)
            yield batch_seed, order[start:start + self.batch_size]


def make_loader(split: CachedSplit, *, batch_size: int, shuffle: bool, seed: int = 0,
                transform: GeometricAugment | v2.Compose | None = None, crop: int | None = None, num_workers: int = 0,
                pin_memory: bool = False, uncertain_range: tuple[float, float] | None = None
                ) -> torch.utils.data.DataLoader:
    """A DataLoader whose items are whole batches (no per-sample collate); call ``.batch_sampler.set_epoch``.

    A split still being decoded (``cached_split(..., first_order=)``) is read as its rows arrive when
    ``num_workers`` is 0; with workers, the build is waited for first.
    ``uncertain_range``: labels stored as UNCERTAIN are drawn from it for every batch read (LSR-Ones).
    """
    if num_workers > 0:  # worker processes read the finished array by path
        split.finish_build()
    sampler = EpochBatches(len(split), batch_size, shuffle, seed)
    return torch.utils.data.DataLoader(
        BatchDataset(split, transform, crop, uncertain_range), sampler=sampler, batch_size=None, num_workers=num_workers,
        pin_memory=pin_memory, persistent_workers=num_workers > 0,
        worker_init_fn=None, generator=torch.Generator().manual_seed(seed),
    )


def default_workers(device: torch.device) -> int:
    """Loader worker processes for training on ``device``: up to 8 next to a GPU, none on a CPU.

    On a CPU the model's own threads use every core and the cached pipeline costs well under a millisecond
    per image, so worker processes would only compete with the model.
    """
    from medhub.cpu import usable_cpus

    return min(8, usable_cpus()) if device.type == "cuda" else 0


def set_epoch(loader: torch.utils.data.DataLoader, epoch: int) -> None:
    """Make ``loader`` yield the batch order of ``epoch``."""
    loader.sampler.set_epoch(epoch)


def normalization_stats(normalization: str | tuple, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel ``(mean, std)`` (pixel / 255 scale) that :func:`to_model_input` applies for ``channels`` inputs.

    ``normalization`` is a name in :data:`NORMALIZATION` (an unknown name means ImageNet) or a ``(mean, std)``
    pair; statistics of another channel count are averaged and repeated (ImageNet on 1 channel -> 0.449/0.226).
    """
    mean, std = NORMALIZATION.get(normalization, NORMALIZATION["imagenet"]) if isinstance(normalization, str) \
        else normalization
    if len(mean) != channels:
        mean, std = (sum(mean) / len(mean),) * channels, (sum(std) / len(std),) * channels
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


def to_model_input(images: torch.Tensor, device: torch.device, channels: int, normalization: str | tuple,
                   channels_last: bool = False) -> torch.Tensor:
    """uint8 (B, C, H, W) -> float normalized on ``device``, with gray replicated to 3 channels if needed.

    The constants (mean, std, BT.601 weights) are kept on ``device`` once per setting: building them from
    Python lists every batch is a blocking host-to-device copy on a GPU, which waits for every queued kernel
    and so stops the host from running ahead of the GPU.
    """
    x = images.to(device, non_blocking=True).float().div_(255.0)
    mean, std = normalization_stats(normalization, channels)
    mean_t, std_t, luma = _input_constants(x.device, mean, std)  # x.device names the GPU index
    if x.shape[1] == 1 and channels == 3:
        x = x.expand(-1, 3, -1, -1)
    elif x.shape[1] == 3 and channels == 1:
        x = (x * luma).sum(1, keepdim=True)
    x = (x - mean_t) / std_t
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


@functools.lru_cache(maxsize=64)
def _input_constants(device: torch.device, mean: tuple[float, ...], std: tuple[float, ...]
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(mean, std, BT.601 luma weights)`` as ``(1, C, 1, 1)`` tensors on ``device``, made once per setting."""
    def column(values) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.float32).view(1, -1, 1, 1).to(device)

    return column(mean), column(std), column((0.299, 0.587, 0.114))
