"""``medhub store fsck|gc --root DIR``: check or clean the folder behind ``medhub serve``."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from medhub.bounds import cli_type
from medhub.errors import UsageError


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``store fsck`` and ``store gc``."""
    p = subparsers.add_parser("store", help="maintenance of a medhub serve folder (check, garbage-collect)")
    sub = p.add_subparsers(dest="store_command", metavar="ACTION", required=True)
    fsck = sub.add_parser(
        "fsck",
        help="check every branch, tag and commit, and the sha256 of every blob (safe while the server runs)",
    )
    fsck.add_argument("--root", required=True, help="the folder given to medhub serve --root")
    fsck.add_argument(
        "--quick", action="store_true", help="only check that blobs exist with the right size (no hashing)"
    )
    fsck.add_argument(
        "--quarantine",
        action="store_true",
        help="move corrupt blobs to ROOT/quarantine/ so that clients upload those files again",
    )
    fsck.add_argument("--no-progress", action="store_true", help="print no progress lines on stderr")
    fsck.set_defaults(func=cmd_fsck)
    gc = sub.add_parser(
        "gc",
        help="remove blobs no commit refers to (deleted repos, abandoned uploads); stop the server first",
    )
    gc.add_argument("--root", required=True, help="the folder given to medhub serve --root")
    gc.add_argument(
        "--min-age-hours",
        type=cli_type("min_age_hours", float),
        default=24.0,
        help="keep unreferenced blobs younger than this: an upload may still be waiting for its commit (default 24)",
    )
    gc.add_argument("--dry-run", action="store_true", help="report what would be removed; remove nothing")
    gc.add_argument("--json", action="store_true", help="print the report as JSON")
    gc.set_defaults(func=cmd_gc)


def _existing_root(root: str) -> Path:
    path = Path(root)
    if not (path / "blobs").is_dir() or not (path / "repos").is_dir():
        raise UsageError(f"{root} is not a medhub serve folder (no blobs/ and repos/); check --root")
    return path


class _Progress:
    """Progress lines on stderr, at most one a second (and the last one)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled, self.last = enabled, 0.0

    def __call__(self, done: int, total: int, done_bytes: int, total_bytes: int) -> None:
        now = time.monotonic()
        if self.enabled and (now - self.last >= 1 or done == total):
            self.last = now
            print(
                f"fsck: {done}/{total} blobs, {done_bytes / 1e9:.2f}/{total_bytes / 1e9:.2f} GB checked",
                file=sys.stderr,
                flush=True,
            )


def cmd_fsck(args: argparse.Namespace) -> int:
    """Print the problems found with how to repair each (exit 1), or one ok line."""
    from medhub.serve.storage import Store

    store = Store(_existing_root(args.root), exclusive=False)
    problems = store.fsck(quick=args.quick, progress=_Progress(not args.no_progress), quarantine=args.quarantine)
    for problem in problems:
        print(problem)
    what = "sizes" if args.quick else "sha256"
    if not problems:
        print(f"ok: every ref and commit is consistent and every blob has the right {what}")
        return 0
    print(
        f"{len(problems)} problem(s). Each line says how to repair it; a blob that was moved aside "
        f"(--quarantine) is sent again by the next upload of the same file."
    )
    return 1


def cmd_gc(args: argparse.Namespace) -> int:
    """Collect garbage while holding the server's lock (refused while a server runs on the folder)."""
    from medhub.serve.gc import collect_garbage
    from medhub.serve.storage import Store

    if args.min_age_hours < 0:
        raise UsageError("--min-age-hours must be 0 or more")
    root = _existing_root(args.root)
    try:
        store = Store(root, exclusive=True)
    except UsageError:
        raise UsageError(f"a medhub serve is running on {root}; stop it, then run medhub store gc") from None
    report = collect_garbage(store, min_age_s=args.min_age_hours * 3600, dry_run=args.dry_run)
    if args.json:
        from medhub.cli._output import print_json

        print_json(report.to_dict())
    else:
        print(report.summary())
    return 0
