"""The registry's data model: checkpoints, tasks and reported results (pydantic, immutable).

Unknown facts are ``None`` together with a ``notes`` entry that says so; nothing here guesses.
The ids follow ``<arch>[_<objective>]_<data1>[_<data2>...]`` with the oldest data first.
"""

from __future__ import annotations

import math
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

ID_PATTERN = r"^[a-z0-9][a-z0-9_.\-]*$"
COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
RANDOM_PREFIX = "random:"
PRECISIONS = ("fp32", "fp16", "bf16")

TaskType = Literal["multi-label", "binary", "multi-class", "ordinal", "segmentation"]
SourceKind = Literal["medhub_hf", "timm_hf", "url", "manual", "local"]


class Frozen(BaseModel):
    """Base for every registry record: unknown fields are errors, values never change."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class LineageStage(Frozen):
    """One pretraining stage, in the order the stages ran."""

    dataset: str = Field(description="data token, e.g. imagenet1k, chestxray14, mimiccxr")
    objective: str = Field(description="supervised, mocov2, swav, simmim, ...")
    epochs: int | None = None
    source: str | None = Field(None, description="who ran this stage (repo, paper)")
    notes: str | None = None


class WeightSource(Frozen):
    """One place the weights can come from, tried in the order listed."""

    kind: SourceKind
    repo: str | None = Field(None, description="HF repo id for medhub_hf / timm_hf")
    revision: str | None = Field(None, description="40-hex commit for medhub_hf")
    filename: str | None = None
    url: str | None = None
    format: str | None = Field(None, description="converter format name (see medhub.convert)")
    sha256: str | None = None
    notes: str | None = None

    @field_validator("revision")
    @classmethod
    def _commit_is_hex(cls, value: str | None) -> str | None:
        if value is not None and not COMMIT_RE.match(value):
            raise ValueError(f"revision must be a 40-hex commit id, got {value!r}")
        return value

    @field_validator("sha256")
    @classmethod
    def _sha256_is_hex(cls, value: str | None) -> str | None:
        if value is not None and not SHA256_RE.match(value):
            raise ValueError(f"sha256 must be 64 lowercase hex characters, got {value!r}")
        return value

    @model_validator(mode="after")
    def _has_location(self) -> WeightSource:
        if self.kind in ("medhub_hf", "timm_hf") and not self.repo:
            raise ValueError(f"a {self.kind} source needs 'repo'")
        if self.kind == "medhub_hf" and not self.revision:
            raise ValueError("a medhub_hf source needs 'revision' pinned to a 40-hex commit")
        if self.kind == "url" and not self.url:
            raise ValueError("a url source needs 'url'")
        return self


class Preprocessing(Frozen):
    """The input contract: what the network expects to see."""

    input_size: tuple[int, int, int] = (3, 224, 224)
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    interpolation: str = "bicubic"
    crop_pct: float = 0.875
    notes: str | None = None

    @model_validator(mode="after")
    def _stats_match_channels(self) -> Preprocessing:
        channels = self.input_size[0]
        if len(self.mean) != channels or len(self.std) != channels:
            raise ValueError(f"mean/std need {channels} values for input_size {list(self.input_size)}")
        if any(s <= 0 for s in self.std):
            raise ValueError("std values must be positive")
        return self


class Head(Frozen):
    """Names timm uses for the classifier and first conv, and what the shipped head predicts."""

    classifier: str = Field(description="state-dict prefix of the classifier, e.g. fc or head.fc")
    first_conv: str = Field(description="state-dict prefix of the first conv, e.g. conv1 or patch_embed.proj")
    num_classes: int | None = Field(None, description="classes of the shipped head; 0 or None when it has none")
    label_names: tuple[str, ...] | None = None

    @model_validator(mode="after")
    def _labels_match_classes(self) -> Head:
        if self.label_names is not None and len(self.label_names) != (self.num_classes or 0):
            raise ValueError(
                f"head has {len(self.label_names)} label_names but num_classes={self.num_classes}"
            )
        return self


class Licence(Frozen):
    """Licence of the weights, and the terms of use of the data they were trained on."""

    weights: str | None = Field(None, description="SPDX id or a short name; None when unknown")
    data_terms: str | None = None
    url: str | None = None
    notes: str | None = None


class Paper(Frozen):
    """Where the checkpoint (or its benchmark) was described."""

    title: str
    citation: str | None = None
    doi: str | None = None
    url: str | None = None


class Recipe(Frozen):
    """How to produce weights that no one has published yet."""

    command: str
    notes: str | None = None


class Checkpoint(Frozen):
    """One pretrained checkpoint with its provenance."""

    id: str = Field(pattern=ID_PATTERN)
    aliases: tuple[str, ...] = ()
    arch: str = Field(description="timm architecture name")
    arch_kwargs: dict[str, int | float | str | bool] = Field(default_factory=dict)
    family: str = Field(description="resnet, densenet, convnext, swin, vit, deit, beit")
    objective: str = Field(description="objective of the last stage, or 'supervised'")
    lineage: tuple[LineageStage, ...]
    sources: tuple[WeightSource, ...] = ()
    mirrors: tuple[WeightSource, ...] = Field(
        (), description="site copies (medhub unpack / medhub mirror overlays), tried before the sources"
    )
    preprocessing: Preprocessing = Preprocessing()
    head: Head
    licence: Licence = Licence()
    paper: Paper | None = None
    benchmarks: tuple[str, ...] = Field((), description="papers/figures this checkpoint appears in")
    recipe: Recipe | None = None
    notes: tuple[str, ...] = ()

    @field_validator("aliases")
    @classmethod
    def _aliases_are_ids(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for alias in value:
            if not re.match(ID_PATTERN, alias):
                raise ValueError(f"alias {alias!r} is not a valid id")
        return value

    @model_validator(mode="after")
    def _weights_or_recipe(self) -> Checkpoint:
        if not self.lineage:
            raise ValueError("lineage needs at least one stage")
        if not self.sources and self.recipe is None:
            raise ValueError("a checkpoint needs weight sources, or a recipe saying how to produce them")
        return self

    @property
    def data_chain(self) -> tuple[str, ...]:
        """Datasets of the lineage, oldest first."""
        return tuple(stage.dataset for stage in self.lineage)

    @property
    def published(self) -> bool:
        """True when at least one source of weights is recorded."""
        return bool(self.sources)


class Split(Frozen):
    """How a task's data is divided."""

    name: str
    size: int | None = None
    definition: str | None = Field(None, description="official list file, ratio, or rule")


class Protocol(Frozen):
    """The fine-tuning recipe the benchmark used for a task."""

    recipe: str = Field(description="benchmark_classification, benchmark_segmentation, medmnist_v2, ...")
    optimizer: str = "adam"
    lr: float = 2e-4
    weight_decay: float = 0.0
    batch_size: int = 32
    max_epochs: int = 1000
    scheduler: str | None = "reduce_on_plateau"
    scheduler_kwargs: dict[str, float | int | str | list[float]] = Field(default_factory=dict)
    early_stopping_patience: int | None = 10
    loss: str = "bce"
    img_size: int = 224
    normalization: str = "imagenet"
    train_augment: tuple[str, ...] = ()
    eval_transform: str | None = None
    test_transform: str | None = None
    selection: str = Field("val_loss", description="what picks the best epoch: val_loss or val_auc")
    warmup_epochs: int = Field(0, ge=0, description="epochs of linear lr warm-up from 0 (scheduler warmup_cosine)")
    precision: str = Field("fp32", description="the released code's arithmetic: fp32, fp16 (autocast + grad "
                           "scaler) or bf16 (autocast)")
    augment_pipeline: str | None = Field(None, description="a named augmentation pipeline, e.g. btl_segmentation "
                                         "(albumentations, medhub.data.seg_augment)")
    augment_val: bool = Field(False, description="the training augmentation is applied to the validation split too")
    image_resize: Literal["bilinear", "nearest", "linear"] = Field(
        "bilinear", description="how images are resized to img_size: bilinear (PIL, antialiased; masks nearest), "
        "nearest (cv2 INTER_NEAREST, image and mask) or linear (cv2 INTER_LINEAR, mask thresholded at 127)")
    decoder: str | None = Field(None, description="segmentation decoder: unet or upernet; None: the released "
                                "choice for the backbone (UperNet for ConvNeXt/Swin, U-Net otherwise)")
    head_init: dict[str, dict[str, float | str]] = Field(
        default_factory=dict,
        description="how the released code initialises a fresh classifier, per model family ('*': any other), "
                    "e.g. {resnet: {kind: normal, std: 0.01, bias: 0}}; empty: the network's own init")
    code: str | None = Field(None, description="the released code these values come from: owner/repo@commit")
    sources: dict[str, str] = Field(
        default_factory=dict,
        description="per protocol value, where the released code sets it: 'path:line' in ``code`` (or "
                    "'owner/repo@commit path:line' for another repository)")
    unknown: tuple[str, ...] = Field((), description="values the released code leaves unknown or ambiguous")
    source: str | None = None
    notes: str | None = None

    @field_validator("precision")
    @classmethod
    def _known_precision(cls, value: str) -> str:
        if value not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {value!r}")
        return value


class LabelSubset(Frozen):
    """How the released code cuts a labelled subset at a label fraction (``--anno_percent``)."""

    rule: str = Field("random99_first_int", description="random99_first_int: Python random.Random(seed).shuffle "
                      "of the indexes in list-file order, then the first int(N * fraction)")
    seed: int = 99
    splits: tuple[str, ...] = Field(("train",), description="the splits cut (each with its own shuffle)")
    sizes: dict[str, int] = Field(default_factory=dict, description="published subset sizes, e.g. {'0.1': 9000}")
    source: str | None = None
    notes: str | None = None


class PixelRule(Frozen):
    """How stored pixel values become the uint8 grey levels a network sees (``medhub.data.images``).

    The defaults are the rule for every dataset that names nothing: a DICOM's own VOI LUT or window
    (its first, with its VOI LUT Function), else the full range its bit depth allows after the modality
    LUT; 16-bit PNG/TIFF through their significant bits. Recorded in cache manifests and reports.
    """

    window: tuple[float, float] | None = Field(
        None, description="(center, width) of a VOI window used instead of the DICOM file's own, in the units "
        "after the modality LUT (Hounsfield units for CT), e.g. a lung window (-600, 1500)")
    voi_function: Literal["LINEAR", "LINEAR_EXACT", "SIGMOID"] = Field(
        "LINEAR", description="VOI LUT Function of `window` (DICOM PS3.3 C.11.2.1.2-3)")
    frame: int | None = Field(
        None, ge=0, description="multi-frame DICOM or multi-page TIFF/GIF: the frame to read (0-based); "
        "None refuses such files")
    bits: int | None = Field(
        None, ge=1, le=16, description="16-bit PNG/TIFF: significant bits, 0..2**bits-1 onto 0..255 "
        "(None: the PNG's sBIT chunk, else 16)")
    no_window: Literal["bit_depth"] = Field(
        "bit_depth", description="a DICOM without VOI LUT or window: the range its Bits Stored allows, "
        "through the modality LUT, onto 0..255")

    @model_validator(mode="after")
    def _width(self) -> PixelRule:
        if self.window is not None and not all(math.isfinite(v) for v in self.window):
            raise ValueError(f"window center and width must be finite numbers, got {self.window}")
        width = self.window[1] if self.window is not None else 1.0
        if width <= 0 or (self.voi_function == "LINEAR" and width < 1):
            bound = ">= 1" if self.voi_function == "LINEAR" else "> 0"
            raise ValueError(f"window width must be {bound} for {self.voi_function} (DICOM PS3.3 C.11.2.1.2-3), "
                             f"got {width:g}")
        return self


class DataLayout(Frozen):
    """What the reader expects on disk, relative to the task's data folder."""

    reader: str = Field(description="medmnist_npz, nih_cxr14, chexpert, image_folder, csv_manifest, ...")
    description: str
    files: tuple[str, ...] = ()
    download: str | None = Field(None, description="where the data comes from (URL or instructions)")
    md5: dict[str, str] = Field(default_factory=dict, description="official md5 per file, when known")
    pixels: PixelRule = Field(default_factory=PixelRule, description="how pixel values become grey levels")


class Task(Frozen):
    """A downstream task of the benchmark."""

    id: str = Field(pattern=ID_PATTERN)
    name: str
    code: str | None = Field(None, description="the benchmark's short code, e.g. DXC14")
    modality: str
    type: TaskType
    labels: tuple[str, ...]
    labels_trained: tuple[str, ...] | None = Field(
        None, description="the head's outputs when they differ from ``labels`` (the evaluated ones, a subset)")
    metric: str = Field(description="auc, acc or dice")
    splits: tuple[Split, ...]
    protocol: Protocol
    family_protocols: dict[str, Protocol] = Field(
        default_factory=dict, description="architecture family (resnet, convnext, swin) -> the protocol that "
        "family was run with, when it differs from `protocol`")
    split_unknown: str | None = Field(None, description="why the published split is not known (the plan lists it "
                                      "under protocol_partly_unknown)")
    label_subset: LabelSubset = LabelSubset()
    unknown: tuple[str, ...] = Field((), description="what the released code leaves unknown for this task (the "
                                     "plan lists it under protocol_partly_unknown)")
    layout: DataLayout
    licence: Licence = Licence()
    paper: Paper | None = None
    notes: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _evaluated_are_trained(self) -> Task:
        if self.labels_trained is not None and not set(self.labels) <= set(self.labels_trained):
            missing = sorted(set(self.labels) - set(self.labels_trained))
            raise ValueError(f"labels {missing} are evaluated but not in labels_trained")
        return self

    @property
    def trained_labels(self) -> tuple[str, ...]:
        """The labels the head learns (``labels_trained`` or ``labels``)."""
        return self.labels_trained or self.labels

    @property
    def num_classes(self) -> int:
        """Outputs of the network's head for this task."""
        return 1 if self.type == "binary" else len(self.trained_labels)


class ReportedResult(Frozen):
    """A published number for one (model, task) pair."""

    model: str = Field(description="a checkpoint id, or random:<timm arch> for a from-scratch baseline")
    task: str
    metric: str
    mean: float = Field(description="on the 0-1 scale (AUC, accuracy, Dice)")
    std: float | None = None
    runs: int | None = None
    setting: dict[str, int | float | str] = Field(
        default_factory=dict, description="what distinguishes this number, e.g. img_size, label_fraction"
    )
    source: str
    notes: str | None = None

    @field_validator("mean", "std")
    @classmethod
    def _on_unit_scale(cls, value: float | None) -> float | None:
        if value is not None and not 0.0 <= value <= 1.0:
            raise ValueError(f"results are stored on the 0-1 scale, got {value}")
        return value

    @property
    def is_baseline(self) -> bool:
        """True for from-scratch baselines (``random:<arch>``)."""
        return self.model.startswith(RANDOM_PREFIX)


SIGNIFICANCE_LEVELS = ("n.s.", "*", "**", "***")


class PublishedComparison(Frozen):
    """A published difference between two checkpoints at one setting: ``model - baseline`` and/or its p-value.

    The MedIA (2025) overview figure prints such deltas (e.g. ConvNeXt-T minus Swin-T, +3.7 Dice on clavicle
    segmentation) and p-values; the figures' legend reads n.s., * p<0.05, ** p<0.01, *** p<0.0001.
    ``medhub results --db`` checks a grid against them.
    """

    model: str = Field(description="the checkpoint whose mean is the minuend (id or random:<arch>)")
    baseline: str = Field(description="the checkpoint subtracted")
    task: str
    metric: str
    delta: float | None = Field(None, description="model mean - baseline mean, 0-1 scale (e.g. +3.7 points = 0.037)")
    p_value: float | None = Field(None, ge=0.0, le=1.0)
    significance: str | None = Field(None, description="the printed mark: n.s., *, ** or ***")
    setting: dict[str, int | float | str] = Field(default_factory=dict)
    test: str | None = Field(None, description="the test behind the p-value, when stated")
    source: str
    notes: str | None = None

    @field_validator("delta")
    @classmethod
    def _delta_on_unit_scale(cls, value: float | None) -> float | None:
        if value is not None and not -1.0 <= value <= 1.0:
            raise ValueError(f"deltas are stored on the 0-1 scale, got {value}")
        return value

    @field_validator("significance")
    @classmethod
    def _known_mark(cls, value: str | None) -> str | None:
        if value is not None and value not in SIGNIFICANCE_LEVELS:
            raise ValueError(f"significance must be one of {', '.join(SIGNIFICANCE_LEVELS)}, got {value!r}")
        return value

    @model_validator(mode="after")
    def _has_a_number(self) -> PublishedComparison:
        if self.delta is None and self.p_value is None and self.significance is None:
            raise ValueError("a published comparison needs a delta, a p-value or a significance mark")
        return self
