"""``medhub fetch``: download (and convert) checkpoints into the cache now, for later offline use."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``fetch`` command."""
    p = subparsers.add_parser(
        "fetch", help="download, verify and convert checkpoints into the cache (then load works offline)"
    )
    p.add_argument("ids", nargs="+", metavar="ID", help="checkpoint ids or aliases")
    p.add_argument("--revision", help="Hub revision overriding the pinned one")
    p.add_argument("--cache-dir", help="medhub cache folder (default $MEDHUB_HOME or ~/.cache/medhub)")
    p.add_argument("--no-progress", action="store_true", help="hide download progress bars")
    p.add_argument("--json", action="store_true", help="print a JSON array")
    p.set_defaults(func=cmd_fetch)


def cmd_fetch(args: argparse.Namespace) -> int:
    """``medhub fetch ID...``: resolve every id's weights through the source order and cache them."""
    from medhub.cli._output import print_json, print_table
    from medhub.registry import load_registry
    from medhub.weights import entry_weights

    if args.cache_dir is not None:
        from medhub._io import check_output_dir

        check_output_dir(args.cache_dir, "--cache-dir")
    registry = load_registry()
    entries = [registry.get_model(name) for name in args.ids]  # unknown ids fail before any download
    rows = []
    for entry in entries:
        found = entry_weights(
            entry, revision=args.revision, cache_dir=args.cache_dir, progress=not args.no_progress
        )
        rows.append(
            {
                "id": entry.id,
                "source": found.source,
                "path": str(found.path),
                "tensors": len(found.state_dict),
            }
        )
    if args.json:
        print_json(rows)
    else:
        print_table(["id", "source", "cached at", "tensors"], [tuple(r.values()) for r in rows])
    return 0
