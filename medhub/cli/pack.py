"""``medhub pack`` / ``medhub unpack`` / ``medhub mirror``: checkpoints for air-gapped sites."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from medhub.cli._output import print_json
from medhub.errors import UsageError


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``pack``, ``unpack`` and ``mirror``."""
    p = subparsers.add_parser(
        "pack",
        help="one verified, reproducible archive of checkpoints for a machine without internet",
        description="Load each checkpoint as medhub.load does (downloads shown), then write one tar holding, per "
        "checkpoint, model.safetensors, config.json, the model card and its registry entry, plus manifest.json "
        "(sizes and sha256 of every member). The same inputs give the same bytes; the creation time is "
        "SOURCE_DATE_EPOCH when set, else the newest input file's time.",
    )
    p.add_argument(
        "names", nargs="+", metavar="ID|FOLDER|hf-hub:REPO", help="registry ids, model folders, Hub repos"
    )
    p.add_argument(
        "-o", "--output", required=True, type=Path, metavar="FILE", help="the archive to write (.tar)"
    )
    p.add_argument(
        "--with-tasks", action="store_true", help="add every task's layout, splits and protocol (never data)"
    )
    p.add_argument(
        "--accept-terms",
        action="store_true",
        help="confirm you may copy checkpoints whose licence or data terms limit redistribution (recorded)",
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_pack)

    u = subparsers.add_parser(
        "unpack",
        help="verify a pack, then install it into the medhub cache (offline loads) or a medhub serve store",
        description="Check every member of FILE against its manifest (sizes, sha256, names, types) before "
        "writing anything; then either fill the medhub cache so medhub.load(ID) works with HF_HUB_OFFLINE=1 "
        "(--cache, the default), or import each checkpoint into a medhub serve folder as a repo with a commit "
        "and a tag and write a registry overlay pinned to those commits (--to-store). Running it twice "
        "changes nothing.",
    )
    u.add_argument("archive", type=Path, metavar="FILE", help="a file written by medhub pack")
    where = u.add_mutually_exclusive_group()
    where.add_argument(
        "--cache", action="store_true", help="install into this machine's medhub cache (default)"
    )
    where.add_argument(
        "--to-store", type=Path, metavar="DIR", help="import into the folder of medhub serve --root DIR"
    )
    u.add_argument(
        "--overlay", type=Path, metavar="FILE",
        help="registry overlay to write (default: registry.d/packs.yaml with --cache, ./medhub-site.yaml with --to-store)",
    )  # fmt: skip
    u.add_argument("--namespace", default="medhub", help="store namespace of the new repos (default medhub)")
    u.add_argument("--json", action="store_true", help="print the result as JSON")
    u.set_defaults(func=cmd_unpack)

    m = subparsers.add_parser(
        "mirror",
        help="convert registry checkpoints and publish them, with cards, to a site Hub; write the pinned overlay",
        description="For every published registry checkpoint matching PATTERN: convert it as medhub.load does, "
        "upload model.safetensors + config.json + card to NAMESPACE/ID on the site Hub unless it is already "
        "there, tag the commit, and write an overlay pinning each id to it. One failure does not stop the "
        "others; they are listed at the end and the exit code is 1.",
    )
    m.add_argument("pattern", metavar="PATTERN", help="an id, or a pattern such as 'resnet50_*'")
    m.add_argument(
        "--endpoint", required=True, metavar="URL", help="the site Hub (a medhub serve), e.g. http://hub:8080"
    )
    m.add_argument(
        "--namespace", default="medhub", help="where the repos go on the site Hub (default medhub)"
    )
    m.add_argument(
        "--overlay", type=Path, metavar="FILE", help="overlay to write (default ./medhub-site.yaml)"
    )
    m.add_argument(
        "--token-file",
        type=Path,
        metavar="FILE",
        help="file whose first word is the site's write token (default: HF_TOKEN)",
    )
    m.add_argument(
        "--accept-terms", action="store_true", help="confirm you may copy checkpoints with limiting terms"
    )
    m.add_argument("--json", action="store_true", help="print the result as JSON")
    m.set_defaults(func=cmd_mirror)


def cmd_pack(args: argparse.Namespace) -> int:
    """Write the archive and print its sha256."""
    from medhub.pack import pack

    def show(model_id: str) -> None:
        print(f"loading {model_id} as medhub.load builds it ...", file=sys.stderr, flush=True)

    result = pack(
        args.names,
        args.output,
        with_tasks=args.with_tasks,
        accept_terms=args.accept_terms,
        on_checkpoint=show,
    )
    if args.json:
        print_json({"path": str(result.path), "sha256": result.sha256, "size": result.size, "ids": list(result.ids),
                    "created": result.created, "created_from": result.created_from, "sources": result.sources})  # fmt: skip
        return 0
    for model_id in result.ids:
        print(f"packed {model_id} (weights from {result.sources[model_id]})")
    print(
        f"wrote {result.path} ({result.size / 1e6:.1f} MB, created {result.created} from {result.created_from})"
    )
    print(f"sha256 {result.sha256}  (check it on the other side: sha256sum {result.path.name})")
    return 0


def cmd_unpack(args: argparse.Namespace) -> int:
    """Verify and install; print what was installed and how to use it."""
    from medhub.pack import unpack

    _check_namespace(args.namespace)
    _check_overlay_path(args.overlay)
    result = unpack(args.archive, to_store=args.to_store, overlay=args.overlay, namespace=args.namespace)
    if args.json:
        print_json({"archive": str(result.archive), "mode": result.mode, "ids": list(result.ids),
                    "overlay": str(result.overlay), "overlay_changed": result.overlay_changed,
                    "written": result.written, "locations": result.locations, "terms_accepted": result.terms,
                    "tasks": list(result.tasks)})  # fmt: skip
        return 0
    print(f"verified {result.archive}: every member matches its manifest")
    for model_id in result.ids:
        print(f"  {model_id}: {result.locations[model_id]}")
        for reason in result.terms.get(model_id, []):
            print(f"    terms accepted when packed: {reason}")
    if result.written == 0 and not result.overlay_changed:
        print("already installed: nothing changed")
    print(f"registry overlay: {result.overlay}{'' if result.overlay_changed else ' (unchanged)'}")
    if result.mode == "store":
        print("serve the folder (medhub serve --root ...) and, on each machine, copy the overlay into "
              "~/.config/medhub/registry.d/ (or MEDHUB_REGISTRY=FILE) and set HF_ENDPOINT, HF_TOKEN, HF_HUB_DISABLE_XET=1")  # fmt: skip
    else:
        print(f'medhub.load("{result.ids[0]}") now works offline (HF_HUB_OFFLINE=1)')
    return 0


def cmd_mirror(args: argparse.Namespace) -> int:
    """Mirror every match; list failures at the end; exit 1 when any failed."""
    from medhub.pack import mirror

    # a medhub serve answers Xet with 501: plain LFS uploads work with every Hub (read at huggingface_hub import)
    os.environ.setdefault("HF_HUB_DISABLE_XET", "1")
    token = _read_token(args.token_file) if args.token_file else None
    _check_namespace(args.namespace)
    _check_overlay_path(args.overlay)

    def show(model_id: str, outcome: str) -> None:
        if not args.json:
            print(f"{model_id}: {outcome}", flush=True)

    result = mirror(args.pattern, args.endpoint, namespace=args.namespace, overlay=args.overlay, token=token,
                    accept_terms=args.accept_terms, on_result=show)  # fmt: skip
    if args.json:
        print_json({"done": [vars(m) for m in result.done], "failed": [{"id": i, "error": e} for i, e in result.failed],
                    "overlay": str(result.overlay), "overlay_changed": result.overlay_changed})  # fmt: skip
    else:
        uploaded = sum(m.uploaded for m in result.done)
        print(f"{len(result.done)} mirrored ({uploaded} uploaded, {len(result.done) - uploaded} unchanged), "
              f"{len(result.failed)} failed; overlay: {result.overlay}")  # fmt: skip
        if result.failed:
            print("failed:", file=sys.stderr)
            for model_id, error in result.failed:
                print(f"  {model_id}: {error}", file=sys.stderr)
    return 1 if result.failed else 0


def _check_namespace(namespace: str) -> None:
    from medhub.push import REPO_RE

    if not REPO_RE.match(f"{namespace}/x"):
        raise UsageError(f"--namespace '{namespace}' is not a Hub namespace; use letters, digits, '_', '.', '-'")


def _check_overlay_path(path: Path | None) -> None:
    if path is not None and path.is_dir():
        raise UsageError(f"--overlay {path} is a folder; pass the overlay file to write (e.g. {path}/site.yaml)")


def _read_token(path: Path) -> str:
    try:
        words = path.read_text(encoding="utf-8").split()
    except OSError as exc:
        raise UsageError(f"cannot read --token-file {path} ({exc.strerror}); check the path") from None
    if not words:
        raise UsageError(f"--token-file {path} is empty; put the site's write token on its first line")
    return words[0]
