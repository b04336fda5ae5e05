"""``medhub rank TASK --models ...``: rank candidate checkpoints by transferability scores of frozen features."""

from __future__ import annotations

import argparse
import sys

from medhub.bounds import cli_type
from medhub.cli._output import print_json, print_table


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``rank``."""
    p = subparsers.add_parser(
        "rank", help="rank candidate checkpoints for TASK from frozen features (LogME, ...), in minutes",
        description="Extract frozen penultimate features of each candidate on a stratified sample of TASK's "
        "training split (the checkpoint's own preprocessing, through the decode-once cache; features cached), "
        "score them (LogME by default), and print a ranked table; writes rank.json and rank.png to --out. "
        "A candidate that fails is listed and the others still rank (exit code 2). "
        "Research software, not a medical device.",
    )
    p.add_argument("task", help="task id (see 'medhub tasks'); classification tasks")
    p.add_argument("--models", required=True, help="ids, aliases, patterns ('resnet50_*'), hf-hub:ORG/NAME, "
                   "folders, files (with --arch) or random:<arch>, comma separated")
    p.add_argument("--data-dir", help="the task's data folder (default as for 'medhub reproduce')")
    p.add_argument("--n-images", type=cli_type("n_images"), default=1000, help="stratified sample of the training split (default 1000)")
    p.add_argument("--score", default="logme", help="comma separated: logme, hscore, nleep, leep, nce, knn; the "
                   "first orders the table (default logme)")
    p.add_argument("--arch", help="timm architecture, for bare checkpoint files among the candidates")
    p.add_argument("--img-size", type=cli_type("img_size"), help="input size (default: the task protocol's, as fine-tuning)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where to extract features")
    p.add_argument("--batch-size", type=cli_type("batch_size"), help="images per forward pass (default 256 on a GPU, 64 on a CPU)")
    p.add_argument("--seed", type=cli_type("seed"), default=0, help="seed of the sample (default 0)")
    p.add_argument("--against", metavar="DB_URL", help="a 'medhub benchmark' results DB (sqlite:///grid.db): "
                   "print Kendall's tau and weighted tau of each score against the fine-tuned metric")
    p.add_argument("--out", help="folder for rank.json, rank.png, against.png (default ./medhub-rank/TASK)")
    p.add_argument("--refresh", action="store_true", help="recompute features even when cached")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_rank)


def cmd_rank(args: argparse.Namespace) -> int:
    """Rank, print, and exit 2 when any candidate failed (the others are still ranked)."""
    from medhub.rank import rank

    report = rank(args.task, args.models, data_dir=args.data_dir, n_images=args.n_images, scores=args.score,
                  arch=args.arch, img_size=args.img_size, device=args.device, batch_size=args.batch_size,
                  seed=args.seed, out=args.out or f"medhub-rank/{args.task}", against=args.against,
                  refresh=args.refresh, progress="lines")
    if args.json:
        print_json(report)
    else:
        _print_report(report)
    for failure in report["failures"]:
        print(f"medhub: error: {failure['model']}: {failure['error']}", file=sys.stderr)
    if report["failures"]:
        ranked = len(report["candidates"])
        print(f"medhub: {len(report['failures'])} candidate(s) failed, {ranked} ranked", file=sys.stderr)
        return 2
    return 0


def _fmt(value, spec: str = ".4f") -> str:
    return "n/a" if value is None else format(value, spec)


def _print_report(report: dict) -> None:
    names = report["scores"]
    sample = report["sample"]
    rows = [(c["rank"] or "-", c["model"], *(_fmt(c["scores"][n]) for n in names), c["dim"],
             f"{c['seconds']:.1f}" + (" (cached)" if c["cached"] else ""))
            for c in report["candidates"]]
    classes = ", ".join(f"{k} {v}" for k, v in sample["classes"].items())
    print_table(["rank", "model", *names, "dim", "seconds"], rows,
                title=f"{report['task']} ({report['task_type']}): {sample['n_images']} training images ({classes}) "
                      f"at {sample['img_size']} px; ranked by {report['primary']}, higher is better")
    notes = sorted({f"{n}: {reason}" for c in report["candidates"] for n, reason in c["unavailable"].items()})
    for note in notes:
        print(f"n/a {note}")
    against = report.get("against")
    if against:
        print()
        if against.get("note"):
            print(against["note"])
        else:
            group = against["group"]
            print_table(["score", "kendall tau", "p", "weighted tau", "n"],
                        [(n, _fmt(s["tau"], ".3f"), _fmt(s["p"], ".3g"), _fmt(s["weighted_tau"], ".3f"), s["n"])
                         for n, s in against["scores"].items()],
                        title=f"vs fine-tuned test {group['metric']} (mean over seeds, label fraction "
                              f"{group['label_fraction']:g}) in {against['db']}")
            if against["missing"]:
                print(f"no fine-tuned result for: {', '.join(against['missing'])}")
    for path in report["files"]:
        print(f"wrote {path}")
