"""``medhub registry validate [FILE]``: check registry files, shallow and deep."""

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
