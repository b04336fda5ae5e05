"""Fit and evaluate: one epoch at a time, state saved atomically after each, best epoch kept.

``fit`` trains with the protocol's optimizer, schedule, early stopping and model selection, resuming
from ``run_dir/state.pt`` when asked; ``evaluate`` returns loss, metric, per-class values and scores
(ten-crop averaging for the benchmark's test protocol).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from medhub.data.loader import set_epoch, to_model_input
from medhub.data.progress import BAR, Progress, progress_mode, say, time_left, warn_if_busy
from medhub.train import metrics
from medhub.train.losses import segmentation_loss
from medhub.train.state import (
    cpu_state_dict,
    epoch_seed,
    load_best,
    load_state,
    restore_rng,
    rng_states,
    save_best,
    save_state,
)

log = logging.getLogger(__name__)


@dataclass
class FitConfig:
    """Everything the loop needs from the protocol (after overrides)."""

    task_type: str
    label_names: tuple[str, ...]
    loss: str = "bce"
    optimizer: str = "adam"
    lr: float = 2e-4
    weight_decay: float = 0.0
    epochs: int = 100
    scheduler: str | None = None
    scheduler_kwargs: dict[str, Any] = field(default_factory=dict)
    patience: int | None = None
    selection: str = "val_loss"
    channels: int = 3
    normalization: Any = "imagenet"
    ten_crop: int | None = None
    warmup_epochs: int = 0
    precision: str | None = "fp32"  # fp16 (autocast + GradScaler), bf16, fp32; None: bf16 when amp on CUDA
    amp: bool = False
    channels_last: bool = False
    seed: int = 0
    compile: bool = False  # full training batches through torch.compile (medhub.train.compiled)
    evaluated: tuple[str, ...] = ()  # labels the metric averages (a subset of label_names); () = all

    @property
    def segmentation(self) -> bool:
        return self.task_type == "segmentation"


@dataclass
class Evaluation:
    """One pass over a split."""

    loss: float
    metric: float
    per_class: dict[str, float]
    scores: np.ndarray | None = None
    targets: np.ndarray | None = None
    accuracy: float | None = None


@dataclass
class FitResult:
    """What training produced: per-epoch history and the best epoch's weights."""

    history: list[dict[str, float]]
    best_epoch: int
    best_state: dict[str, torch.Tensor]
    stopped_early: bool
    resumed_from: int | None = None
    compiled: bool = False
    first_step_s: float | None = None
    compile_failed: str | None = None  # why a compiled run fell back to eager (then ``compiled`` is False)
    precision: str = "fp32"  # the arithmetic the step ran in (trained_precision; after --resume the saved run's)


def compute_loss(logits: torch.Tensor, targets: torch.Tensor, config: FitConfig) -> torch.Tensor:
    """The protocol's loss: cross-entropy on class indices, BCE on 0/1 (or soft) targets, Dice for masks."""
    if config.segmentation:
        return segmentation_loss(config.loss, logits, targets.unsqueeze(1))
    if config.loss == "cross_entropy":
        return F.cross_entropy(logits, targets.long())
    if targets.ndim == 1:
        targets = (F.one_hot(targets.long(), logits.shape[1]) if logits.shape[1] > 1 else targets.unsqueeze(1))
    return F.binary_cross_entropy_with_logits(logits, targets.float())


def make_optimizer(params, config: FitConfig) -> torch.optim.Optimizer:
    """Adam, AdamW or SGD (momentum 0.9) over the trainable parameters."""
    trainable = [p for p in params if p.requires_grad]
    name = config.optimizer.lower()
    if name == "adamw":
        return torch.optim.AdamW(trainable, lr=config.lr, weight_decay=config.weight_decay)
    if name == "sgd":
        return torch.optim.SGD(trainable, lr=config.lr, momentum=0.9, weight_decay=config.weight_decay)
    return torch.optim.Adam(trainable, lr=config.lr, weight_decay=config.weight_decay)


def make_scheduler(optimizer: torch.optim.Optimizer, config: FitConfig):
    """The protocol's per-epoch learning-rate schedule, or None for a constant rate.

    * ``multistep``: milestones as fractions of the epochs (MedMNIST v2).
    * ``reduce_on_plateau``: on the validation loss (the benchmark's classification recipe).
    * ``cosine``: the 2021 segmentation recipe's ``cosine_anneal_schedule`` (BTL ``Version1/utils.py:127-135``),
      set after each epoch ``t`` to ``lr/2 (1 + cos(pi t / T))`` (``Version1/engine.py:214-216``): epoch 0 and 1
      run at ``lr``, epoch ``e >= 1`` at ``lr/2 (1 + cos(pi (e-1) / T))``.
    * ``warmup_cosine``: the 2025 recipe's ``learning_rate_schedule`` (``Version2/utils.py:126-131``), set before
      each epoch ``e`` (``Version2/engine.py:180-182``): ``lr · min(1, e/W) · (1 + cos(pi · clip((e-W)/(E-W),
      0, 1)))/2`` with ``W = warmup_epochs`` (20): linear from 0, then cosine over the remaining epochs.
    """
    kind, kw = (config.scheduler or "").lower(), dict(config.scheduler_kwargs)
    if kind == "multistep":
        # fractions of the epochs (MedMNIST: 50% and 75%); a milestone at epoch 0 would decay the lr before
        # training starts (short runs), so those are dropped, and duplicates are merged
        scaled = (int(m * config.epochs) if m < 1 else int(m) for m in kw.get("milestones", [0.5, 0.75]))
        milestones = sorted({m for m in scaled if m >= 1})
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, gamma=float(kw.get("gamma", 0.1)))
    if kind in ("reduce_on_plateau", "plateau"):
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", factor=float(kw.get("factor", 0.5)), patience=int(kw.get("patience", 5)))
    if kind == "cosine":
        total = max(1, config.epochs)
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda e: 1.0 if e == 0 else 0.5 * (1.0 + math.cos(math.pi * ((e - 1) % total) / total)))
    if kind == "warmup_cosine":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: warmup_cosine(e, config.epochs,
                                                                                   config.warmup_epochs))
    return None


def warmup_cosine(epoch: int, epochs: int, warmup: int) -> float:
    """Factor of the base lr at ``epoch`` (0-based) under the 2025 recipe (BTL ``Version2/utils.py:126-131``)."""
    progress = min(1.0, max(0.0, (epoch - warmup) / float(max(1, epochs - warmup))))
    ramp = min(1.0, epoch / warmup) if warmup > 0 else 1.0
    return 0.5 * (1.0 + math.cos(math.pi * progress)) * ramp


def _freeze_norms(model: torch.nn.Module) -> None:
    """Frozen parts of a linear probe keep their BatchNorm statistics."""
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and not any(
                p.requires_grad for p in module.parameters()):
            module.eval()


def _loss_sum(device: torch.device) -> torch.Tensor:
    """A float64 zero for summing batch losses where they are computed: on a GPU the sum stays there, so the
    host never waits for the GPU to read a loss per step (``float(loss)``); elsewhere on the CPU (float64 is
    not on every accelerator). Add ``loss.to(total.device).double() * batch``."""
    return torch.zeros((), dtype=torch.float64, device=device if device.type == "cuda" else "cpu")


def autocast_dtype(config: FitConfig, device: torch.device) -> torch.dtype | None:
    """The autocast dtype on ``device``, None for fp32.

    CUDA: fp16 or bf16 as ``config.precision`` says (None: bf16 when ``config.amp``). CPU: bf16 when asked for
    (oneDNN's bf16 kernels: fast on CPUs with AVX512-BF16 or AMX, emulated and slower elsewhere); fp16 runs
    fp32 on a CPU (the GPU recipes' fp16 has no fast CPU kernels; ``result.json`` ``input.precision`` records
    what ran).
    """
    if device.type == "cpu":
        return torch.bfloat16 if config.precision == "bf16" else None
    if device.type != "cuda":
        return None
    if config.precision == "fp16":
        return torch.float16
    if config.precision == "bf16" or (config.precision is None and config.amp):
        return torch.bfloat16
    return None


def trained_precision(config: FitConfig, device: torch.device) -> str:
    """The arithmetic the step runs in on ``device``: ``"fp16"``, ``"bf16"`` (autocast) or ``"fp32"``."""
    return {torch.float16: "fp16", torch.bfloat16: "bf16"}.get(autocast_dtype(config, device), "fp32")


def _forward(model, images, device, config: FitConfig) -> torch.Tensor:
    x = to_model_input(images, device, config.channels, config.normalization, config.channels_last)
    dtype = autocast_dtype(config, device)
    with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        return model(x).float()


def train_epoch(model, loader, optimizer, device, config: FitConfig, progress: Progress, desc: str,
                scaler: torch.amp.GradScaler | None = None, *, compiled: torch.nn.Module | None = None,
                timings: dict[str, float] | None = None) -> float:
    """One pass over the training loader; returns the mean training loss.

    ``scaler``: fp16 loss scaling (the 2025 recipe's NativeScaler, BTL ``Version2/models.py:310``).
    ``compiled``: ``torch.compile`` of ``model`` (:mod:`medhub.train.compiled`), used for full batches (the
    size of the first); a smaller last batch runs ``model`` eagerly. When compiling fails (no working C++
    compiler, an unsupported operator), the epoch goes on eagerly from that step (nothing was updated yet)
    and ``timings["compile_failed"]`` says why. ``timings``: gets ``first_step_s``, the seconds of the first
    step (a compiled step's warm-up), if it has none yet.
    """
    from tqdm.auto import tqdm

    model.train()
    _freeze_norms(model)
    # the running loss is read for the progress bar at most once a second, and once at the end
    total, count, full, shown = _loss_sum(device), 0, 0, time.perf_counter()
    with tqdm(loader, desc=desc, unit="batch", disable=progress_mode(progress) != BAR,
              leave=False) as bar:
        for images, targets in bar:
            started = time.perf_counter()
            full = full or len(images)
            if compiled is None or len(images) != full:
                logits = _forward(model, images, device, config)
            else:
                try:
                    logits = _forward(compiled, images, device, config)
                except torch._dynamo.exc.BackendCompilerFailed as exc:  # before the graph ran: nothing changed
                    reason = " ".join(str(exc).split())[:200]
                    log.warning("torch.compile failed (%s); training eagerly", reason)
                    if timings is not None:
                        timings["compile_failed"] = reason
                    compiled = None
                    logits = _forward(model, images, device, config)
            loss = compute_loss(logits, targets.to(device, non_blocking=True), config)
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                optimizer.step()
            total += loss.detach().to(total.device).double() * len(images)
            count += len(images)
            if timings is not None and "first_step_s" not in timings:
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                timings["first_step_s"] = time.perf_counter() - started
            if not bar.disable and time.perf_counter() - shown >= 1.0:
                bar.set_postfix(loss=f"{float(total) / count:.4f}")
                shown = time.perf_counter()
    return float(total) / max(count, 1)


@torch.no_grad()
def evaluate(model, loader, device, config: FitConfig, *, ten_crop: int | None = None) -> Evaluation:
    """Loss, metric (AUC or Dice), per-class values, scores and targets over ``loader``."""
    from torchvision.transforms.v2 import functional as TF

    model.eval()
    # scores stay on the device until the end (no wait for the GPU per batch), except Dice's
    outputs, truths, total, count = [], [], _loss_sum(device), 0
    dice = metrics.DiceAccumulator() if config.segmentation else None
    for images, targets in loader:
        targets_d = targets.to(device, non_blocking=True)
        if ten_crop:
            crops = TF.ten_crop(images, [ten_crop, ten_crop])
            probs = torch.stack([_scores(_forward(model, c, device, config), config) for c in crops]).mean(0)
            logits = _forward(model, TF.center_crop(images, [ten_crop, ten_crop]), device, config)
        else:
            logits = _forward(model, images, device, config)
            probs = _scores(logits, config)
        if not ten_crop or not config.segmentation:
            total += compute_loss(logits, targets_d, config).to(total.device).double() * len(images)
        count += len(images)
        if dice is not None:
            dice.update(probs[:, 0].float().cpu().numpy(), targets.numpy())
            continue
        outputs.append(probs)
        truths.append(targets.numpy())
    loss = float(total) / max(count, 1)
    if dice is not None:  # the papers' headline Dice is pooled over all pixels; the per-image mean beside it
        per_image = float(dice.per_image.mean()) if count else float("nan")
        return Evaluation(loss, dice.pooled, {"dice_pooled": dice.pooled, "dice_per_image": per_image})
    scores, truth = torch.cat(outputs).cpu().numpy(), np.concatenate(truths)
    names = config.label_names
    if config.evaluated and tuple(config.evaluated) != tuple(names):  # e.g. CheXpert: 14 trained, 5 evaluated
        keep = [names.index(name) for name in config.evaluated]
        scores, truth, names = scores[:, keep], truth[:, keep], tuple(config.evaluated)
    per_class = metrics.per_class_auc(truth, scores, config.task_type, names)
    return Evaluation(loss, metrics.mean_of(per_class), per_class, scores, truth,
                      metrics.accuracy(truth, scores, config.task_type))


def _scores(logits: torch.Tensor, config: FitConfig) -> torch.Tensor:
    if config.segmentation or config.loss != "cross_entropy":
        return torch.sigmoid(logits)
    return torch.softmax(logits, dim=1)


def _better(value: float, best: float | None, selection: str) -> bool:
    if math.isnan(value):
        return best is None
    if best is None or math.isnan(best):
        return True
    return value < best if selection.endswith("loss") else value > best


def _epoch_line(label: str, desc: str, row: dict[str, float], config: FitConfig, best: bool, stopped: bool,
                timing: str = "") -> str:
    """``run 0 epoch 3/10: train loss 0.0810, val loss 0.0930, val auc 0.9931 (best), 14.2 s; elapsed 43 s,
    about 1 min 40 s left``."""
    name = "dice (pooled)" if config.segmentation else "auc"
    return (f"{label} {desc}: train loss {row['train_loss']:.4f}, val loss {row['val_loss']:.4f}, "
            f"val {name} {row['val_metric']:.4f}{' (best)' if best else ''}, {row['seconds']:.1f} s"
            f"{'; ' + timing if timing else ''}{'; early stop' if stopped else ''}")


def fit(model: torch.nn.Module, train_loader, val_loader, config: FitConfig, run_dir: Path, device: torch.device,
        *, progress: Progress = True, resume: bool = False, label: str = "") -> FitResult:
    """Train up to ``config.epochs``, keep the best epoch by ``config.selection``, save state every epoch.

    ``progress``: tqdm bars (True/"bar"), one line per epoch on stderr ("lines"), or nothing (False/"off");
    ``label`` names the run in those lines (e.g. "run 0").

    With ``resume=True`` and a ``state.pt`` in ``run_dir``, training continues after the last saved epoch
    and ends with the same weights and history an uninterrupted run would have (with the same
    ``config.compile`` and the same precision as the saved state's: the saved choice wins; a state saved
    before 2026-12-01 without a precision ran fp32 on a CPU, where ``bf16`` was not honoured then).
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    optimizer = make_optimizer(model.parameters(), config)
    scheduler = make_scheduler(optimizer, config)
    scaler = torch.amp.GradScaler("cuda") if autocast_dtype(config, device) == torch.float16 else None
    history: list[dict[str, float]] = []
    best_value, best_epoch, best_state, bad_epochs, start, resumed = None, -1, cpu_state_dict(model), 0, 0, None
    saved = load_state(run_dir) if resume else None
    if saved is not None:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        if scheduler is not None and saved.get("scheduler"):
            scheduler.load_state_dict(saved["scheduler"])
        if scaler is not None and saved.get("scaler"):
            scaler.load_state_dict(saved["scaler"])
        history, best_epoch, best_state = saved["history"], saved["best_epoch"], load_best(run_dir)
        best_value, bad_epochs = saved["best_value"], saved["bad_epochs"]
        start = resumed = saved["epoch"] + 1
        restore_rng(saved["rng"])
        if bool(saved.get("compile", False)) != config.compile:
            log.info("resuming with the saved run's compile=%s", bool(saved.get("compile", False)))
            config = dataclasses.replace(config, compile=bool(saved.get("compile", False)))
        ran = saved.get("precision", "fp32" if device.type == "cpu" else trained_precision(config, device))
        if ran != trained_precision(config, device):
            log.info("resuming with the saved run's precision %s", ran)
            config = dataclasses.replace(config, precision=ran)
        if saved.get("finished"):
            return FitResult(history, best_epoch, best_state, saved.get("stopped_early", False), resumed,
                             config.compile, precision=trained_precision(config, device))
        log.info("resuming %s after epoch %d", run_dir, start)
        say(progress, f"{label or run_dir.name}: resuming after epoch {start}/{config.epochs}")
    stopped = False
    warn_if_busy()
    fit_started = time.perf_counter()
    compiled, timings = None, {}
    if config.compile:
        from medhub.train.compiled import compile_for_training

        compiled = compile_for_training(model)
    for epoch in range(start, config.epochs):
        started = time.perf_counter()
        lr_used = optimizer.param_groups[0]["lr"]  # the rate this epoch trains with (before the scheduler steps)
        torch.manual_seed(epoch_seed(config.seed, epoch))
        set_epoch(train_loader, epoch)
        set_epoch(val_loader, epoch)  # an augmented validation split (segmentation recipes) draws anew each epoch
        desc = f"epoch {epoch + 1}/{config.epochs}"
        so_far = time_left(started - fit_started, epoch - start, config.epochs - epoch)
        bar_desc = desc if epoch == start else f"{desc} ({so_far})"
        train_loss = train_epoch(model, train_loader, optimizer, device, config, progress, bar_desc, scaler,
                                 compiled=compiled, timings=timings)
        if compiled is not None and "compile_failed" in timings:  # eager from here on, and after --resume
            compiled, config = None, dataclasses.replace(config, compile=False)
        val = evaluate(model, val_loader, device, config)
        selected = val.loss if config.selection.endswith("loss") else val.metric
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            scheduler.step(val.loss)
        elif scheduler is not None:
            scheduler.step()
        improved = _better(selected, best_value, config.selection)
        if improved:
            best_value, best_epoch, best_state, bad_epochs = selected, epoch, cpu_state_dict(model), 0
            save_best(run_dir, best_state)
        else:
            bad_epochs += 1
        stopped = config.patience is not None and bad_epochs > config.patience
        finished = stopped or epoch + 1 >= config.epochs
        history.append({"epoch": epoch + 1, "train_loss": train_loss, "val_loss": val.loss, "val_metric": val.metric,
                        "lr": lr_used, "seconds": time.perf_counter() - started})
        log.info("%s: train loss %.4f, val loss %.4f, val %s %.4f", desc, train_loss, val.loss,
                 "dice" if config.segmentation else "auc", val.metric)
        timing = time_left(time.perf_counter() - fit_started, epoch + 1 - start, 0 if finished else config.epochs - epoch - 1)
        say(progress, _epoch_line(label or run_dir.name, desc, history[-1], config, improved, stopped, timing))
        save_state(run_dir, {
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else None, "epoch": epoch,
            "scaler": scaler.state_dict() if scaler is not None else None,
            "history": history, "best_epoch": best_epoch, "best_value": best_value,
            "bad_epochs": bad_epochs, "rng": rng_states(), "finished": finished, "stopped_early": stopped,
            "compile": config.compile, "precision": trained_precision(config, device),
        })
        if stopped:
            log.info("early stopping after epoch %d (best epoch %d)", epoch + 1, best_epoch + 1)
            break
    return FitResult(history, best_epoch, best_state, stopped, resumed, config.compile, timings.get("first_step_s"),
                     timings.get("compile_failed"), trained_precision(config, device))
