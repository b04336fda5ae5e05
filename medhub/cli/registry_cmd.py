"""``medhub registry validate [FILE]`` (check registry files, shallow and deep) and ``medhub registry protocols``
(write docs/protocols.md from the registry)."""

from __future__ import annotations

import argparse
from pathlib import Path

from medhub.errors import RegistryError
from medhub.registry import builtin_registry_path, merge, overlay_paths


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``registry validate``."""
    p = subparsers.add_parser("registry", help="registry maintenance")
    sub = p.add_subparsers(dest="registry_command", metavar="ACTION", required=True)
    v = sub.add_parser("validate", help="validate the registry (or FILE merged over it)")
    v.add_argument("file", nargs="?", help="a registry or overlay file to check with the built-in one")
    v.add_argument("--shallow", action="store_true", help="skip the checks that build each timm architecture")
    v.set_defaults(func=cmd_validate)
    d = sub.add_parser("protocols", help="write the recipes' values with their released-code sources as Markdown",
                       description="Render every fine-tuning recipe of the registry (one table per recipe, each value "
                       "with its repository, path and line in the released code) to --out (default: stdout).")
    d.add_argument("--out", help="file to write, e.g. docs/protocols.md (default: print)")
    d.add_argument("--check", action="store_true", help="with --out: write nothing; exit 1 when the file is stale")
    d.set_defaults(func=cmd_protocols)


def cmd_protocols(args: argparse.Namespace) -> int:
    """``medhub registry protocols [--out FILE] [--check]``."""
    from medhub import protocols_doc
    from medhub.errors import UsageError

    if args.check and not args.out:
        raise UsageError("--check compares with a file: add --out docs/protocols.md")
    if not args.out:
        print(protocols_doc.render(), end="")
        return 0
    path = Path(args.out)
    if args.check:
        current = path.read_text(encoding="utf-8") if path.is_file() else None
        if current != protocols_doc.render():
            print(f"{path} is stale: run 'medhub registry protocols --out {path}'")
            return 1
        print(f"{path} is current")
        return 0
    changed = protocols_doc.write(path)
    print(f"{'wrote' if changed else 'unchanged'}: {path}")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    """Validate the schema, ids, references, and (unless --shallow) every arch against timm."""
    files = [builtin_registry_path(), *overlay_paths()]
    if args.file:
        extra = Path(args.file)
        files = [extra] if extra.resolve() == files[0].resolve() else [files[0], extra]
    registry = merge(files)
    if not args.shallow:
        from medhub.registry_check import deep_problems

        problems = deep_problems(registry)
        if problems:
            for problem in problems:
                print(f"problem: {problem}")
            raise RegistryError(f"{len(problems)} problem(s) in the registry files (listed above); first: {problems[0]}")
    print(
        f"ok: {len(registry.checkpoints)} checkpoints, {len(registry.tasks)} tasks, "
        f"{len(registry.results)} reported results in {len(files)} file(s)"
    )
    return 0
