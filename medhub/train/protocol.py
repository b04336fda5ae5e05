"""Turn a task entry's protocol plus the user's overrides into a concrete plan; every override recorded.

Recipes:

* ``medmnist_v2``: arrays at ``img_size``, no augmentation, no crops, selection by validation AUC.
* ``benchmark_classification``: arrays cached at ``img_size / 0.875`` (256 for 224), the protocol's
  augmentations with a random resized crop to ``img_size``, centre crop for validation and a ten-crop
  average for test.
* ``benchmark_segmentation``: arrays and masks at ``img_size``, joint augmentations, Dice.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

# The MedMNIST v2 recipe is 100 epochs; without --epochs, reproduce runs a short version of the same
# schedule (milestones scale with the epochs) so the README's command finishes in minutes on a laptop:
# at least QUICK_MEDMNIST_EPOCHS epochs and about QUICK_MEDMNIST_STEPS optimizer steps (small sets get more epochs).
QUICK_MEDMNIST_EPOCHS = 10
QUICK_MEDMNIST_STEPS = 360
CIFAR_STEM_NOTE = ("MedMNIST v2's reported 28 px ResNet numbers come from a CIFAR-style ResNet (3x3 stride-1 first "
                   "conv, no max-pool); timm's stem downsamples 4x more: --cifar-stem reproduces that network")


@dataclass
class Plan:
    """The protocol a run follows, after overrides."""

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
    stem: str | None = None  # None: timm's stem; "cifar": 3x3 stride-1 first conv, no max-pool
    family: str | None = None  # architecture family whose recipe applies (task.family_protocols)
    decoder: str | None = None  # segmentation: unet or upernet
    warmup_epochs: int = 0
    precision: str | None = None
    augment_pipeline: str | None = None
    augment_val: bool = False
    image_resize: str = "bilinear"
    overrides: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready view for report.protocol."""
        data = asdict(self)
        data["train_augment"] = list(self.train_augment)
        return data


def protocol_for(task, family: str | None):
    """The task's protocol for an architecture family: ``task.family_protocols[family]``, else ``task.protocol``."""
    return (getattr(task, "family_protocols", None) or {}).get(family or "", task.protocol)


def _crop_ratio(protocol) -> float:
    """Resize-then-crop ratio from the eval transform (``resize_256_center_crop_224`` -> 256/224)."""
    import re

    numbers = [int(n) for n in re.findall(r"\d+", protocol.eval_transform or "")]
    return numbers[0] / numbers[1] if len(numbers) >= 2 and numbers[1] else 256 / 224


def quick_epochs(protocol, train_size: int | None, batch_size: int) -> int:
    """Epochs of the default short MedMNIST run: ~QUICK_MEDMNIST_STEPS steps, at least QUICK_MEDMNIST_EPOCHS."""
    if not train_size:
        return QUICK_MEDMNIST_EPOCHS
    steps_per_epoch = -(-train_size // batch_size)
    return min(protocol.max_epochs, max(QUICK_MEDMNIST_EPOCHS, -(-QUICK_MEDMNIST_STEPS // steps_per_epoch)))


def make_plan(task, *, epochs: int | None = None, batch_size: int | None = None, lr: float | None = None,
              img_size: int | None = None, label_fraction: float = 1.0, linear_probe: bool = False,
              train_size: int | None = None, cifar_stem: bool = False, random_model: bool = False,
              family: str | None = None) -> Plan:
    """The plan for ``task`` with the given overrides (None keeps the protocol's value).

    ``train_size`` (training samples after the label fraction) sizes the default short MedMNIST run.
    ``cifar_stem`` builds the ResNet with MedMNIST's CIFAR-style stem; ``random_model`` (a ``random:`` ResNet,
    the only kind that option applies to) adds a note pointing to it on a 28 px MedMNIST run without it.
    ``family`` (resnet, convnext, swin, ...) picks the task's recipe for that architecture family
    (``task.family_protocols``, e.g. the 2025 recipe for ConvNeXt/Swin on the 2021 segmentation tasks).
    """
    protocol = protocol_for(task, family)
    from medhub import bounds

    for name, value in (("label_fraction", label_fraction), ("epochs", epochs), ("batch_size", batch_size),
                        ("img_size", img_size), ("lr", lr)):
        bounds.check(name, value, label=f"--{name.replace('_', '-')}")
    overrides: dict[str, Any] = {}
    notes: list[str] = []
    for name, value, default in (("batch_size", batch_size, protocol.batch_size), ("lr", lr, protocol.lr),
                                 ("img_size", img_size, protocol.img_size)):
        if value is not None and value != default:
            overrides[name] = {"value": value, "protocol": default}
    if epochs is None and protocol.recipe == "medmnist_v2" and protocol.max_epochs > QUICK_MEDMNIST_EPOCHS:
        epochs = quick_epochs(protocol, train_size, batch_size or protocol.batch_size)
        overrides["epochs"] = {"value": epochs, "protocol": protocol.max_epochs,
                               "why": f"default short run (about {QUICK_MEDMNIST_STEPS} steps); pass --epochs "
                                      f"{protocol.max_epochs} for the full recipe"}
    elif epochs is not None and epochs != protocol.max_epochs:
        overrides["epochs"] = {"value": epochs, "protocol": protocol.max_epochs}
    if label_fraction != 1.0:
        overrides["label_fraction"] = {"value": label_fraction, "protocol": 1.0}
    if linear_probe:
        overrides["linear_probe"] = {"value": True, "protocol": False}
    size = img_size or protocol.img_size
    if cifar_stem:
        overrides["stem"] = {"value": "cifar", "default": "timm", "why": "3x3 stride-1 first conv, no max-pool "
                             "(the CIFAR-style ResNet of MedMNIST v2's 28 px experiments)"}
    elif random_model and protocol.recipe == "medmnist_v2" and size == 28:
        notes.append(CIFAR_STEM_NOTE)
    segmentation = task.type == "segmentation"
    crops = protocol.recipe.startswith("benchmark") and not segmentation
    cache_size = round(size * _crop_ratio(protocol)) if crops else size
    augment = tuple(protocol.train_augment)
    if crops and not augment:
        augment = ("random_resized_crop", "horizontal_flip", "rotation_7")
        notes.append("augmentations: the benchmark's RandomResizedCrop, horizontal flip, rotation 7 (entry lists none)")
    if crops and not any("resized" in a for a in augment):
        augment = ("random_resized_crop", *augment)
    ten_crop = size if crops and "ten" in (protocol.test_transform or "ten_crop").lower() else None
    if segmentation:
        outputs = 1
    elif protocol.loss == "cross_entropy":
        outputs = len(task.labels)
    else:
        outputs = task.num_classes
    selection = protocol.selection
    if segmentation and selection == "val_auc":
        selection = "val_dice"
    return Plan(
        recipe=protocol.recipe, img_size=size, cache_size=cache_size, epochs=epochs or protocol.max_epochs,
        batch_size=batch_size or protocol.batch_size, lr=lr or protocol.lr, optimizer=protocol.optimizer,
        weight_decay=protocol.weight_decay, scheduler=protocol.scheduler,
        scheduler_kwargs=dict(protocol.scheduler_kwargs), patience=protocol.early_stopping_patience,
        loss=protocol.loss, selection=selection, normalization=protocol.normalization, train_augment=augment,
        center_crop=size if crops else None, ten_crop=ten_crop, label_fraction=label_fraction,
        linear_probe=linear_probe, num_outputs=outputs, stem="cifar" if cifar_stem else None, overrides=overrides,
        notes=notes, family=family, decoder=_decoder(protocol, family) if segmentation else None,
        warmup_epochs=protocol.warmup_epochs, precision=protocol.precision,
        augment_pipeline=protocol.augment_pipeline, augment_val=protocol.augment_val,
        image_resize=protocol.image_resize,
    )


def _decoder(protocol, family: str | None) -> str:
    """The protocol's segmentation decoder, else the released choice for the family (UperNet for ConvNeXt/Swin)."""
    from medhub.train.segnet import default_decoder

    return protocol.decoder or default_decoder(family or "other")
