"""Benchmark 2: training images/second of medhub's trainer versus a bare PyTorch loop (the ceiling).

Both sides train the same architecture (identical initial weights, separate copies) with the same batch
size, optimizer (Adam, lr 1e-4), loss (cross-entropy) and precision (float32; bfloat16 autocast only on
CUDA, on both sides) for the same number of batches:

* medhub: :func:`medhub.train.loop.train_epoch` (the step ``medhub.train.fit`` runs every epoch) over
  :func:`medhub.data.loader.make_loader` on an in-memory uint8 :class:`~medhub.data.cache.CachedSplit`
  (what the decode-once cache holds), shuffled, no augmentation; uint8 -> normalized float happens in
  the trainer, as in real runs.
* bare: a ``for`` loop over float tensors already normalized in memory, sliced in order:
  forward, loss, ``zero_grad``, ``backward``, ``step``.

Runs alternate (A,B / B,A ...) after one warm-up run each; ``ratio`` is the median over rounds of medhub's
images/s over the bare loop's. Goal: medhub >= 0.90 of the bare loop.

    python benchmarks/train_step.py --quick
"""

from __future__ import annotations

import copy
import sys

from _common import (
    emit,
    interleaved,
    machine,
    median,
    note,
    paired_ratio,
    parser,
    ratio,
    setup_torch,
    summary,
    sync,
)

NUM_CLASSES = 2
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def make_data(count: int, size: int, seed: int = 0):
    """uint8 images (N, 3, S, S), int64 labels, and the same images as normalized float32."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (count, 3, size, size), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, NUM_CLASSES, (count,), generator=generator)
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    floats = (images.float() / 255.0 - mean) / std
    return images.numpy(), labels.numpy(), floats, labels


def medhub_side(model, images, labels, batch_size: int, device, amp: bool, workers: int):
    """A callable running one medhub training epoch over the in-memory cached split."""
    from medhub.data.cache import CachedSplit
    from medhub.data.loader import make_loader, set_epoch
    from medhub.train.loop import FitConfig, make_optimizer, train_epoch

    config = FitConfig(
        task_type="multi-class",
        label_names=tuple(str(i) for i in range(NUM_CLASSES)),
        loss="cross_entropy",
        optimizer="adam",
        lr=1e-4,
        channels=3,
        normalization="imagenet",
        amp=amp,
        precision="bf16" if amp else "fp32",  # what the bare side's autocast runs
        channels_last=device.type == "cuda",
    )
    loader = make_loader(
        CachedSplit("train", images, labels),
        batch_size=batch_size,
        shuffle=True,
        seed=0,
        num_workers=workers,
        pin_memory=device.type == "cuda",
    )
    optimizer = make_optimizer(model.parameters(), config)
    epoch = [0]

    def run() -> None:
        set_epoch(loader, epoch[0])
        epoch[0] += 1
        train_epoch(model, loader, optimizer, device, config, progress=False, desc="")
        sync(device)

    return run


def bare_side(model, floats, labels, batch_size: int, device, amp: bool):
    """A callable running one epoch of the plainest PyTorch loop over tensors already in memory."""
    import torch
    from torch.nn import functional as F

    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    if device.type == "cuda":
        floats = floats.to(device).contiguous(memory_format=torch.channels_last)
    x_all, y_all = floats.to(device), labels.to(device)

    def run() -> None:
        model.train()
        for start in range(0, len(x_all), batch_size):
            x, y = x_all[start : start + batch_size], y_all[start : start + batch_size]
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                logits = model(x).float()
            loss = F.cross_entropy(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        sync(device)

    return run


def write_profiles(sides: dict, path: str, device) -> None:
    """One more run of each side under ``torch.profiler`` (CPU, and CUDA on a GPU): wall seconds, total
    device-kernel seconds and the operators by self CPU time, into the text file ``path``."""
    import time

    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with open(path, "w") as out:
        for name, run in sides.items():
            with profile(activities=activities) as prof:
                started = time.perf_counter()
                run()
                wall = time.perf_counter() - started
            events = prof.key_averages()
            kernels = sum(getattr(e, "self_device_time_total", 0) for e in events) / 1e6
            out.write(f"== {name}: wall {wall:.3f} s under the profiler, device kernels {kernels:.3f} s\n")
            out.write(events.table(sort_by="self_cpu_time_total", row_limit=25) + "\n")


def main(argv: list[str] | None = None) -> int:
    p = parser("medhub's training step vs a bare PyTorch loop over in-memory tensors")
    p.add_argument("--arch", default="resnet18", help="timm architecture (default resnet18)")
    p.add_argument("--img-size", type=int, default=None, help="image side (default 128; 64 with --quick)")
    p.add_argument("--batch-size", type=int, default=None, help="batch size (default 32; 16 with --quick)")
    p.add_argument(
        "--batches", type=int, default=None, help="batches per timed run (default 5; 3 with --quick)"
    )
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="medhub's loader workers (default: what medhub reproduce uses, 0 on a CPU, up to 8 on a GPU)",
    )
    p.add_argument("--profile", default=None, metavar="FILE",
                   help="after timing, profile one more run of each side (torch.profiler) and write both tables")
    args = p.parse_args(argv)
    setup_torch(args.threads)
    import timm
    import torch

    size = args.img_size or (64 if args.quick else 128)
    batch = args.batch_size or (16 if args.quick else 32)
    batches = args.batches or (3 if args.quick else 5)
    repeats = args.repeats or 5
    device = torch.device(args.device)
    amp = device.type == "cuda"
    from medhub.data.loader import default_workers

    workers = default_workers(device) if args.workers is None else args.workers
    torch.manual_seed(0)
    model_a = timm.create_model(args.arch, num_classes=NUM_CLASSES).to(device)
    model_b = copy.deepcopy(model_a)
    if device.type == "cuda":
        model_a = model_a.to(memory_format=torch.channels_last)
        model_b = model_b.to(memory_format=torch.channels_last)
    images, labels, floats, labels_t = make_data(batch * batches, size)
    note(
        f"{args.arch} {size}px batch {batch}, {batches} batches per run, {repeats} runs per side, interleaved"
    )
    sides = {
        "medhub": medhub_side(model_a, images, labels, batch, device, amp, workers),
        "bare": bare_side(model_b, floats, labels_t, batch, device, amp),
    }
    times = interleaved(sides, repeats)
    if args.profile:
        write_profiles(sides, args.profile, device)
    count = batch * batches
    rates = {side: [count / t for t in values] for side, values in times.items()}
    result = {
        "benchmark": "train_step",
        "quick": args.quick,
        "arch": args.arch,
        "img_size": size,
        "batch_size": batch,
        "batches_per_run": batches,
        "repeats": repeats,
        "device": str(device),
        "workers": workers,
        "precision": "bfloat16 autocast" if amp else "float32",
        "optimizer": "adam",
        "medhub_images_per_s": round(median(rates["medhub"]), 2),
        "bare_images_per_s": round(median(rates["bare"]), 2),
        "medhub": summary(times["medhub"]),
        "bare": summary(times["bare"]),
        "ratio": paired_ratio(times["bare"], times["medhub"]),  # = medhub images/s over bare, per round
        "ratio_of_medians": ratio(median(rates["medhub"]), median(rates["bare"])),
        "goal": "ratio (medhub images/s over bare images/s) >= 0.90",
    }
    result["meets_goal"] = result["ratio"] >= 0.90
    result["machine"] = machine()
    emit(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
