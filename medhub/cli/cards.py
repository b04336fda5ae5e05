"""``medhub cards build``, ``medhub card ID`` and ``medhub site build OUT_DIR``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the card and site commands."""
    p = subparsers.add_parser("cards", help="generate the model cards of every registry checkpoint")
    sub = p.add_subparsers(dest="cards_command", metavar="ACTION", required=True)
    b = sub.add_parser("build", help="rewrite model_cards/<id>.md from the registry")
    b.add_argument("--check", action="store_true", help="write nothing; exit 1 when a card is stale")
    b.add_argument("--dir", type=Path, help="cards folder (default: model_cards/ of the checkout)")
    b.set_defaults(func=cmd_cards_build)

    p = subparsers.add_parser("card", help="show the model card of a checkpoint")
    p.add_argument("id", help="checkpoint id or alias")
    p.add_argument("--raw", action="store_true", help="print the Markdown source even on a terminal")
    p.set_defaults(func=cmd_card)

    p = subparsers.add_parser(
        "site", help="build the static site that browses checkpoints, cards and leaderboards"
    )
    sub = p.add_subparsers(dest="site_command", metavar="ACTION", required=True)
    b = sub.add_parser("build", help="write the site to OUT_DIR (works from file:// and any static server)")
    b.add_argument("out_dir", type=Path, help="output folder (created; files in it are replaced)")
    b.add_argument(
        "--results-db", metavar="URL", help="also show reproduced results from this results database"
    )
    b.add_argument("--rank-json", metavar="FILE", action="append", default=[],
                   help="a 'medhub rank' report (rank.json) to show on its task's page; repeatable")
    b.set_defaults(func=cmd_site_build)


def cmd_cards_build(args: argparse.Namespace) -> int:
    """Rewrite stale cards (or, with --check, only report them)."""
    from medhub.cards.catalog import build_cards, cards_dir, check_cards

    folder = args.dir or cards_dir()
    status = check_cards(folder) if args.check else build_cards(folder)
    verb = "stale" if args.check else "rewritten"
    for cid in status.stale:
        print(f"{verb}: {folder / (cid + '.md')}")
    for cid in status.orphaned:
        print(f"{'orphaned' if args.check else 'removed'}: {folder / (cid + '.md')} (no such checkpoint)")
    if args.check and not status.current:
        print(
            f"{len(status.stale) + len(status.orphaned)} card(s) differ from the registry; run 'medhub cards build'",
            file=sys.stderr,
        )
        return 1
    if status.current:
        print(f"all cards in {folder} are current")
    return 0


def cmd_card(args: argparse.Namespace) -> int:
    """Print a card: rich Markdown on a terminal, the plain card text otherwise."""
    from medhub.cards.card import split_front_matter
    from medhub.cards.catalog import card_text

    text = card_text(args.id)
    if args.raw or not sys.stdout.isatty():
        sys.stdout.write(text)
        return 0
    from rich.console import Console
    from rich.markdown import Markdown
    from rich.panel import Panel

    meta, body = split_front_matter(text)
    facts = [f"licence: {meta.get('license')}", f"datasets: {', '.join(meta.get('datasets', []))}"]
    if meta.get("base_model"):
        facts.append(f"base model: {meta['base_model']}")
    console = Console()
    console.print(Panel("  ·  ".join(facts), title="card metadata", expand=False))
    console.print(Markdown(body))
    return 0


def cmd_site_build(args: argparse.Namespace) -> int:
    """Write the static site."""
    from medhub._io import check_output_dir
    from medhub.cards.site import build_site, load_rankings, load_reproduced

    check_output_dir(args.out_dir, "OUT_DIR")
    reproduced = load_reproduced(args.results_db) if args.results_db else ()
    rankings = load_rankings(args.rank_json) if args.rank_json else None
    index = build_site(args.out_dir, reproduced=reproduced, rankings=rankings)
    print(f"site written: {index} (open it in a browser, or serve {args.out_dir} with any static server)")
    return 0
