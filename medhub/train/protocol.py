"""Turn a task's recipe plus the user's overrides into a concrete plan; every override recorded.

One mechanism for every recipe: the task entry's ``protocol`` (``registry.yaml``) holds the released code's
values, each with its source (``protocol.code`` + ``protocol.sources``); :func:`make_plan` resolves them for
one (model, task) and the options, records each option that differs from the recipe in ``overrides``, works
out the run's *setting* (image size and how it was made, stem, label fraction, schedule) and looks up the
published number for exactly that setting (:func:`published_for`, no nearest fallback). ``Plan.as_dict()``
is what ``medhub reproduce --dry-run --json`` prints and what ``report.json`` keeps under ``protocol``; the
verdict (:mod:`medhub.train.verdict`) is computed from it and the runs' values.

Recipes (see docs/protocols.md, generated from the registry):

* ``medmnist_v2``: arrays at ``img_size``, no augmentation, no crops, selection by validation AUC; 28 px
  ResNets with the CIFAR-style stem, 224 px = 28 px images upsampled with NEAREST.
* ``benchmark_classification``: arrays cached at ``img_size / 0.875`` (256 for 224), the protocol's
  augmentations with a random resized crop to ``img_size``, centre crop for validation and a ten-crop
  average for test.
* ``benchmark_segmentation`` / ``benchmark_segmentation_v2``: arrays and masks at ``img_size``, joint
  augmentations, Dice.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

from medhub.errors import UsageError
from medhub.schema import PRECISIONS, RANDOM_PREFIX

# --quick: a shortened MedMNIST schedule (milestones scale with the epochs) so the README's command finishes in
# minutes on a laptop: at least QUICK_MEDMNIST_EPOCHS epochs and about QUICK_MEDMNIST_STEPS optimizer steps.
QUICK_MEDMNIST_EPOCHS = 4
QUICK_MEDMNIST_STEPS = 150
SHORTENED = "shortened schedule: indicative, not a verdict"
CIFAR_STEM_NOTE = ("MedMNIST v2's reported 28 px ResNet numbers come from a CIFAR-style ResNet (3x3 stride-1 first "
                   "conv, no max-pool); this run uses timm's stem, which downsamples 4x more")
IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
NAMED_NORMALIZATION = {"imagenet": IMAGENET, "half": {"mean": [0.5], "std": [0.5]},
                       "none": "[0, 1] (pixel / 255, no mean/std)"}
SUBSET_RULE = ("Python random.Random(seed).shuffle of the sample indexes in list-file order, then the first "
               "int(N * fraction) (the released code's --anno_percent rule)")
# How the images of a run were made (setting["input"]): the dataset's own images brought to img_size the
# recipe's way, or MedMNIST's 28 px images upsampled with NEAREST (MedMNIST v2's "224" rows).
NATIVE, NEAREST_FROM_28 = "native", "nearest_from_28"
# Segmentation's task metric: Dice pooled over all test pixels (threshold 0.5, empty/empty = 1), the papers'
# headline "Dice = x%" (BTL Version1/engine.py:246); the per-image mean is reported beside it.
DICE_POOLED = "dice_pooled"


@dataclass
class Plan:
    """The protocol a run follows, after overrides (``as_dict`` is the dry-run JSON)."""

    recipe: str
    img_size: int
    cache_size: int
    epochs: int
    batch_size: int
    lr: float
    optimizer: str
    weight_decay: float
    scheduler: str | None
    scheduler_kwargs: dict[str, Any]
    patience: int | None
    loss: str
    selection: str
    normalization: str
    train_augment: tuple[str, ...]
    center_crop: int | None
    ten_crop: int | None
    label_fraction: float
    linear_probe: bool
    num_outputs: int
    stem: str | None = None  # None: the architecture's stem; "cifar": 3x3 stride-1 first conv, no max-pool
    family: str | None = None  # architecture family whose recipe applies (task.family_protocols)
    decoder: str | None = None  # segmentation: unet or upernet
    warmup_epochs: int = 0
    precision: str = "fp32"
    augment_pipeline: str | None = None
    augment_val: bool = False
    image_resize: str = "bilinear"
    overrides: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    model: str = ""
    task: str = ""
    metric: str = "auc"
    head_init: dict[str, Any] = field(default_factory=dict)
    scratch_init: str | None = None
    input: str = NATIVE
    input_channels: int | None = None
    augment: list[dict[str, Any]] = field(default_factory=list)
    split: dict[str, Any] = field(default_factory=dict)
    subset: dict[str, Any] | None = None
    labels_trained: list[str] = field(default_factory=list)
    labels_evaluated: list[str] = field(default_factory=list)
    setting: dict[str, Any] = field(default_factory=dict)
    published: dict[str, Any] | None = None
    reference: dict[str, Any] | None = None
    deviations: list[str] = field(default_factory=list)
    protocol_partly_unknown: list[str] = field(default_factory=list)
    known_differences: list[str] = field(default_factory=list)
    comparable: bool = False
    shortened: bool = False
    sources: dict[str, str] = field(default_factory=dict)
    data_layout: dict[str, Any] = field(default_factory=dict)

    @property
    def normalization_values(self) -> dict[str, Any] | str:
        """``{'mean': [...], 'std': [...]}`` for a named normalization, else its description."""
        return NAMED_NORMALIZATION.get(self.normalization, self.normalization)

    @property
    def evaluated_indices(self) -> list[int] | None:
        """Indexes of the evaluated labels among the trained ones (None when they are the same)."""
        if self.labels_evaluated == self.labels_trained:
            return None
        return [self.labels_trained.index(name) for name in self.labels_evaluated]

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready view: the dry-run plan and ``report.protocol``."""
        data = asdict(self)
        data["train_augment"] = list(self.train_augment)
        data["normalization_name"] = self.normalization
        data["normalization"] = self.normalization_values
        return data


def protocol_for(task, family: str | None):
    """The task's protocol for an architecture family: ``task.family_protocols[family]``, else ``task.protocol``."""
    return (getattr(task, "family_protocols", None) or {}).get(family or "", task.protocol)


def _crop_ratio(protocol) -> float:
    """Resize-then-crop ratio from the eval transform (``Resize(256) + CenterCrop(224)`` -> 256/224)."""
    numbers = [int(n) for n in re.findall(r"\d+", protocol.eval_transform or "")]
    return numbers[0] / numbers[1] if len(numbers) >= 2 and numbers[1] else 256 / 224


def quick_epochs(protocol, train_size: int | None, batch_size: int) -> int:
    """Epochs of the ``--quick`` MedMNIST run: ~QUICK_MEDMNIST_STEPS steps, at least QUICK_MEDMNIST_EPOCHS."""
    if not train_size:
        return QUICK_MEDMNIST_EPOCHS
    steps_per_epoch = -(-train_size // batch_size)
    return min(protocol.max_epochs, max(QUICK_MEDMNIST_EPOCHS, -(-QUICK_MEDMNIST_STEPS // steps_per_epoch)))


def model_family(model: str, arch: str | None = None) -> str | None:
    """``resnet``, ``densenet``, ``convnext``, ``swin`` or ``other`` of ``model``; None when it cannot be told.

    From the timm architecture (:func:`medhub.train.network.model_arch`: ``random:<arch>``, a registry
    entry's ``arch``, ``arch`` for a file, a model folder's config) without reading weights.
    """
    from medhub.train.network import model_arch
    from medhub.train.segnet import architecture_family

    name = model_arch(model, arch) if model else None
    return architecture_family(name) if name else None


def _head_init(protocol, family: str | None) -> tuple[dict[str, Any], bool]:
    """The recipe's fresh-classifier init for ``family`` and whether the released code states it."""
    table = dict(protocol.head_init)
    if family and family in table:
        return {**table[family], "family": family}, True
    if "*" in table:
        return {**table["*"], "family": family or "unknown"}, True
    return {"kind": "normal", "std": 0.01, "bias": 0.0, "family": family or "unknown",
            "why": "not stated by the released code for this family; medhub applies the lab's ResNet rule"}, False


def _source(protocol, key: str) -> str | None:
    """``owner/repo@commit path:line`` of one recipe value, or None."""
    where = protocol.sources.get(key)
    if where is None:
        return None
    return where if "@" in where.split(" ")[0] else f"{protocol.code} {where}" if protocol.code else where


def _augment_steps(plan_augment: tuple[str, ...], size: int, segmentation: bool, protocol=None
                   ) -> list[dict[str, Any]]:
    """The plan's ``augment``: steps with their parameters; a named pipeline is read from its constructed object."""
    if protocol is not None and protocol.augment_pipeline:
        from medhub.data.seg_augment import PIPELINE, SOURCE, describe, released_pipeline

        if protocol.augment_pipeline != PIPELINE:
            raise UsageError(f"unknown augmentation pipeline '{protocol.augment_pipeline}'; known: {PIPELINE}")
        applied = ["train", "val"] if protocol.augment_val else ["train"]
        return [{**step, "applied_to": applied, "library": "albumentations", "source": SOURCE}
                for step in describe(released_pipeline(size))]
    from medhub.data.loader import describe_augment

    return describe_augment(plan_augment, size, segmentation=segmentation)


def _validate(epochs, batch_size, img_size, lr, label_fraction, precision) -> None:
    from medhub import bounds

    for name, value in (("label_fraction", label_fraction), ("epochs", epochs), ("batch_size", batch_size),
                        ("img_size", img_size), ("lr", lr)):
        bounds.check(name, value, label=f"--{name.replace('_', '-')}")
    if precision is not None and precision not in PRECISIONS:
        raise UsageError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")


def make_plan(task, *, model: str = "", epochs: int | None = None, batch_size: int | None = None,
              lr: float | None = None, img_size: int | None = None, label_fraction: float = 1.0,
              linear_probe: bool = False, train_size: int | None = None, cifar_stem: bool | None = None,
              random_model: bool | None = None, keep_head: bool = False, precision: str | None = None,
              subset_seed: int | None = None, quick: bool = False, native_size: bool = False,
              family: str | None = None, arch: str | None = None, pixels: dict[str, Any] | None = None) -> Plan:
    """The plan for ``model`` on ``task`` with the given overrides (None keeps the recipe's value).

    Args:
        task: the registry's task entry.
        model: the model argument of ``reproduce`` (picks the head init by family and the published number).
        epochs, batch_size, lr, img_size, label_fraction, linear_probe, precision: overrides.
        train_size: training samples (after the label fraction); sizes the ``quick`` schedule.
        cifar_stem: True/False forces MedMNIST's CIFAR-style stem on/off for a ``random:`` ResNet; None
            follows the recipe (on for ``medmnist_v2`` at 28 px, the published network).
        random_model: the model is a ``random:`` ResNet (default: read from ``model``).
        keep_head: keep a pretrained head whose shape fits instead of the recipe's re-initialisation.
        subset_seed: seed of the label-fraction subset (default: the released code's 99).
        quick: ``medmnist_v2`` only: a ~150-step version of the schedule (indicative, not a verdict).
        native_size: MedMNIST: read the native MedMNIST+ file of ``img_size`` instead of upsampling 28 px.
        family: architecture family (resnet, convnext, swin, ...; default: from ``model`` and ``arch``); picks
            the task's recipe for that family (``task.family_protocols``) and the head init.
        arch: timm architecture of a bare checkpoint file.
        pixels: a user's pixel rule over the task's (``--window``/``--frame``); an override, recorded.

    Raises:
        UsageError: an invalid override (before any data is read).
    """
    if family is None:
        family = model_family(model, arch)
    protocol = protocol_for(task, family)
    _validate(epochs, batch_size, img_size, lr, label_fraction, precision)
    if random_model is None:
        random_model = model.startswith(RANDOM_PREFIX) and "resnet" in model.lower()
    medmnist = protocol.recipe == "medmnist_v2"
    if quick and not medmnist:
        raise UsageError("--quick applies to MedMNIST tasks (recipe medmnist_v2); use --epochs N to shorten others")
    if quick and epochs is not None:
        raise UsageError("--quick sets its own epochs; drop either --quick or --epochs")
    size = img_size or protocol.img_size
    if native_size and not medmnist:
        raise UsageError("--native-size applies to MedMNIST tasks (the MedMNIST+ 64/128/224 files)")
    if native_size and size == 28:
        raise UsageError("--native-size reads MedMNIST+ files of 64, 128 or 224 px: add --img-size 64|128|224")
    overrides: dict[str, Any] = {}
    notes: list[str] = []
    for name, value, default in (("batch_size", batch_size, protocol.batch_size), ("lr", lr, protocol.lr),
                                 ("img_size", img_size, protocol.img_size)):
        if value is not None and value != default:
            overrides[name] = {"value": value, "protocol": default}
    if quick:
        epochs = quick_epochs(protocol, train_size, batch_size or protocol.batch_size)
        overrides["epochs"] = {"value": epochs, "protocol": protocol.max_epochs,
                               "why": f"--quick (about {QUICK_MEDMNIST_STEPS} steps of the {protocol.max_epochs}-epoch "
                                      f"schedule, milestones scaled): {SHORTENED}"}
    elif epochs is not None and epochs != protocol.max_epochs:
        overrides["epochs"] = {"value": epochs, "protocol": protocol.max_epochs}
    epochs = epochs or protocol.max_epochs
    shortened = epochs < protocol.max_epochs
    if label_fraction != 1.0:
        overrides["label_fraction"] = {"value": label_fraction, "protocol": 1.0}
    if linear_probe:
        overrides["linear_probe"] = {"value": True, "protocol": False}
    if pixels:
        overrides["pixels"] = {"value": dict(pixels), "protocol": "the task's pixel rule"}
    plan_precision = precision or protocol.precision
    if plan_precision != protocol.precision:
        overrides["precision"] = {"value": plan_precision, "protocol": protocol.precision}
    # stem: the published MedMNIST 28 px network is the CIFAR-style ResNet; at 224 px torchvision's ResNet
    default_stem = "cifar" if medmnist and random_model and size == 28 and _cifar_stem_fits(model) else None
    if cifar_stem is None:
        stem = default_stem
    else:
        stem = "cifar" if cifar_stem else None
        if stem != default_stem:
            overrides["stem"] = {"value": stem or "standard", "protocol": default_stem or "standard",
                                 "why": "3x3 stride-1 first conv, no max-pool (MedMNIST v2's 28 px CIFAR-style "
                                        "ResNet)" if stem else "the architecture's own stem"}
    if medmnist and random_model and size == 28 and stem is None:
        notes.append(CIFAR_STEM_NOTE)
    head_init, head_known = _head_init(protocol, family)
    if keep_head:
        overrides["head"] = {"value": "kept when its shape fits", "protocol": head_init}
        head_init = {"kind": "kept", "fallback": head_init, "family": head_init.get("family")}
    segmentation = task.type == "segmentation"
    crops = protocol.recipe.startswith("benchmark") and not segmentation
    cache_size = round(size * _crop_ratio(protocol)) if crops else size
    augment = tuple(protocol.train_augment)
    if crops and not augment:
        augment = ("random_resized_crop", "horizontal_flip", "rotation_7")
        notes.append("augmentations: the benchmark's RandomResizedCrop, horizontal flip, rotation 7 (entry lists none)")
    if crops and not any("resized" in a.lower() for a in augment):
        augment = ("random_resized_crop", *augment)
    ten_crop = size if crops and "ten" in (protocol.test_transform or "ten_crop").lower() else None
    if segmentation:
        outputs = 1
    elif protocol.loss == "cross_entropy":
        outputs = len(task.trained_labels)
    else:
        outputs = task.num_classes
    selection = protocol.selection
    if segmentation and selection == "val_auc":
        selection = "val_dice"
    input_kind, input_channels = NATIVE, None
    if medmnist and size != 28 and not native_size:
        input_kind = NEAREST_FROM_28
        input_channels = 3  # torchvision's ResNet takes RGB: MedMNIST's --as_rgb at --resize
    subset = None
    if label_fraction < 1.0:
        rule = task.label_subset
        seed = rule.seed if subset_seed is None else subset_seed
        if subset_seed is not None and subset_seed != rule.seed:
            overrides["subset_seed"] = {"value": subset_seed, "protocol": rule.seed}
        subset = {"rule": SUBSET_RULE, "seed": seed, "splits": list(rule.splits), "published_sizes": dict(rule.sizes),
                  "source": rule.source, "notes": rule.notes}
    elif subset_seed is not None:
        notes.append("--subset-seed has no effect without --label-fraction below 1")
    setting = {"img_size": size, "input": input_kind, "stem": stem or "standard", "label_fraction": label_fraction,
               "epochs": epochs}
    if subset is not None:
        setting["subset_seed"] = subset["seed"]
    metric = "dice" if segmentation else task.metric  # the registry's Dice numbers are the papers' pooled Dice
    published, reference, other_settings = published_for(model, task, metric, setting, protocol)
    if segmentation:
        metric = DICE_POOLED
    deviations = [_deviation(name, value) for name, value in overrides.items()
                  if name not in ("img_size", "label_fraction") and not (name == "epochs" and shortened)]
    if shortened:
        deviations.append(f"{SHORTENED} ({epochs} of {protocol.max_epochs} epochs{', --quick' if quick else ''})")
    if published is None and reference is None:
        for key in ("img_size", "label_fraction"):
            if key in overrides:
                deviations.append(_deviation(key, overrides[key]) + ": no published number for this setting")
    unknown = [f"{name}: {why}" for name, why in _unknowns(protocol)]
    unknown += [f"split {s.name}: {s.definition or 'not in the released code'}" for s in task.splits
                if not s.definition or "not in the reference" in s.definition]
    unknown += list(getattr(task, "unknown", ()))
    if getattr(task, "split_unknown", None):
        unknown.append(f"split: {task.split_unknown}")
    if not head_known and not keep_head and not segmentation:
        unknown.append(f"head_init: {head_init['why']}")
    if medmnist and random_model and not stem and size == 28:
        unknown.append("stem: timm's stem instead of the published CIFAR-style one")
    comparable = published is not None and not deviations and not task.split_unknown
    split = {s.name: {"size": s.size, "definition": s.definition} for s in task.splits}
    if task.split_unknown:
        split["unknown"] = task.split_unknown
    plan = Plan(
        recipe=protocol.recipe, img_size=size, cache_size=cache_size, epochs=epochs,
        batch_size=batch_size or protocol.batch_size, lr=lr or protocol.lr, optimizer=protocol.optimizer,
        weight_decay=protocol.weight_decay, scheduler=protocol.scheduler,
        scheduler_kwargs=dict(protocol.scheduler_kwargs), patience=protocol.early_stopping_patience,
        loss=protocol.loss, selection=selection, normalization=protocol.normalization, train_augment=augment,
        center_crop=size if crops else None, ten_crop=ten_crop, label_fraction=label_fraction,
        linear_probe=linear_probe, num_outputs=outputs, stem=stem, overrides=overrides, notes=notes,
        model=model, task=task.id, metric=metric, warmup_epochs=protocol.warmup_epochs, precision=plan_precision,
        head_init=head_init if not segmentation else {"kind": "decoder", "family": family or "unknown"},
        scratch_init=_scratch_init(protocol, model, stem), input=input_kind, input_channels=input_channels,
        augment=_augment_steps(augment, size, segmentation, protocol),
        split=split,
        subset=subset, labels_trained=list(task.trained_labels), labels_evaluated=list(task.labels),
        setting=setting, published=published, reference=reference if published is None else None,
        deviations=deviations, protocol_partly_unknown=unknown,
        known_differences=_known_differences(protocol, task, _decoder(protocol, family) if segmentation else None),
        comparable=comparable, shortened=shortened, sources=_sources(protocol),
        data_layout={"reader": task.layout.reader, "description": task.layout.description,
                     "files": list(task.layout.files), "download": task.layout.download},
        family=family, decoder=_decoder(protocol, family) if segmentation else None,
        augment_pipeline=protocol.augment_pipeline, augment_val=protocol.augment_val,
        image_resize=protocol.image_resize,
    )
    if published is None and other_settings:
        plan.notes.append("published numbers exist for other settings only: " + "; ".join(other_settings))
    return plan


def _cifar_stem_fits(model: str) -> bool:
    """True when ``model`` (a ``random:`` ResNet) can take MedMNIST's CIFAR-style stem (no weights read)."""
    if not model:
        return True
    from medhub.train.network import check_stem

    try:
        check_stem(model, stem="cifar")
    except UsageError:
        return False
    return True


def _deviation(name: str, value: dict[str, Any]) -> str:
    why = f" ({value['why']})" if value.get("why") else ""
    return f"{name}: {value['value']!r} instead of the published {value['protocol']!r}{why}"


def _unknowns(protocol) -> list[tuple[str, str]]:
    return [(name, "not stated by the released code (see the recipe's notes)") for name in protocol.unknown]


def _known_differences(protocol, task, decoder: str | None = None) -> list[str]:
    """What medhub does differently from the released code even under the recipe (stated, not hidden)."""
    if protocol.recipe == "benchmark_classification":
        return ["images are decoded once into a 256 px cache; RandomResizedCrop, flip and rotation then resample that "
                "array in one step (the released code crops the full-resolution PIL image)"]
    differences = []
    if decoder == "upernet":
        from medhub.train.segnet import UPERNET_DIFFERENCES

        differences += [f"UperNet (segmentation_models_pytorch) vs the released one: {d}" for d in UPERNET_DIFFERENCES]
    if protocol.augment_pipeline:
        from medhub.data.seg_augment import LIBRARY_DIFFERENCES

        differences += [f"augmentation (albumentations 2.x vs the released 0.x): {d}" for d in LIBRARY_DIFFERENCES]
    return differences


def _scratch_init(protocol, model: str, stem: str | None) -> str | None:
    """How a ``random:`` network is initialised: the released code's from-scratch init."""
    if not model.startswith(RANDOM_PREFIX):
        return None
    if protocol.recipe == "medmnist_v2" and stem == "cifar":
        return "pytorch_default"  # MedMNIST/experiments models.py: nn.Conv2d/BatchNorm2d/Linear defaults
    return "torchvision"  # torchvision/timm ResNet init without zero-initialised last BN


def _sources(protocol) -> dict[str, str]:
    return {key: _source(protocol, key) for key in protocol.sources}


def result_setting(result, protocol) -> dict[str, Any]:
    """A published number's full setting: its ``setting`` over the recipe's published defaults."""
    full = {"img_size": protocol.img_size, "input": NATIVE, "stem": "standard", "label_fraction": 1.0,
            "epochs": protocol.max_epochs}
    full.update(result.setting)
    if float(full["label_fraction"]) < 1.0:
        full.setdefault("subset_seed", 99)
    full["label_fraction"] = float(full["label_fraction"])
    return full


def published_for(model: str, task, metric: str, setting: dict[str, Any], protocol=None
                  ) -> tuple[dict[str, Any] | None, dict[str, Any] | None, list[str]]:
    """``(published, reference, other settings)`` for the run's exact ``setting`` (no nearest fallback).

    ``published`` is the registry's number whose full setting equals ``setting``; ``reference`` the one that
    differs only in the schedule (shown next to a shortened run, never compared); ``other settings`` lists
    the settings of the model's other numbers on this task and metric. ACC numbers of the same setting ride
    along as ``published['acc']``. ``protocol`` (default ``task.protocol``) gives the published defaults.
    """
    protocol = protocol or task.protocol
    from medhub.errors import MedhubError
    from medhub.registry import load_registry

    try:
        results = load_registry().results_for(model=model, task=task.id) if model else []
    except MedhubError:
        results = []
    by_metric = [(r, result_setting(r, protocol)) for r in results if r.metric == metric]

    def view(result, full) -> dict[str, Any]:
        out = {"mean": result.mean, "std": result.std, "runs": result.runs, "metric": result.metric,
               "source": result.source, "setting": full, "notes": result.notes}
        acc = [r for r in results if r.metric == "acc" and result_setting(r, protocol) == full]
        if acc and metric != "acc":
            out["acc"] = {"mean": acc[0].mean, "std": acc[0].std}
        return out

    exact = [view(r, full) for r, full in by_metric if full == setting]
    without_epochs = {k: v for k, v in setting.items() if k != "epochs"}
    near = [view(r, full) for r, full in by_metric
            if {k: v for k, v in full.items() if k != "epochs"} == without_epochs]
    others = [", ".join(f"{k}={v}" for k, v in full.items()) for _, full in by_metric if full != setting]
    return (exact[0] if exact else None), (near[0] if near else None), others


def _decoder(protocol, family: str | None) -> str:
    """The protocol's segmentation decoder, else the released choice for the family (UperNet for ConvNeXt/Swin)."""
    from medhub.train.segnet import default_decoder

    return protocol.decoder or default_decoder(family or "other")
