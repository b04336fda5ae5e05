"""``docs/protocols.md``, generated from the registry: one table per recipe, each value with its source.

The values are the task entries' ``protocol`` (and ``family_protocols``) fields; the source of each is
``protocol.code`` (``owner/repo@commit``) plus ``protocol.sources[<key>]`` (``path:line``). A value without a
cited source says so. ``medhub registry protocols --check`` (and a test) fail when the file is stale.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# protocol field -> (shown name, key in protocol.sources)
FIELDS = (
    ("optimizer", "optimizer", "optimizer"), ("lr", "lr", "lr"), ("weight_decay", "weight decay", "weight_decay"),
    ("batch_size", "batch size", "batch_size"), ("max_epochs", "epochs (max)", "epochs"),
    ("scheduler", "scheduler", "scheduler"), ("scheduler_kwargs", "scheduler settings", "scheduler_kwargs"),
    ("warmup_epochs", "warm-up epochs", "warmup_epochs"),
    ("early_stopping_patience", "early-stopping patience", "patience"), ("loss", "loss", "loss"),
    ("selection", "model selection", "selection"), ("normalization", "normalization", "normalization"),
    ("img_size", "image size", "img_size"), ("train_augment", "train augmentation", "augment"),
    ("augment_pipeline", "augmentation pipeline", "augment_pipeline"), ("augment_val", "augment validation too",
                                                                         "augment_val"),
    ("image_resize", "image resize", "image_resize"), ("eval_transform", "validation transform", "eval_transform"),
    ("test_transform", "test transform", "test_transform"), ("head_init", "classifier init", "head_init"),
    ("precision", "precision", "precision"), ("decoder", "decoder", "decoder"),
)
EXTRA_SOURCES = ("metric", "runs", "input", "stem", "scratch_init", "input_channels")
HEADER = ("# Fine-tuning protocols (generated)\n\n"
          "Generated from `registry.yaml` by `medhub registry protocols --out docs/protocols.md`; do not edit by hand "
          "(a test fails when this file is stale). Each value is the released code's, with the repository, path and "
          "line that set it. \"not cited\" marks a value the registry does not trace to the released code (a medhub "
          "default or an unknown); `medhub reproduce MODEL TASK --dry-run` lists those under "
          "`protocol_partly_unknown`. Research software, not a medical device.\n")


def _value(value: Any) -> str:
    if value is None or value == {} or value == () or value == []:
        return "-"
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, default=list).replace("|", "\\|")
    return str(value).replace("|", "\\|")


def _source(protocol, key: str) -> str:
    where = protocol.sources.get(key)
    if where is None:
        return "not cited"
    if "@" in where.split(" ")[0]:
        return where.replace("|", "\\|")
    return f"{protocol.code} {where}".replace("|", "\\|") if protocol.code else where


def _groups(registry) -> list[tuple[Any, list[str]]]:
    """(protocol, ["task" or "task (family)", ...]) with identical protocols grouped, in registry order."""
    groups: list[tuple[Any, list[str]]] = []
    for task in registry.tasks.values():
        for label, protocol in ((task.id, task.protocol), *((f"{task.id} ({family})", proto) for family, proto in
                                                           sorted(task.family_protocols.items()))):
            for existing, names in groups:
                if existing == protocol:
                    names.append(label)
                    break
            else:
                groups.append((protocol, [label]))
    return groups


def render(registry=None) -> str:
    """The whole ``docs/protocols.md`` text for ``registry`` (default: the loaded one)."""
    if registry is None:
        from medhub.registry import load_registry

        registry = load_registry()
    lines = [HEADER]
    by_recipe: dict[str, list[tuple[Any, list[str]]]] = {}
    for protocol, names in _groups(registry):
        by_recipe.setdefault(protocol.recipe, []).append((protocol, names))
    for recipe in sorted(by_recipe):
        for index, (protocol, names) in enumerate(by_recipe[recipe]):
            variant = f" (variant {index + 1})" if len(by_recipe[recipe]) > 1 else ""
            lines += [f"## {recipe}{variant}", "", f"Tasks: {', '.join(names)}", "",
                      f"Released code: {protocol.code or 'not recorded'}" + (f". {protocol.source}" if protocol.source
                                                                             else ""), ""]
            lines += ["| value | setting | source (repository@commit path:line) |", "|---|---|---|"]
            for field, shown, key in FIELDS:
                lines.append(f"| {shown} | {_value(getattr(protocol, field))} | {_source(protocol, key)} |")
            for key in EXTRA_SOURCES:
                if key in protocol.sources:
                    lines.append(f"| {key.replace('_', ' ')} | (see source) | {_source(protocol, key)} |")
            if protocol.unknown:
                lines += ["", "Unknown in the released code: " + ", ".join(protocol.unknown)]
            if protocol.notes:
                lines += ["", f"Notes: {protocol.notes}"]
            lines.append("")
    lines += _segmentation_networks()
    lines += ["## Labels and label-fraction subsets per task", "",
              "| task | labels trained | labels evaluated | subset splits (seed) | subset source |", "|---|---|---|---|---|"]
    for task in registry.tasks.values():
        subset = task.label_subset
        lines.append(f"| {task.id} | {len(task.trained_labels)} | {len(task.labels)} | "
                     f"{', '.join(subset.splits)} ({subset.seed}) | {_value(subset.source) if subset.source else 'not cited (medhub default: train only)'} |")
    return "\n".join(lines).rstrip() + "\n"


def _segmentation_networks() -> list[str]:
    """How medhub's segmentation networks and augmentation differ from the released ones (medhub.train.segnet)."""
    from medhub.data.seg_augment import LIBRARY_DIFFERENCES
    from medhub.train.segnet import UPERNET_DIFFERENCES

    return ["## Segmentation networks and augmentation", "",
            "U-Net (ResNet) and UperNet (ConvNeXt, Swin) come from segmentation_models_pytorch on timm encoders "
            "filled through medhub's strict load (`medhub/train/segnet.py`). The U-Net matches the released smp "
            "U-Net (decoder 256-128-64-32-16, nearest upsampling, 3x3 head). smp's UperNet differs from the "
            "released `UperNet_convnext` / `UperNet_swin` (BenchmarkTransferLearning@5656fec Version2/convnext.py, "
            "swin_transformer.py) in:", "",
            *[f"- {d}" for d in UPERNET_DIFFERENCES], "",
            "The albumentations pipeline is the released one rebuilt with albumentations 2.x "
            "(`medhub/data/seg_augment.py`); what 2.x cannot express:", "",
            *[f"- {d}" for d in LIBRARY_DIFFERENCES], ""]


def write(path: Path, registry=None) -> bool:
    """Write ``render()`` to ``path`` atomically; True when the content changed."""
    from medhub._io import atomic_write_text

    text = render(registry)
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return False
    atomic_write_text(path, text)
    return True
