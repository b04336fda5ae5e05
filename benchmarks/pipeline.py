"""Benchmark 3: one training epoch over 1024x1024 grayscale PNGs, medhub's pipeline versus the original recipe.

The PNGs are real chest X-rays (``../shared/data/nih_cxr14_1000_64px``, NIH ChestX-ray14 at 64 px) upscaled
to 1024x1024 (bicubic), written once to a temporary folder. Both sides train the same small timm model
(identical initial weights), batch size, optimizer (Adam, lr 1e-4), loss and DataLoader worker count:

* original recipe: a Dataset that opens each PNG with PIL (``convert("RGB")``) and applies
  RandomResizedCrop(224), RandomHorizontalFlip, RandomRotation(7), ToTensor, Normalize, every epoch; a
  bare training loop.
* medhub: :func:`medhub.data.cache.cached_split` decodes and resizes every image once to a uint8
  memory-mapped array (256 px, 1 channel: what ``medhub reproduce`` caches for a 224 px protocol), then
  :func:`medhub.data.loader.make_loader` with :func:`medhub.data.loader.train_transform` (the same three
  augmentations, batched, on the cached arrays) and :func:`medhub.train.loop.train_epoch`.

Each round runs, per side, a first epoch (medhub: into an empty cache folder, so it includes building the
cache; original: a new DataLoader) and a later epoch (cache built, same loader); sides alternate A,B / B,A.
The same rounds are repeated without the model ("data only": iterate the loader and make the model's input)
to show the pipeline on its own, with a third side: medhub's cache with torchvision's per-image transforms.
Ratios: recipe seconds / medhub seconds, the median over rounds. Goal: a later epoch >= 3x faster with
medhub. The JSON also splits a later epoch into per-image data and model-step costs, which bound the ratio
any pipeline could reach with the chosen model (:func:`model_bound`). Last stdout line: JSON.

    python benchmarks/pipeline.py --quick
    python benchmarks/pipeline.py --quick --arch-kwargs '{"patch_size": 16}'   # a 3x costlier model step
    python benchmarks/pipeline.py --device cuda --workers 8 --threads 8        # on a GPU
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from _common import (
    emit,
    interleaved_records,
    machine,
    median,
    note,
    paired_ratio,
    parser,
    ratio,
    setup_torch,
    sync,
)

SHARED = Path(
    os.environ.get("MEDHUB_SHARED", Path(__file__).resolve().parents[2] / "shared")
)  # as tests/conftest
SOURCE = SHARED / "data" / "nih_cxr14_1000_64px" / "NIH1000"
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
AUGMENT = ("random_resized_crop", "horizontal_flip", "rotation_7")  # the recipe, by medhub's names
CROP, CACHE_SIZE, SIDE = 224, 256, 1024
# The default small model: timm's test_vit (0.45 M parameters) with 32 px patches, 49 tokens at 224 px. Its
# training step on one CPU thread (~3 ms per image here) stands in for a GPU's, where the question (is
# the input pipeline the bottleneck?) arises. With 16 px patches (``--arch-kwargs '{"patch_size": 16}'``,
# ~10 ms per image) the model alone caps the ratio near 2 whatever the pipeline does: see model_bound.
SMALL_MODEL = ("test_vit", {"patch_size": 32})


def make_pngs(out: Path, count: int, source: Path = SOURCE) -> tuple[list[Path], list[int]]:
    """Upscale ``count`` real 64 px chest X-rays to 1024x1024 grayscale PNGs in ``out`` (reused if present)."""
    from PIL import Image

    files = sorted(source.glob("*/*/*.png"))
    if len(files) < count:
        raise SystemExit(f"need {count} source PNGs under {source}, found {len(files)}")
    files = files[:: max(1, len(files) // count)][:count]  # spread over splits and both classes
    out.mkdir(parents=True, exist_ok=True)
    paths, labels = [], []
    for i, src in enumerate(files):
        target = out / f"{i:05d}_{src.parent.name}.png"
        if not target.is_file():
            with Image.open(src) as image:
                image.convert("L").resize((SIDE, SIDE), Image.BICUBIC).save(target)
        paths.append(target)
        labels.append(1 if "abnormal" in src.parent.name else 0)
    return paths, labels


class RecipeDataset:
    """The original recipe: PIL open + torchvision transforms for every sample of every epoch."""

    def __init__(self, paths: list[Path], labels: list[int]):
        from torchvision import transforms as T

        self.paths, self.labels = paths, labels
        self.transform = T.Compose(
            [
                T.RandomResizedCrop(CROP),
                T.RandomHorizontalFlip(),
                T.RandomRotation(7),
                T.ToTensor(),
                T.Normalize(MEAN, STD),
            ]
        )

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        from PIL import Image

        with Image.open(self.paths[index]) as image:
            return self.transform(image.convert("RGB")), self.labels[index]


def recipe_side(model, paths, labels, batch_size: int, workers: int, with_model: bool, device):
    """One round of the original recipe: a new DataLoader, its first epoch, then a later epoch."""
    import torch
    from torch.nn import functional as F

    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)

    def epoch(loader) -> None:
        model.train()
        for images, targets in loader:
            images = images.to(device, non_blocking=True)
            if not with_model:
                continue
            loss = F.cross_entropy(model(images), targets.to(device, non_blocking=True))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        sync(device)

    def run() -> dict[str, float]:
        started = time.perf_counter()
        loader = torch.utils.data.DataLoader(
            RecipeDataset(paths, labels),
            batch_size=batch_size,
            shuffle=True,
            num_workers=workers,
            persistent_workers=workers > 0,
            pin_memory=device.type == "cuda",
        )
        epoch(loader)
        first = time.perf_counter() - started
        started = time.perf_counter()
        epoch(loader)
        later = time.perf_counter() - started
        del loader
        return {"first": first, "later": later}

    return run


def medhub_side(model, paths, labels, batch_size: int, workers: int, with_model: bool, scratch: Path, device,
                batched: bool = True):
    """One round of medhub's pipeline: build the cache in an empty folder + first epoch, then a later epoch.

    ``batched=False`` uses torchvision's per-image transforms on the cached arrays instead of
    :class:`medhub.data.augment.GeometricAugment` (what medhub did before batching).
    """
    import numpy as np

    from medhub.data.cache import cached_split
    from medhub.data.loader import epoch_order, make_loader, set_epoch, to_model_input, train_transform
    from medhub.data.sources import SplitData
    from medhub.train.loop import FitConfig, make_optimizer, train_epoch

    config = FitConfig(
        task_type="binary",
        label_names=("normal", "abnormal"),
        loss="cross_entropy",
        optimizer="adam",
        lr=1e-4,
        channels=3,
        normalization=(MEAN, STD),
        channels_last=device.type == "cuda",
    )
    optimizer = make_optimizer(model.parameters(), config)
    split = SplitData("train", labels=np.asarray(labels, dtype=np.int64), paths=list(paths))
    rounds = [0]

    def epoch(loader, number: int) -> None:
        set_epoch(loader, number)
        if with_model:
            train_epoch(model, loader, optimizer, device, config, progress=False, desc="")
        else:
            for images, _ in loader:
                to_model_input(images, device, config.channels, config.normalization)
        sync(device)

    def run() -> dict[str, float]:
        rounds[0] += 1
        root = scratch / f"cache-{rounds[0]}"
        started = time.perf_counter()
        # as medhub reproduce does with in-process loading: decode in the first epoch's order while it trains
        first_order = epoch_order(len(split), True, 0, 0) if workers == 0 else None
        cached = cached_split("bench-pipeline", split, CACHE_SIZE, 1, progress=False, root=root,
                              first_order=first_order)
        loader = make_loader(
            cached,
            batch_size=batch_size,
            shuffle=True,
            seed=0,
            transform=train_transform(AUGMENT, CROP, batched=batched),
            num_workers=workers,
            pin_memory=device.type == "cuda",
        )
        epoch(loader, 0)
        cached.finish_build()  # the array in place, as a first epoch of medhub reproduce ends
        first = time.perf_counter() - started
        started = time.perf_counter()
        epoch(loader, 1)
        later = time.perf_counter() - started
        del loader, cached
        shutil.rmtree(root, ignore_errors=True)
        return {"first": first, "later": later}

    return run


def measure(model, paths, labels, args, scratch: Path, with_model: bool, repeats: int, device) -> dict:
    """Warm the sides on a few images, then ``repeats`` interleaved rounds; medians and ratios.

    Data-only rounds add a third side, medhub with per-image torchvision augmentation, to show what the
    batched augmentation buys.
    """
    copies = {"medhub": model, "recipe": copy.deepcopy(model), "medhub_per_image": copy.deepcopy(model)}

    def sides(count: int) -> dict:
        common = (labels[:count], args.batch_size, args.workers, with_model)
        made = {
            "medhub": medhub_side(copies["medhub"], paths[:count], *common, scratch, device),
            "recipe": recipe_side(copies["recipe"], paths[:count], *common, device),
        }
        if not with_model:
            made["medhub_per_image"] = medhub_side(
                copies["medhub_per_image"], paths[:count], *common, scratch, device, batched=False
            )
        return made

    for side in sides(max(2, args.batch_size // 4)).values():
        side()  # imports, allocator, first DataLoader, CUDA kernels
    records = interleaved_records(sides(len(paths)), repeats, warmup=0)
    out: dict = {}
    for side, runs in records.items():
        out[side] = {
            phase: {
                "median_s": round(median([r[phase] for r in runs]), 3),
                "runs_s": [round(r[phase], 3) for r in runs],
            }
            for phase in ("first", "later")
        }
    if "medhub_per_image" in records:
        out["ratio_later_epoch_batched_vs_per_image_augment"] = paired_ratio(
            [r["later"] for r in records["medhub_per_image"]], [r["later"] for r in records["medhub"]]
        )
    for phase in ("first", "later"):
        out[f"ratio_{phase}_epoch"] = paired_ratio(
            [r[phase] for r in records["recipe"]], [r[phase] for r in records["medhub"]]
        )
        out[f"ratio_{phase}_epoch_of_medians"] = ratio(
            out["recipe"][phase]["median_s"], out["medhub"][phase]["median_s"]
        )
    return out


def model_bound(with_model: dict, data: dict, count: int) -> dict:
    """Per-image costs behind the ratio, and the model step a later epoch needs for the 3x goal.

    Later epochs, medians: data = the input pipeline alone; model step = medhub with the model minus
    medhub's data only. With data ``d`` (recipe) and ``m`` (medhub) and a model step ``s`` per image, the ratio
    is about (d + s) / (m + s), so it reaches 3 only when s <= (d - 3m) / 2, and no pipeline (m = 0) can
    do better than (d + s) / s.
    """
    per_image = {side: data[side]["later"]["median_s"] / count * 1000 for side in ("recipe", "medhub")}
    step = with_model["medhub"]["later"]["median_s"] / count * 1000 - per_image["medhub"]
    return {
        "later_epoch_ms_per_image": {
            "recipe_data": round(per_image["recipe"], 3),
            "medhub_data": round(per_image["medhub"], 3),
            "model_step": round(step, 3),
        },
        "model_step_ms_per_image_for_3x": round((per_image["recipe"] - 3 * per_image["medhub"]) / 2, 3),
        # what a later epoch's ratio would be if medhub's input pipeline cost nothing at all
        "ratio_later_epoch_ceiling": round((per_image["recipe"] + step) / step, 3) if step > 0 else None,
    }


def main(argv: list[str] | None = None) -> int:
    p = parser("one epoch over 1024x1024 PNGs: medhub's decode-once pipeline vs the original recipe")
    p.add_argument(
        "--images", type=int, default=None, help="number of 1024x1024 PNGs (default 256; 32 with --quick)"
    )
    p.add_argument(
        "--arch",
        default=None,
        help="small timm model trained on both sides (default: test_vit with 32 px patches, see SMALL_MODEL)",
    )
    p.add_argument(
        "--arch-kwargs",
        type=json.loads,
        default=None,
        help='JSON keyword arguments for timm.create_model, e.g. \'{"patch_size": 16}\'',
    )
    p.add_argument("--batch-size", type=int, default=16, help="batch size (default 16)")
    p.add_argument(
        "--workers",
        type=int,
        default=0,
        help="DataLoader workers, both sides (default 0: what medhub reproduce uses on a CPU)",
    )
    p.add_argument(
        "--png-dir", default=None, help="keep the generated PNGs here and reuse them (default: temp)"
    )
    p.add_argument("--no-data-only", action="store_true", help="skip the rounds without the model")
    p.add_argument("--device", default="cpu", help="where the model trains, both sides (cpu or cuda)")
    args = p.parse_args(argv)
    if args.arch is None:
        args.arch, default_kwargs = SMALL_MODEL
        args.arch_kwargs = default_kwargs if args.arch_kwargs is None else args.arch_kwargs
    args.arch_kwargs = args.arch_kwargs or {}
    setup_torch(args.threads)
    import timm
    import torch

    device = torch.device(args.device)
    count = args.images or (32 if args.quick else 256)
    repeats = args.repeats or 5
    with tempfile.TemporaryDirectory(prefix="medhub-bench-pipeline-") as tmp:
        scratch = Path(tmp)
        started = time.perf_counter()
        paths, labels = make_pngs(Path(args.png_dir) if args.png_dir else scratch / "png", count)
        note(
            f"{count} PNGs of {SIDE}x{SIDE} ready in {time.perf_counter() - started:.1f}s; "
            f"{args.arch}, batch {args.batch_size}, {args.workers} workers, {repeats} rounds per side"
        )
        torch.manual_seed(0)
        size = {"img_size": CROP} if "vit" in args.arch else {}
        model = timm.create_model(args.arch, num_classes=2, **{**size, **args.arch_kwargs}).to(device)
        with_model = measure(model, paths, labels, args, scratch, True, repeats, device)
        result = {
            "benchmark": "pipeline",
            "quick": args.quick,
            "images": count,
            "png_side": SIDE,
            "arch": args.arch,
            "arch_kwargs": args.arch_kwargs,
            "device": str(device),
            "batch_size": args.batch_size,
            "workers": args.workers,
            "repeats": repeats,
            "cache_size": CACHE_SIZE,
            "crop": CROP,
            "png_mean_bytes": int(sum(p.stat().st_size for p in paths) / len(paths)),
            "with_model": with_model,
        }
        if not args.no_data_only:
            note("data only (no model)")
            result["data_only"] = measure(model, paths, labels, args, scratch, False, repeats, device)
    result["ratio_first_epoch"] = with_model["ratio_first_epoch"]
    result["ratio_later_epoch"] = with_model["ratio_later_epoch"]
    if "data_only" in result:
        data = result["data_only"]
        result["ratio_later_epoch_data_only"] = data["ratio_later_epoch"]
        # how much of medhub's later epoch is the model's own step (the rest is the input pipeline)
        result["medhub_later_epoch_model_share"] = round(
            1 - data["medhub"]["later"]["median_s"] / with_model["medhub"]["later"]["median_s"], 3
        )
        result["ratio_later_epoch_batched_vs_per_image_augment"] = data[
            "ratio_later_epoch_batched_vs_per_image_augment"
        ]
        result.update(model_bound(with_model, data, count))
    result["goal"] = "ratio_later_epoch (recipe seconds / medhub seconds, with the model) >= 3"
    result["meets_goal"] = result["ratio_later_epoch"] >= 3
    result["machine"] = machine()
    emit(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
