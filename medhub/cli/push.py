"""``medhub push SRC --repo ORG/NAME``: publish a checkpoint with its card and register it pinned."""

from __future__ import annotations

import argparse
from pathlib import Path

from medhub.cli._output import print_json


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``push``."""
    p = subparsers.add_parser(
        "push",
        help="publish a checkpoint to a Hub (checked strictly first), with a model card, and register it",
        description="Load SRC strictly into its architecture (a misfit uploads nothing), upload "
        "model.safetensors + a timm config.json + a README.md card to ORG/NAME on HF_ENDPOINT (token: HF_TOKEN), "
        "print the commit id, and register NEW_ID pinned to that commit so medhub.load(NEW_ID) works at once.",
    )
    p.add_argument(
        "src", type=Path, help="a checkpoint file (any format medhub converts) or a folder medhub wrote"
    )
    p.add_argument("--repo", required=True, metavar="ORG/NAME", help="Hub repository to create or update")
    p.add_argument(
        "--id", dest="model_id", metavar="NEW_ID", help="registry id (default: from the repo name)"
    )
    p.add_argument("--arch", help="timm architecture of the weights (needed for a checkpoint file)")
    p.add_argument("--format", dest="fmt", default="auto", help="checkpoint format (default: auto-detect)")
    p.add_argument("--private", action="store_true", help="create the repository private")
    p.add_argument(
        "--base",
        metavar="ID",
        help="registry checkpoint the weights come from (lineage, licence, preprocessing are inherited)",
    )
    p.add_argument("--data", metavar="TOKEN", help="data of a further training stage on top of --base")
    p.add_argument("--objective", help="objective of that stage (default: supervised)")
    p.add_argument("--license", dest="licence", metavar="SPDX", help="licence of the weights")
    p.add_argument("--labels", help="comma-separated class names, one per output")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_push)


def cmd_push(args: argparse.Namespace) -> int:
    """Run the push and print the commit id."""
    from medhub.push import PushOptions, push

    labels = tuple(x.strip() for x in args.labels.split(",")) if args.labels else None
    options = PushOptions(
        repo=args.repo, model_id=args.model_id, arch=args.arch, fmt=args.fmt, private=args.private,
        base=args.base, data=args.data, objective=args.objective, licence=args.licence, labels=labels,
    )  # fmt: skip
    result = push(args.src, options)
    if args.json:
        print_json({"id": result.model_id, "repo": result.repo, "commit": result.commit, "sha256": result.sha256,
                    "files": list(result.files), "overlay": str(result.overlay)})  # fmt: skip
        return 0
    print(f"pushed {', '.join(result.files)} to {result.repo}")
    print(f"commit {result.commit}")
    print(f"registered '{result.model_id}' in {result.overlay}: medhub.load(\"{result.model_id}\")")
    return 0
