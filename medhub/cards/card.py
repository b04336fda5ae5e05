"""Registry entry (+ reported results) -> a Hugging Face model card: YAML front matter, then Markdown.

The card is a pure function of the registry: same registry, same bytes. Nothing here reads the clock,
the network or the weights, so ``medhub cards build --check`` can tell a stale card from a current one.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import yaml

from medhub.schema import Checkpoint, ReportedResult, Task

DISCLAIMER = (
    "Research software, not a medical device: these weights and their outputs must not be used for "
    "clinical decisions, diagnosis or patient management."
)

# Display names for the registry's data tokens (the tokens themselves stay in tags and front matter).
DATASET_NAMES = {
    "imagenet1k": "ImageNet-1K",
    "imagenet21k": "ImageNet-21K",
    "imagenet21kp": "ImageNet-21K-P (MIIL)",
    "inat2021": "iNat2021",
    "inat2021mini": "iNat2021-mini",
    "places365": "Places365",
    "coco": "COCO",
    "chestxray14": "ChestX-ray14 (NIH)",
    "chexpert": "CheXpert",
    "mimiccxr": "MIMIC-CXR",
    "xray926k": "X-ray 926K",
    "radimagenet": "RadImageNet",
}

# Benchmark keys used in ``Checkpoint.benchmarks`` -> (the paper to cite, its DOI).
BENCHMARK_PAPERS = {
    "dart2021": (
        "Hosseinzadeh Taher, Haghighi, Feng, Gotway, Liang. A Systematic Benchmarking Analysis of Transfer "
        "Learning for Medical Image Analysis. DART@MICCAI 2021, LNCS 12968:3-13.",
        "10.1007/978-3-030-87722-4_1",
    ),
    "media2025": (
        "Hosseinzadeh Taher, Haghighi, Gotway, Liang. Large-scale benchmarking and boosting transfer learning "
        "for medical image analysis. Medical Image Analysis 102:103487 (2025).",
        "10.1016/j.media.2025.103487",
    ),
}

# Licence ids the Hub's ``license`` field accepts as they are; anything else becomes ``other``.
HUB_LICENCES = {
    "apache-2.0",
    "mit",
    "bsd-2-clause",
    "bsd-3-clause",
    "bsd-3-clause-clear",
    "cc0-1.0",
    "cc-by-4.0",
    "cc-by-sa-4.0",
    "cc-by-nc-4.0",
    "cc-by-nc-sa-4.0",
    "cc-by-nc-nd-4.0",
    "cc-by-nd-4.0",
    "gpl-3.0",
    "lgpl-3.0",
    "agpl-3.0",
    "mpl-2.0",
    "openrail",
    "unknown",
    "other",
}

TASK_NAMES = {
    "multi-label": "Multi-label image classification",
    "binary": "Binary image classification",
    "multi-class": "Multi-class image classification",
    "ordinal": "Ordinal image classification",
    "segmentation": "Image segmentation",
}
METRIC_TYPES = {"auc": "roc_auc", "acc": "accuracy", "dice": "dice"}
METRIC_NAMES = {"auc": "AUC", "acc": "Accuracy", "dice": "Dice"}


@dataclass(frozen=True)
class CardContext:
    """What a card needs besides its entry: its results, the tasks they refer to, and its parent."""

    results: Sequence[ReportedResult] = ()
    tasks: dict[str, Task] = field(default_factory=dict)
    parent: Checkpoint | None = None
    parent_exact: bool = False  # True when every earlier stage is recorded identically (same run)


def dataset_name(token: str) -> str:
    """Human name of a data token (``chestxray14`` -> ``ChestX-ray14 (NIH)``)."""
    return DATASET_NAMES.get(token, token)


def hub_repo(entry: Checkpoint) -> tuple[str, str | None] | None:
    """``(repo, revision)`` of the first Hugging Face source timm can read, or None when unpublished."""
    for source in entry.sources:
        if source.kind in ("medhub_hf", "timm_hf") and source.repo:
            return source.repo, source.revision
    return None


def licence_fields(entry: Checkpoint) -> dict:
    """The Hub's ``license`` field (plus ``license_name``/``license_link`` for other licences)."""
    weights = entry.licence.weights
    if weights is None:
        return {"license": "unknown"}
    key = weights.strip().lower()
    if key in HUB_LICENCES:
        return {"license": key}
    slug = re.sub(r"[^a-z0-9]+", "-", key).strip("-") or "other"
    fields = {"license": "other", "license_name": slug}
    if entry.licence.url:
        fields["license_link"] = entry.licence.url
    return fields


def _setting_text(result: ReportedResult) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(result.setting.items()))


def _model_index(entry: Checkpoint, ctx: CardContext) -> list[dict]:
    rows = []
    for result in ctx.results:
        task = ctx.tasks.get(result.task)
        runs = f"{result.runs} runs" if result.runs else "runs not stated"
        std = f", std {result.std:g}" if result.std is not None else ""
        metric = {
            "type": METRIC_TYPES.get(result.metric, result.metric),
            "value": result.mean,
            "name": f"{METRIC_NAMES.get(result.metric, result.metric)} (mean, {runs}{std})",
        }
        if result.setting:
            metric["args"] = dict(sorted(result.setting.items()))
        task_type = "image-segmentation" if task and task.type == "segmentation" else "image-classification"
        rows.append(
            {
                "task": {
                    "type": task_type,
                    "name": TASK_NAMES.get(task.type if task else "", "Image classification"),
                },
                "dataset": {"name": task.name if task else result.task, "type": result.task, "split": "test"},
                "metrics": [metric],
                "source": {"name": result.source},
            }
        )
    return [{"name": entry.id, "results": rows}] if rows else []


def front_matter(entry: Checkpoint, ctx: CardContext) -> dict:
    """The card's YAML metadata as a dict (Hugging Face model card fields)."""
    meta: dict = licence_fields(entry)
    tags = ["medhub", "timm", "image-classification", "medical-imaging", "research-only", entry.family]
    tags += [f"objective:{o}" for o in dict.fromkeys(s.objective for s in entry.lineage)]
    meta["tags"] = list(dict.fromkeys(tags))
    meta["datasets"] = list(dict.fromkeys(entry.data_chain))
    if ctx.parent is not None and ctx.parent_exact and (parent_repo := hub_repo(ctx.parent)):
        meta["base_model"] = parent_repo[0]
        meta["base_model_relation"] = "finetune"
    meta["library_name"] = "timm"
    meta["pipeline_tag"] = "image-classification"
    if model_index := _model_index(entry, ctx):
        meta["model-index"] = model_index
    return meta


def _lineage_section(entry: Checkpoint, ctx: CardContext) -> list[str]:
    lines = ["## Lineage", "", "Pretraining stages, oldest first:", ""]
    lines += ["| # | data | objective | epochs | run by | notes |", "|---|---|---|---|---|---|"]
    for number, stage in enumerate(entry.lineage, 1):
        epochs = str(stage.epochs) if stage.epochs else "not stated"
        cells = [
            str(number),
            dataset_name(stage.dataset),
            stage.objective,
            epochs,
            stage.source or "",
            stage.notes or "",
        ]
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    if ctx.parent is not None and ctx.parent_exact:
        lines += ["", f"Continues from the registry checkpoint `{ctx.parent.id}` (all stages but the last)."]
    elif ctx.parent is not None:
        lines += [
            "",
            f"Its earlier stages have the same data and objectives as the registry checkpoint `{ctx.parent.id}`; "
            "the registry does not record that exactly those weights started the last stage.",
        ]
    return [*lines, ""]


def _preprocessing_section(entry: Checkpoint) -> list[str]:
    pre, head = entry.preprocessing, entry.head
    channels = pre.input_size[0]
    lines = [
        "## Preprocessing",
        "",
        f"- Input: {channels} channel{'s' if channels != 1 else ''}, "
        f"{pre.input_size[1]} x {pre.input_size[2]} pixels",
        f"- Normalisation: mean {list(pre.mean)}, std {list(pre.std)} (after scaling pixels to [0, 1])",
        f"- Resize interpolation: {pre.interpolation}; centre-crop fraction {pre.crop_pct}",
    ]
    if pre.notes:
        lines.append(f"- Note: {pre.notes}")
    classes = head.num_classes or 0
    lines.append(
        f"- Network head: classifier `{head.classifier}`, first convolution `{head.first_conv}`, "
        + (f"{classes} output classes" if classes else "no classifier (feature extractor)")
    )
    if head.label_names:
        lines.append(f"- Labels, in output order: {', '.join(head.label_names)}")
    return [*lines, ""]


def _loading_section(entry: Checkpoint) -> list[str]:
    how = (
        "downloads, verifies and converts the weights" if entry.published else "once the recipe below has run"
    )
    lines = ["## How to load it", "", f"With medhub ({how}):", "", "```python"]
    lines += [
        "import medhub",
        "",
        f'model = medhub.load("{entry.id}", num_classes=2)  # new head for your task',
    ]
    lines += ["transform = medhub.transforms(" + f'"{entry.id}")', "```", ""]
    hub = hub_repo(entry)
    if hub:
        repo, revision = hub
        pin = f"@{revision}" if revision else ""
        lines += ["With plain timm (no medhub needed):", "", "```python", "import timm", ""]
        lines += [f'model = timm.create_model("hf-hub:{repo}{pin}", pretrained=True)', "```", ""]
        lines += [
            f'Without this registry entry, medhub reads the repo directly: `medhub.load("hf-hub:{repo}{pin}")`.',
            "",
        ]
    elif entry.sources:
        lines += [
            "Plain timm: not on the Hugging Face Hub in timm format yet; the original file needs medhub's "
            'converter. Once `medhub push` publishes it, `timm.create_model("hf-hub:ORG/NAME", pretrained=True)` '
            "loads it without medhub.",
            "",
        ]
    else:
        lines += ["No weights are published yet; produce them with the recipe below.", ""]
    if entry.sources:
        lines += ["Weight sources, tried in order:", ""]
        for source in entry.sources:
            where = source.url or f"{source.repo}{'@' + source.revision if source.revision else ''}"
            extra = f", format `{source.format}`" if source.format else ""
            extra += f", sha256 `{source.sha256}`" if source.sha256 else ""
            lines.append(f"- {source.kind}: `{where}`{extra}")
        lines.append("")
    if entry.recipe:
        lines += ["Recipe:", "", "```bash", entry.recipe.command, "```", ""]
        if entry.recipe.notes:
            lines += [entry.recipe.notes, ""]
    return lines


def format_mean_std(result: ReportedResult) -> str:
    """``0.8123 ± 0.0040`` (or the mean alone when no std is reported)."""
    return f"{result.mean:.4f}" + (f" ± {result.std:.4f}" if result.std is not None else "")


def _results_section(ctx: CardContext) -> list[str]:
    lines = ["## Reported results", ""]
    if not ctx.results:
        return [*lines, "No published numbers are recorded for this checkpoint yet.", ""]
    lines += ["Numbers as published (0-1 scale), not reproduced by medhub:", ""]
    lines += ["| task | metric | mean ± std | runs | setting | source |", "|---|---|---|---|---|---|"]
    for r in sorted(ctx.results, key=lambda r: (r.task, _setting_text(r), r.metric)):
        task = ctx.tasks.get(r.task)
        name = f"{task.name} (`{r.task}`)" if task else r.task
        cells = [
            name,
            METRIC_NAMES.get(r.metric, r.metric),
            format_mean_std(r),
            str(r.runs or "not stated"),
            _setting_text(r) or "-",
            r.source + (f" ({r.notes})" if r.notes else ""),
        ]
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    return [*lines, ""]


def _licence_section(entry: Checkpoint) -> list[str]:
    lic = entry.licence
    lines = [
        "## Licence and terms of use",
        "",
        f"- Licence of the weights: {lic.weights or 'unknown (not stated by the authors; ask them before reuse)'}",
        f"- Terms of use of the training data: {lic.data_terms or 'unknown'}",
    ]
    if lic.url:
        lines.append(f"- Licence text: {lic.url}")
    if lic.notes:
        lines.append(f"- Note: {lic.notes}")
    return [*lines, ""]


def _citation_section(entry: Checkpoint) -> list[str]:
    lines = ["## Citation", ""]
    cited = []
    if entry.paper:
        paper = entry.paper
        text = paper.citation or paper.title
        text += f" doi:{paper.doi}" if paper.doi and paper.doi not in text else ""
        cited.append(text + (f" {paper.url}" if paper.url else ""))
    for key in entry.benchmarks:
        text, doi = BENCHMARK_PAPERS.get(key, (key, None))
        if not doi or not any(doi in c for c in cited):
            cited.append(f"{text} doi:{doi}" if doi else text)
    if not cited:
        return [*lines, "No paper is recorded for this checkpoint.", ""]
    return [*lines, *(f"- {c}" for c in cited), ""]


def render_card(entry: Checkpoint, ctx: CardContext | None = None) -> str:
    """The full card text: ``---`` YAML front matter ``---`` then the Markdown body.

    >>> from medhub.registry import load_registry
    >>> text = render_card(load_registry().get_model("resnet50_imagenet1k"))
    >>> text.startswith("---")
    True
    """
    ctx = ctx or CardContext()
    meta = yaml.safe_dump(front_matter(entry, ctx), sort_keys=False, allow_unicode=True, width=1000)
    chain = " → ".join(dataset_name(d) for d in entry.data_chain)
    status = "Weights published." if entry.published else "Weights not published yet (recipe only)."
    summary = [
        f"# {entry.id}",
        "",
        f"> **{DISCLAIMER}**",
        "",
        "## Summary",
        "",
        f"A `{entry.arch}` ({entry.family}) checkpoint pretrained on {chain}; last-stage objective: "
        f"{entry.objective}. {status}",
        "",
    ]
    if entry.aliases:
        summary += [f"Also known as: {', '.join(f'`{a}`' for a in entry.aliases)}.", ""]
    summary += [f"- {note}" for note in entry.notes] + ([""] if entry.notes else [])
    intended = [
        "## Intended use and limitations",
        "",
        "- Intended for research: as an initialisation for fine-tuning on medical imaging tasks, and for "
        "studying transfer learning.",
        "- Not for clinical use. It is not a medical device, has not been validated prospectively, and its "
        "outputs must not inform the care of any patient.",
        "- Performance depends on the scanner, population and preprocessing; numbers below come from the "
        "papers' own splits and may not carry over to your data.",
        "",
    ]
    body = [
        *summary,
        *_lineage_section(entry, ctx),
        *intended,
        *_preprocessing_section(entry),
        *_loading_section(entry),
        *_results_section(ctx),
        *_licence_section(entry),
        *_citation_section(entry),
        "*This card is generated from medhub's registry by `medhub cards build`; do not edit it by hand.*",
    ]
    return f"---\n{meta}---\n\n" + "\n".join(body) + "\n"


def split_front_matter(text: str) -> tuple[dict, str]:
    """Parse a card into ``(metadata, markdown body)``."""
    if not text.startswith("---\n"):
        return {}, text
    head, _, body = text[4:].partition("\n---\n")
    return yaml.safe_load(head) or {}, body.lstrip("\n")
