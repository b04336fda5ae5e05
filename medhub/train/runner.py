"""The stages of one reproduce call: cached data, one seeded run, and the written outputs."""

from __future__ import annotations

import dataclasses
import json
import logging
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medhub._io import atomic_write_text
from medhub.cpu import keep_heap_memory, torch_threads
from medhub.data.cache import CachedSplit, cached_split
from medhub.data.loader import default_workers, epoch_order, make_loader, train_transform
from medhub.data.progress import Progress
from medhub.errors import UsageError
from medhub.train import metrics
from medhub.train.compiled import choose_compile
from medhub.train.loop import FitConfig, evaluate, fit
from medhub.train.network import build_network, init_classifier, init_from_scratch, is_random
from medhub.train.report import build_report, plot_learning_curves, plot_roc, write_json, write_markdown
from medhub.train.state import deterministic, run_threads

log = logging.getLogger(__name__)


def subset_indices(count: int, fraction: float, seed: int = 99) -> list[int]:
    """The released code's label-fraction subset of ``count`` samples in list-file order.

    ``random.Random(seed).shuffle`` of ``0..count-1``, then the first ``int(count * percent / 100.0)``
    (BenchmarkTransferLearning Version2/dataloader.py:98-108 and :151-161, ``--anno_percent`` with seed 99),
    in that shuffled order. ``fraction`` is ``percent / 100``.

    Raises:
        UsageError: the fraction keeps no sample of ``count``.
    """
    percent = round(fraction * 100.0, 9)
    keep = int(count * (int(percent) if float(percent).is_integer() else percent) / 100.0)
    if keep < 1:
        raise UsageError(f"--label-fraction {fraction} keeps no sample of {count}; use a larger fraction")
    order = list(range(count))
    random.Random(seed).shuffle(order)
    return order[:keep]


def prepare_data(task, data, plan, *, seed: int, progress: Progress, overlap_first_epoch: bool = False
                 ) -> dict[str, CachedSplit]:
    """Decode (once) every split at the plan's cache size; cut the plan's label-fraction subset.

    The subset is the released code's (:func:`subset_indices`, seed ``plan.subset['seed']``, 99 unless
    overridden), applied to each split the task's recipe cuts; it does not depend on the run's ``seed``.

    ``overlap_first_epoch``: a training split that must be decoded (and is used whole) is decoded in the
    background in the order of the first run's first epoch (seed ``seed``), so that epoch trains while the
    rest decodes (:func:`medhub.data.cache.cached_split` ``first_order``); for loaders without worker
    processes. Validation and test splits are decoded first.
    """
    mode = getattr(plan, "image_resize", "bilinear")
    splits: dict[str, CachedSplit] = {}
    for name in ("val", "test", "train"):
        split = data.split(name)
        order = (epoch_order(len(split), True, seed, 0)
                 if overlap_first_epoch and name == "train" and plan.label_fraction >= 1.0 else None)
        splits[name] = cached_split(task.id, split, plan.cache_size, data.channels, progress=progress,
                                    resize_mode=mode, first_order=order)
    splits = {name: splits[name] for name in ("train", "val", "test")}
    if plan.label_fraction < 1.0:
        subset = plan.subset or {"seed": 99, "splits": ["train"]}
        for name in subset["splits"]:
            whole = splits[name]
            whole.finish_build()
            pick = np.asarray(subset_indices(len(whole), plan.label_fraction, subset["seed"]))
            splits[name] = CachedSplit(name, np.asarray(whole.images[pick]), whole.labels[pick],
                                       None if whole.masks is None else np.asarray(whole.masks[pick]))
            plan.notes.append(f"label fraction {plan.label_fraction}: {len(pick)} of {len(whole)} {name} samples "
                              f"(random.Random({subset['seed']}) subset of the list order)")
    return splits


def finish_builds(splits: dict[str, CachedSplit]) -> None:
    """Wait for the splits still being decoded in the background to be in place; raises a build's error."""
    for split in splits.values():
        split.finish_build()


def _input_channels(network: torch.nn.Module) -> int:
    first = next((m for m in network.modules() if isinstance(m, torch.nn.Conv2d)), None)
    return first.in_channels if first is not None else 3


def channels_last_for(device: torch.device, stem: str | None, segmentation: bool) -> bool:
    """Train in channels-last memory format: on CUDA always, on a CPU for a CIFAR-stem ResNet (MedMNIST's 28 px
    network).

    Why on a CPU: oneDNN's convolutions on this network run faster on NHWC tensors. Measured 2026-11-30 on the
    idle 2-core development machine (fp32, batch 128, one step's median of 4 alternating rounds, BENCHMARKS.md
    "issue 19"): 1.06 -> 0.85 s at 2 threads, 1.83 -> 1.57 s at 1 thread, as fast as the compiled step
    (0.87 / 1.62 s) without its warm-up; together with it, 0.85 s. Other networks on a CPU were not measured,
    so they keep the default format. The numbers stay fp32 and deterministic, and differ from NCHW ones in the
    last bits (another summation order).
    """
    if device.type == "cuda":
        return True
    return device.type == "cpu" and stem == "cifar" and not segmentation


def fit_config(task, plan, *, channels: int, normalization, device: torch.device, seed: int) -> FitConfig:
    """The loop's configuration from the task and plan."""
    return FitConfig(
        task_type=task.type, label_names=tuple(task.trained_labels), loss=plan.loss, optimizer=plan.optimizer,
        lr=plan.lr, weight_decay=plan.weight_decay, epochs=plan.epochs, scheduler=plan.scheduler,
        scheduler_kwargs=plan.scheduler_kwargs, patience=plan.patience, selection=plan.selection,
        channels=channels, normalization=normalization, ten_crop=plan.ten_crop,
        warmup_epochs=getattr(plan, "warmup_epochs", 0), precision=getattr(plan, "precision", "fp32"),
        amp=device.type == "cuda", seed=seed,
        channels_last=channels_last_for(device, getattr(plan, "stem", None), task.type == "segmentation"),
        evaluated=tuple(getattr(plan, "labels_evaluated", None) or task.labels),
    )


def run_once(model: str, task, data, splits: dict[str, CachedSplit], plan, *, seed: int, run_dir: Path,
             device: torch.device, resume: bool, arch: str | None, progress: Progress,
             in_chans: int | None = None, label: str = "", compile_model: bool | None = None) -> dict[str, Any]:
    """One seeded fine-tuning run: fit (resumable), best epoch on test, best.safetensors + result.json.

    ``in_chans`` sets the input channels of a ``random:`` network (default: the data's channels);
    ``label`` names the run in progress lines (default: the run folder's name); ``compile_model``: compile
    the training step (True) or not (False, or None: the default, :func:`medhub.train.compiled.choose_compile`).
    """
    result_path = run_dir / "result.json"
    if resume and result_path.is_file():
        log.info("%s already finished; kept", run_dir)
        return json.loads(result_path.read_text())
    threads = run_threads(run_dir, resume)
    if device.type == "cpu":
        keep_heap_memory()
    log.info("%s: %d torch threads (%s; %d usable cores, %.1f busy elsewhere)", run_dir.name, threads.threads,
             threads.source, threads.usable, threads.busy)
    with deterministic(device, seed), torch_threads(threads.threads):
        return _run(model, task, data, splits, plan, seed=seed, run_dir=run_dir, device=device, resume=resume,
                    arch=arch, progress=progress, in_chans=in_chans, label=label or run_dir.name,
                    compile_model=compile_model)


def _run(model: str, task, data, splits: dict[str, CachedSplit], plan, *, seed: int, run_dir: Path,
         device: torch.device, resume: bool, arch: str | None, progress: Progress, in_chans: int | None,
         label: str, compile_model: bool | None = None) -> dict[str, Any]:
    result_path = run_dir / "result.json"
    chans = (in_chans or data.channels) if is_random(model) else None
    if is_random(model) and getattr(plan, "input_channels", None):
        chans = plan.input_channels
    network = build_network(model, num_outputs=plan.num_outputs, in_chans=chans, arch=arch,
                            segmentation=task.type == "segmentation", linear_probe=plan.linear_probe,
                            stem=getattr(plan, "stem", None), decoder=getattr(plan, "decoder", None),
                            img_size=plan.img_size)
    if getattr(plan, "scratch_init", None):
        init_from_scratch(network, plan.scratch_init)
    if task.type != "segmentation" and getattr(plan, "head_init", None):
        init_classifier(network, plan.head_init, model=model, num_outputs=plan.num_outputs)
    network = network.to(device)
    # the recipe's normalization for every initialisation (the released code's --normalization imagenet)
    config = fit_config(task, plan, channels=_input_channels(network), normalization=plan.normalization,
                        device=device, seed=seed)
    if config.channels_last:
        network = network.to(memory_format=torch.channels_last)
    _check_last_batch(network, len(splits["train"]), plan.batch_size)
    compiling = choose_compile(compile_model)
    config = dataclasses.replace(config, compile=compiling.used)
    log.info("%s: training step %scompiled (%s)", label, "" if compiling.used else "not ", compiling.why)
    workers = default_workers(device)
    common = dict(batch_size=plan.batch_size, num_workers=workers, pin_memory=device.type == "cuda")
    augment = _train_augment(plan, config.segmentation)
    # CheXpert's LSR-Ones: uncertain train/val labels drawn anew each read, as the released dataset class does
    common["uncertain_range"] = getattr(data, "uncertain_range", None)
    train_loader = make_loader(splits["train"], shuffle=True, seed=seed, transform=augment,
                               crop=plan.center_crop if augment is None else None, **common)
    # the benchmark's segmentation code augments the validation split too (augment_val)
    val_augment = augment if getattr(plan, "augment_val", False) else None
    val_loader = make_loader(splits["val"], shuffle=False, seed=seed, transform=val_augment, crop=plan.center_crop,
                             **common)
    test_loader = make_loader(splits["test"], shuffle=False, crop=None if plan.ten_crop else plan.center_crop,
                              **{**common, "uncertain_range": None})
    outcome = fit(network, train_loader, val_loader, config, run_dir, device, progress=progress, resume=resume,
                  label=label)
    network.load_state_dict(outcome.best_state)
    config = dataclasses.replace(config, precision=outcome.precision)  # a resumed run keeps its saved arithmetic
    started = time.perf_counter()
    test = evaluate(network, test_loader, device, config, ten_crop=plan.ten_crop)
    roc = {} if config.segmentation else metrics.roc_points(test.targets, test.scores, task.type, tuple(task.labels))
    atomic_write_text(run_dir / "roc.json", json.dumps(roc))
    result = {
        "seed": seed, "metric": test.metric, "per_class": test.per_class, "accuracy": test.accuracy,
        "epochs": len(outcome.history), "best_epoch": outcome.best_epoch + 1, "stopped_early": outcome.stopped_early,
        "seconds": sum(h["seconds"] for h in outcome.history) + time.perf_counter() - started,
        "resumed_after_epoch": outcome.resumed_from, "history": outcome.history,
        "checkpoint": str(run_dir / "best.safetensors"),
        "input": {"channels": config.channels, "normalization": config.normalization, "device": str(device),
                  "threads": torch.get_num_threads(), "channels_last": config.channels_last,
                  "precision": outcome.precision,
                  "allocator": keep_heap_memory() if device.type == "cpu" else "default (not a CPU run)",
                  "compile": {"used": outcome.compiled,
                              "why": (f"compiling failed: {outcome.compile_failed}" if outcome.compile_failed
                                      else compiling.why if outcome.compiled == compiling.used else "the saved run's"),
                              "first_step_s": outcome.first_step_s}},
    }
    atomic_write_text(result_path, json.dumps(result, indent=1, default=lambda v: None))
    return result


def _check_last_batch(network: torch.nn.Module, count: int, batch_size: int) -> None:
    """A last training batch of one sample cannot pass BatchNorm in training mode (e.g. UperNet's 1x1 pyramid bin).

    Raises:
        UsageError: ``count % batch_size == 1`` for a network with BatchNorm layers.
    """
    if count > 1 and count % batch_size == 1 and any(
            isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in network.modules()):
        from medhub.errors import UsageError

        raise UsageError(f"{count} training samples in batches of {batch_size} leave a last batch of 1, which "
                         f"BatchNorm cannot train on; pass --batch-size {batch_size + 1} (or another size)")


def _train_augment(plan, segmentation: bool):
    """The plan's training augmentation: a named albumentations pipeline, else the torchvision/batched steps."""
    if getattr(plan, "augment_pipeline", None):
        from medhub.data.seg_augment import PIPELINE, SegmentationAugment

        if plan.augment_pipeline != PIPELINE:
            from medhub.errors import UsageError

            raise UsageError(f"unknown augmentation pipeline '{plan.augment_pipeline}'; known: {PIPELINE}")
        return SegmentationAugment(plan.img_size)
    return train_transform(plan.train_augment, plan.img_size, segmentation=segmentation)


def write_outputs(out_dir: Path, model: str, task, metric: str, results: list[dict], protocol: dict, env: dict,
                  reported: dict | None) -> dict:
    """report.json, report.md, learning curves and one ROC plot per run."""
    report = build_report(model, task, metric, results, protocol, env, reported)
    plots = ["learning_curves.png"]
    plot_learning_curves([r["history"] for r in results], metric, out_dir / "learning_curves.png",
                         [r["best_epoch"] for r in results])
    for i, result in enumerate(results):
        roc_file = out_dir / f"run{i}" / "roc.json"
        curves = json.loads(roc_file.read_text()) if roc_file.is_file() else {}
        if curves:
            plot_roc(curves, result["per_class"], f"{model} on {task.id}, run {i} (test)", out_dir / f"roc_run{i}.png")
            plots.append(f"roc_run{i}.png")
    report["plots"] = plots
    report["out"] = str(out_dir)
    for key in ("verdict", "verdict_reasons"):  # the report ends with its verdict
        report[key] = report.pop(key)
    write_json(report, out_dir / "report.json")
    write_markdown(report, out_dir / "report.md", plots)
    return report
