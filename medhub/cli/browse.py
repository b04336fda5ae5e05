"""Browsing commands: ``list``, ``show``, ``tasks`` and ``results`` (no torch, no timm)."""

from __future__ import annotations

import argparse

from medhub.cli._output import print_json, print_table
from medhub.errors import UsageError
from medhub.registry import load_registry
from medhub.schema import Checkpoint, ReportedResult


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the browsing commands."""
    p = subparsers.add_parser("list", help="list checkpoints (filters take shell wildcards)")
    p.add_argument("pattern", nargs="?", help="id pattern, e.g. 'resnet50_*'")
    p.add_argument("--arch", help="architecture family or timm name, e.g. swin or convnext_base")
    p.add_argument("--objective", help="pretraining objective of any stage, e.g. 'moco*'")
    p.add_argument("--data", help="pretraining data of any stage, e.g. chestxray14")
    p.add_argument("--task", help="only checkpoints with a reported result on this task")
    p.add_argument("--json", action="store_true", help="print a JSON array")
    p.set_defaults(func=cmd_list)

    p = subparsers.add_parser("show", help="show one checkpoint: lineage, sources, licence, results")
    p.add_argument("id", help="checkpoint id or alias")
    p.add_argument("--json", action="store_true", help="print a JSON object")
    p.set_defaults(func=cmd_show)

    p = subparsers.add_parser("tasks", help="list the benchmark's tasks")
    p.add_argument("--json", action="store_true", help="print a JSON array")
    p.set_defaults(func=cmd_tasks)


def summary(entry: Checkpoint) -> dict:
    """The fields ``medhub list`` shows for a checkpoint."""
    return {
        "id": entry.id,
        "aliases": list(entry.aliases),
        "arch": entry.arch,
        "family": entry.family,
        "objective": entry.objective,
        "data": list(entry.data_chain),
        "published": entry.published,
        "licence": entry.licence.weights,
    }


def cmd_list(args: argparse.Namespace) -> int:
    """``medhub list``."""
    registry = load_registry()
    if args.task:
        registry.get_task(args.task)
    entries = registry.list_models(args.pattern, arch=args.arch, objective=args.objective, data=args.data, task=args.task)
    if args.json:
        print_json([summary(e) for e in entries])
        return 0
    if not entries:
        given = " ".join(f"{k} {v!r}" for k, v in (("pattern", args.pattern), ("--arch", args.arch),
                         ("--objective", args.objective), ("--data", args.data), ("--task", args.task)) if v)
        raise UsageError(f"no checkpoint matches {given}; 'medhub list' shows them all, 'medhub list --json' every "
                         "field (filters take shell wildcards, e.g. 'resnet50_*' or --objective 'moco*')")
    rows = [
        (e.id, e.arch, e.objective, " > ".join(e.data_chain), "yes" if e.published else "recipe only")
        for e in entries
    ]
    print_table(["id", "timm arch", "objective", "data", "weights"], rows, title=f"{len(rows)} checkpoints")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    """``medhub show ID``."""
    registry = load_registry()
    entry = registry.get_model(args.id)
    results = registry.results_for(model=entry.id)
    if args.json:
        data = entry.model_dump(mode="json")
        data["results"] = [r.model_dump(mode="json") for r in results]
        data["registry_file"] = str(registry.origin[f"checkpoint:{entry.id}"])
        print_json(data)
        return 0
    print(f"{entry.id}  ({entry.arch}{', aliases: ' + ', '.join(entry.aliases) if entry.aliases else ''})")
    print("\nLineage:")
    for number, stage in enumerate(entry.lineage, 1):
        epochs = f", {stage.epochs} epochs" if stage.epochs else ""
        print(f"  {number}. {stage.dataset} ({stage.objective}{epochs}){' - ' + stage.notes if stage.notes else ''}")
    print("\nWeight sources (tried in order):")
    if not entry.sources:
        print("  none published yet")
    from medhub.weights import ordered_sources

    for source in ordered_sources(entry):
        where = (source.url or source.filename) if source.kind == "local" else source.url
        where = where or f"{source.repo}{'@' + source.revision if source.revision else ''}"
        fmt = f" [format {source.format}]" if source.format else ""
        mirror = " (site mirror)" if source in entry.mirrors else ""
        print(f"  - {source.kind}{mirror}: {where}{fmt}{' sha256 ' + source.sha256 if source.sha256 else ''}")
    if entry.recipe:
        print(f"\nRecipe: {entry.recipe.command}")
    pre = entry.preprocessing
    print(f"\nPreprocessing: input {list(pre.input_size)}, mean {list(pre.mean)}, std {list(pre.std)}, {pre.interpolation}")
    print(f"Head: classifier '{entry.head.classifier}', first conv '{entry.head.first_conv}', classes {entry.head.num_classes}")
    lic = entry.licence
    print(f"\nLicence of the weights: {lic.weights or 'unknown'}")
    print(f"Terms of use of the training data: {lic.data_terms or 'unknown'}")
    if entry.paper:
        print(f"Paper: {entry.paper.title}{' (doi ' + entry.paper.doi + ')' if entry.paper.doi else ''}")
    if results:
        print("\nReported results:")
        for result in results:
            print(f"  {result.task}: {format_result(result)}")
    for note in entry.notes:
        print(f"Note: {note}")
    return 0


def format_result(result: ReportedResult) -> str:
    """``0.956 ± 0.010 AUC (3 runs, img_size=224) - source``."""
    std = f" ± {result.std:.4f}" if result.std is not None else ""
    runs = f"{result.runs} runs" if result.runs else "runs unknown"
    setting = ", ".join(f"{k}={v}" for k, v in result.setting.items())
    return f"{result.mean:.4f}{std} {result.metric.upper()} ({runs}{', ' + setting if setting else ''}) - {result.source}"


def cmd_tasks(args: argparse.Namespace) -> int:
    """``medhub tasks``."""
    tasks = sorted(load_registry().tasks.values(), key=lambda t: t.id)
    if args.json:
        print_json([t.model_dump(mode="json") for t in tasks])
        return 0
    rows = [(t.id, t.name, t.modality, t.type, len(t.labels), t.metric.upper()) for t in tasks]
    print_table(["id", "name", "modality", "type", "classes", "metric"], rows, title=f"{len(rows)} tasks")
    return 0
