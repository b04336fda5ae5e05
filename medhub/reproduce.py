"""``medhub reproduce``: fine-tune a checkpoint on a task with the benchmark's protocol, compare with the paper.

The flow, one stage module per step::

    task entry ─► plan (protocol + overrides) ─► data (reader ─► decode-once cache) ─► per run:
        network ─► fit (resumable) ─► best epoch ─► test ─► run result
    ─► report.json / report.md / plots, compared with the registry's reported number

Every input is checked before anything is written, and only ``out`` is written; a run that fails before its
first checkpoint removes the folder it created. Research software, not a medical device.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from pathlib import Path
from typing import Any

from medhub import bounds
from medhub._io import atomic_write_text, check_output_dir, remove_created
from medhub.errors import UsageError

log = logging.getLogger(__name__)


def results_root() -> Path:
    """``$MEDHUB_RESULTS``, else ``./medhub-results``."""
    return Path(os.environ.get("MEDHUB_RESULTS") or "medhub-results")


def default_out(model: str, task: str, resume: bool) -> Path:
    """``<results root>/<model>/<task>/<timestamp>``; with ``resume``, the latest unfinished one."""
    base = results_root() / re.sub(r"[^A-Za-z0-9_.\-]+", "-", model) / task
    if resume and base.is_dir():
        unfinished = sorted(p for p in base.iterdir() if p.is_dir() and not (p / "report.json").exists())
        if unfinished:
            return unfinished[-1]
    return base / time.strftime("%Y%m%d-%H%M%S")


def pick_device(device: str):
    """``auto`` -> cuda when available, else cpu; an unavailable cuda is a UsageError."""
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError("--device cuda asked for, but torch sees no GPU; use --device cpu")
    if device not in ("cpu",) and not device.startswith("cuda"):
        raise UsageError(f"unknown device '{device}'; use auto, cpu or cuda")
    return torch.device(device)


def reproduce(model: str, task: str, *, data_dir: str | os.PathLike | None = None, runs: int = 1,
              epochs: int | None = None, batch_size: int | None = None, lr: float | None = None,
              img_size: int | None = None, label_fraction: float = 1.0, linear_probe: bool = False,
              device: str = "auto", seed: int = 0, out: str | os.PathLike | None = None, resume: bool = False,
              arch: str | None = None, progress: bool | str = True, cifar_stem: bool | None = None,
              keep_head: bool = False, precision: str | None = None, subset_seed: int | None = None,
              quick: bool = False, native_size: bool = False, dry_run: bool = False,
              pixels: dict[str, Any] | None = None, compile_model: bool | None = None) -> dict[str, Any]:
    """Fine-tune ``model`` on ``task`` ``runs`` times (seeds ``seed..seed+runs-1``) and report the test metric.

    Args:
        model: ``random:<timm arch>``, a registry id, a checkpoint folder, or a file (with ``arch``).
        task: a task id of the registry (``medhub tasks``).
        data_dir: the task's data folder; default ``$MEDHUB_DATA/<task>`` (embedded MedMNIST copies as
            the fallback for pneumoniamnist and breastmnist).
        runs, epochs, batch_size, lr, img_size, label_fraction, linear_probe: protocol overrides.
        device: ``auto``, ``cpu`` or ``cuda``.
        seed: seed of the first run.
        out: output folder (default ``$MEDHUB_RESULTS/<model>/<task>/<timestamp>``).
        resume: continue the runs saved in ``out`` (the latest unfinished folder when ``out`` is None).
        arch: timm architecture of a bare checkpoint file.
        progress: tqdm bars (True or "bar"), one stderr line per epoch and cache build ("lines"), or
            nothing (False or "off").
        cifar_stem: MedMNIST v2's CIFAR-style stem (3x3 stride-1 first conv, no max-pool) for a ``random:``
            ResNet: None follows the recipe (on at 28 px for MedMNIST, the published network); True/False
            force it (recorded as an override when it differs).
        keep_head: keep a pretrained classifier whose shape fits (default: re-initialise it the released
            code's way); an override, recorded.
        precision: fp32, fp16 or bf16 (default: the released code's, fp32 for classification); an override
            makes the run "not comparable".
        subset_seed: seed of the label-fraction subset (default 99, the released code's ``random.Random(99)``).
        quick: MedMNIST only: a ~150-step version of the 100-epoch schedule (indicative, not a verdict).
        native_size: MedMNIST only: read the native MedMNIST+ file of ``img_size`` instead of upsampling 28 px.
        dry_run: return the resolved plan (``Plan.as_dict()`` plus ``model``/``task``/``seed``/``runs``)
            without reading data, building the network or writing anything.
        pixels: fields of :class:`medhub.schema.PixelRule` replacing the task's (e.g. ``{"window": (-600,
            1500)}`` for a CT lung window, ``{"frame": 0}`` for multi-frame files); recorded in the plan,
            the report's data notes and the cache manifest.
        compile_model: run full training batches through ``torch.compile`` (True) or eagerly (False or None,
            the default: :mod:`medhub.train.compiled` says why); recorded per run in ``result.json``
            (``input.compile``).

    Returns:
        The report (also written to ``out/report.json``), ending in ``verdict`` and ``verdict_reasons``;
        with ``dry_run``, the plan.

    >>> report = reproduce("random:resnet18", "pneumoniamnist", epochs=1)  # doctest: +SKIP
    >>> sorted(report)[:4]  # doctest: +SKIP
    ['difference', 'environment', 'mean', 'metric']
    """
    from medhub.data import load_task_data, pixel_rule
    from medhub.data.loader import default_workers
    from medhub.registry import load_registry
    from medhub.train.network import check_input_size, check_stem, is_random, model_arch
    from medhub.train.protocol import make_plan
    from medhub.train.report import environment
    from medhub.train.runner import finish_builds, prepare_data, run_once, write_outputs

    bounds.check("runs", runs, label="--runs")
    bounds.check("seed", seed, label="--seed")
    entry = load_registry().get_task(task)
    model_arch(model, arch)  # an unknown id or architecture is refused before anything is written
    options = dict(model=model, epochs=epochs, batch_size=batch_size, lr=lr, img_size=img_size,
                   label_fraction=label_fraction, linear_probe=linear_probe, cifar_stem=cifar_stem,
                   random_model=is_random(model) and "resnet" in model.lower(), keep_head=keep_head,
                   precision=precision, subset_seed=subset_seed, quick=quick, native_size=native_size, arch=arch,
                   pixels=pixels)
    known_train = next((s.size for s in entry.splits if s.name == "train" and s.size), None)
    plan = make_plan(entry, **options,  # checks the overrides before any data is read
                     train_size=int(known_train * label_fraction) if known_train else None)
    check_stem(model, arch=arch, stem=plan.stem)
    size_note = None if entry.type == "segmentation" else check_input_size(model, plan.img_size, arch=arch)
    if size_note:
        plan.notes.append(size_note)
    if dry_run:
        return {"model": model, "task": entry.id, "seed": seed, "runs": runs, **plan.as_dict()}
    torch_device = pick_device(device)
    out_dir = _output_dir(model, entry.id, out, resume)
    existed = out_dir.exists()
    try:
        # only when asked: a task with the MedMNIST recipe may keep its data in class folders (examples/nih1000)
        reader_options = {"native_size": True} if native_size else {}
        data = load_task_data(entry, data_dir, img_size=plan.img_size, pixels=pixels, **reader_options)
        plan = make_plan(entry, **options, train_size=int(len(data.split("train")) * label_fraction))
        if size_note:
            plan.notes.append(size_note)
        splits = prepare_data(entry, data, plan, seed=seed, progress=progress,
                              overlap_first_epoch=default_workers(torch_device) == 0)
        out_dir.mkdir(parents=True, exist_ok=True)
        planned = {"model": model, "task": entry.id, "seed": seed, **plan.as_dict(),
                   **({"pixels": pixel_rule(entry, pixels).model_dump(mode="json")} if pixels else {})}
        _check_same_plan(out_dir / "plan.json", planned, resume)
        atomic_write_text(out_dir / "plan.json", json.dumps(planned, indent=1))
        results = [run_once(model, entry, data, splits, plan, seed=seed + i, run_dir=out_dir / f"run{i}",
                            device=torch_device, resume=resume, arch=arch, progress=progress, label=f"run {i}",
                            compile_model=compile_model)
                   for i in range(runs)]
        finish_builds(splits)
    except Exception:
        if not any(out_dir.glob("run*/state.pt")):  # nothing resumable: remove what this call created
            remove_created(out_dir, existed)
        raise
    metric = plan.metric
    protocol = {**plan.as_dict(), "data_notes": data.notes, "data_root": str(data.root), "model_arch": arch,
                "device": str(torch_device)}
    report = write_outputs(out_dir, model, entry, metric, results, protocol, environment(str(torch_device)),
                           plan.published)
    log.info("report written to %s", out_dir / "report.json")
    return report


def _output_dir(model: str, task: str, out: str | os.PathLike | None, resume: bool) -> Path:
    """The run folder, checked before anything is written: not a file, and holding a run iff ``resume``."""
    out_dir = Path(out) if out is not None else default_out(model, task, resume)
    check_output_dir(out_dir, "--out")
    started = out_dir.is_dir() and ((out_dir / "plan.json").is_file() or any(out_dir.glob("run*/state.pt")))
    if not resume and any(out_dir.glob("run*/state.pt")):
        raise UsageError(f"{out_dir} already holds runs; pass --resume to continue them or choose another --out")
    if resume and out is not None and not started:
        raise UsageError(f"--resume: {out_dir} holds no run to continue; drop --resume to start one there")
    if resume and out is None and not started:
        log.warning("--resume: no unfinished run of %s on %s under %s; starting a new one in %s", model, task,
                    out_dir.parent, out_dir)
    return out_dir


def _check_same_plan(path: Path, planned: dict[str, Any], resume: bool) -> None:
    """``--resume`` must continue the same plan: a changed option would silently mix two experiments."""
    if not resume or not path.is_file():
        return
    saved = json.loads(path.read_text())
    ignored = {"notes", "deviations", "setting", "published", "reference", "comparable", "shortened", "sources",
               "protocol_partly_unknown", "known_differences", "data_layout", "split", "augment"}  # derived
    changed = sorted(k for k in set(saved) | set(planned) if k not in ignored and saved.get(k) != planned.get(k))
    if changed:
        details = ", ".join(f"{k}: {saved.get(k)!r} -> {planned.get(k)!r}" for k in changed[:4])
        raise UsageError(f"{path.parent} was started with other options ({details}); resume with the same "
                         "options, or choose another --out")
