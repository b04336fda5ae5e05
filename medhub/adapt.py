"""``medhub adapt``: continue training a checkpoint on a task's labels and register the result as a new checkpoint.

The benchmark's supervised domain adaptation (ImageNet -> ChestX-ray14 ...)::

    base checkpoint ─► reproduce's stages (plan, data, one run) ─► best epoch's backbone (head dropped)
        ─► OUT_DIR: model.safetensors + config.json + README.md card (medhub.export, medhub.cards)
        ─► user registry overlay, lineage = base's + this stage, source = local OUT_DIR

after which ``medhub.load(NEW_ID)`` and ``medhub push OUT_DIR --repo ...`` work. Research software, not a
medical device.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any

from medhub._io import atomic_write_text, sha256_file
from medhub.errors import MedhubError, UsageError
from medhub.schema import ID_PATTERN, Checkpoint, Head, Licence, LineageStage, Preprocessing, WeightSource

log = logging.getLogger(__name__)


def default_id(base: str, task_id: str) -> str:
    """``swin_base_imagenet21k`` + chestxray14 -> ``swin_base_imagenet21k_chestxray14``; random:resnet18 -> resnet18_<task>."""
    stem = base.split(":", 1)[1] if base.startswith("random:") else Path(base).name
    return re.sub(r"[^a-z0-9_.\-]+", "_", f"{stem}_{task_id}".lower())


def _folder_lineage(base: str) -> tuple[LineageStage, ...]:
    """Stages recorded in a medhub model folder's config.json (``medhub.lineage``), if any."""
    config = Path(base).expanduser() / "config.json"
    try:
        recorded = json.loads(config.read_text()).get("medhub", {}).get("lineage") or []
        return tuple(LineageStage(**stage) for stage in recorded if isinstance(stage, dict))
    except (OSError, ValueError, TypeError):
        return ()


def _base_entry(base: str) -> Checkpoint | None:
    if base.startswith("random:") or os.sep in base or Path(base).exists():
        return None
    from medhub.registry import load_registry

    return load_registry().get_model(base)


def adapt(base: str, task: str, *, data_dir: str | os.PathLike | None, out: str | os.PathLike,
          new_id: str | None = None, epochs: int | None = None, batch_size: int | None = None,
          lr: float | None = None, img_size: int | None = None, device: str = "auto", seed: int = 0,
          resume: bool = False, arch: str | None = None, progress: bool | str = True,
          overlay: str | os.PathLike | None = None) -> dict[str, Any]:
    """Fine-tune ``base`` on ``task``, save its backbone to ``out`` and register it as ``new_id``.

    ``overlay`` is the registry overlay file the new entry goes into (default: the user's
    ``~/.config/medhub/registry.d/user.yaml``); a throwaway ``out`` (an example, a test) should name its own
    overlay, so the user's registry never points at a folder that will vanish. Add that file to
    ``MEDHUB_REGISTRY`` to load the new id.

    Returns:
        ``{"id", "out", "lineage", "val_metric", "test_metric", "epochs"}``.

    >>> adapt("resnet50_imagenet1k", "chestxray14", data_dir="DATA/cxr14", out="r50_cxr")  # doctest: +SKIP
    """
    from medhub import bounds
    from medhub._io import check_output_dir, remove_created
    from medhub.data import load_task_data
    from medhub.data.loader import default_workers
    from medhub.registry import load_registry
    from medhub.reproduce import pick_device
    from medhub.train.network import check_input_size
    from medhub.train.protocol import make_plan
    from medhub.train.runner import finish_builds, prepare_data, run_once

    task_entry = load_registry().get_task(task)
    if task_entry.type == "segmentation":
        raise UsageError("adapt trains a classification backbone; choose a classification task")
    base_entry = _base_entry(base)
    model_id = new_id or default_id(base_entry.id if base_entry else base, task_entry.id)
    if not re.match(ID_PATTERN, model_id):
        raise UsageError(f"'{model_id}' is not a valid id (lowercase letters, digits, _ . -); choose another --id")
    _check_free(model_id)
    bounds.check("seed", seed, label="--seed")
    make_plan(task_entry, model=base, epochs=epochs, batch_size=batch_size, lr=lr, img_size=img_size)  # checks the overrides
    torch_device = pick_device(device)
    check_input_size(base, img_size or task_entry.protocol.img_size, arch=arch)
    out_dir = check_output_dir(out, "--out").resolve()
    if overlay is not None and Path(overlay).is_dir():
        raise UsageError(f"--overlay {overlay} is a folder; pass the overlay file to write (e.g. {overlay}/mine.yaml)")
    if resume and not (out_dir / "training").is_dir():
        raise UsageError(f"--resume: {out_dir} holds no adaptation to continue; drop --resume to start one there")
    existed = out_dir.exists()
    try:
        data = load_task_data(task_entry, data_dir, img_size=img_size or task_entry.protocol.img_size)
        plan = make_plan(task_entry, model=base, epochs=epochs, batch_size=batch_size, lr=lr, img_size=img_size,
                         train_size=len(data.split("train")))
        splits = prepare_data(task_entry, data, plan, seed=seed, progress=progress,
                              overlap_first_epoch=default_workers(torch_device) == 0)
        result = run_once(base, task_entry, data, splits, plan, seed=seed, run_dir=out_dir / "training",
                          device=torch_device, resume=resume, arch=arch, progress=progress, in_chans=3,
                          label="adapt")
        finish_builds(splits)
    except Exception:
        if not (out_dir / "training" / "state.pt").exists():  # nothing resumable: remove what was created
            remove_created(out_dir, existed)
        raise
    network = _backbone(base, arch, result["checkpoint"], plan.num_outputs)
    timm_arch = network.pretrained_cfg.get("architecture") or (base_entry.arch if base_entry else arch)
    stage = LineageStage(dataset=task_entry.id, objective="supervised", epochs=result["epochs"],
                         source="medhub adapt",
                         notes=f"{task_entry.protocol.recipe} protocol; best epoch {result['best_epoch']}; "
                               f"test {task_entry.metric} {result['metric']:.4f}")
    lineage = (*(base_entry.lineage if base_entry else _folder_lineage(base)), stage)
    entry = _entry(model_id, timm_arch, network, base_entry, lineage, out_dir, task_entry, plan)
    sha = _write_folder(out_dir, network, entry, base, result)
    entry = entry.model_copy(update={"sources": (entry.sources[0].model_copy(update={"sha256": sha}),)})
    atomic_write_text(out_dir / "README.md", _card(entry))
    from medhub.registry import write_overlay_entry

    overlay = write_overlay_entry(entry, Path(overlay).resolve() if overlay is not None else "user.yaml")
    log.info("registered %s in %s", model_id, overlay)
    return {"id": model_id, "out": str(out_dir), "overlay": str(overlay),
            "lineage": [s.model_dump(mode="json", exclude_none=True) for s in lineage],
            "test_metric": result["metric"], "metric": task_entry.metric, "epochs": result["epochs"]}


def _check_free(model_id: str) -> None:
    from medhub.registry import load_registry

    try:
        existing = load_registry().get_model(model_id)
    except MedhubError:
        return
    if not existing.published:  # a recipe-only entry (e.g. the brief's swin_base_imagenet21k_chestx) gets its weights
        return
    raise UsageError(f"checkpoint id '{model_id}' already exists; choose another with --id")


def _backbone(base: str, arch: str | None, weights: str, outputs: int):
    """The trained network with its task head dropped (``num_classes=0``)."""
    from safetensors.torch import load_file

    from medhub.train.network import build_network, is_random

    network = build_network(base, num_outputs=outputs, in_chans=3 if is_random(base) else None, arch=arch)
    network.load_state_dict(load_file(weights))
    network.reset_classifier(0)
    return network


def _trained_preprocessing(network, plan) -> Preprocessing:
    """The input contract the run trained with: the plan's image size, crop and normalization (as fed by
    :func:`medhub.data.loader.to_model_input`), not the base network's ``pretrained_cfg``."""
    from medhub.data.loader import normalization_stats

    in_chans = next(m for m in network.modules() if m.__class__.__name__ == "Conv2d").in_channels
    mean, std = normalization_stats(plan.normalization, in_chans)
    return Preprocessing(input_size=(in_chans, plan.img_size, plan.img_size), mean=mean, std=std,
                         crop_pct=plan.img_size / plan.cache_size)


def _entry(model_id: str, timm_arch: str, network, base: Checkpoint | None, lineage, out_dir: Path,
           task, plan) -> Checkpoint:
    cfg = dict(network.pretrained_cfg)
    first_conv = cfg.get("first_conv") or (base.head.first_conv if base else "conv1")
    classifier = cfg.get("classifier") or (base.head.classifier if base else "fc")
    data_terms = "; ".join(t for t in ((base.licence.data_terms if base else None), task.licence.data_terms) if t)
    return Checkpoint(
        id=model_id, arch=timm_arch, family=base.family if base else re.match(r"[a-z]+", timm_arch).group(0),
        objective="supervised", lineage=lineage,
        sources=(WeightSource(kind="local", filename=str(out_dir / "model.safetensors"), format="timm",
                              sha256=None, notes="written by medhub adapt"),),
        preprocessing=_trained_preprocessing(network, plan),
        head=Head(classifier=classifier, first_conv=first_conv, num_classes=0),
        licence=Licence(weights=None, data_terms=data_terms or None,
                        notes="Licence of adapted weights not declared; inherits the base's and the data's terms."),
        benchmarks=(),
        notes=(f"Made with medhub adapt from {base.id if base else 'random init'} on {task.id}.",),
    )


def _write_folder(out_dir: Path, network, entry: Checkpoint, base: str, result: dict) -> str:
    """model.safetensors + config.json (+ adapt.json); returns the weights' sha256."""
    from medhub.export import write_model_folder

    provenance = {"id": entry.id, "adapted_from": base,
                  "lineage": [s.model_dump(mode="json", exclude_none=True) for s in entry.lineage],
                  "licence": entry.licence.model_dump(mode="json", exclude_none=True),
                  "training": {k: result[k] for k in ("seed", "metric", "epochs", "best_epoch")}}
    cfg = {**network.pretrained_cfg,
           **entry.preprocessing.model_dump(include={"input_size", "mean", "std", "crop_pct"})}
    write_model_folder(out_dir, network.state_dict(), arch=entry.arch, num_classes=0, pretrained_cfg=cfg,
                       extra=provenance)
    atomic_write_text(out_dir / "adapt.json", json.dumps(provenance, indent=1))
    return sha256_file(out_dir / "model.safetensors")


def _card(entry: Checkpoint) -> str:
    try:
        from medhub.cards.card import render_card

        return render_card(entry)
    except Exception as exc:  # the card is a courtesy: never lose trained weights over it
        log.warning("model card generator failed (%s); writing a short card", exc)
        chain = " -> ".join(s.dataset for s in entry.lineage)
        return (f"# {entry.id}\n\n{entry.arch} backbone, lineage {chain}, made with `medhub adapt`.\n\n"
                "Research software, not a medical device: never use it for clinical decisions.\n")
