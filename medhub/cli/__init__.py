"""The ``medhub`` command line: argument parsing only.

Each module in this package that defines ``register(subparsers)`` adds its sub-commands; a command's
handler is stored as ``func`` on its parser and receives the parsed namespace. Command modules import
heavy libraries (torch, timm) inside their handlers, never at module level, so browsing stays instant.
Any :class:`~medhub.errors.MedhubError`, any library exception that :func:`medhub.errors.as_user_error` maps
(a bad path, a corrupt file, an unreachable server, a broken database) and any argparse refusal becomes one line
on stderr and exit code 2; only programming errors keep their traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys

from medhub import __version__
from medhub.errors import MedhubError, as_user_error

DISCLAIMER = "Research software, not a medical device: never use its outputs for clinical decisions."


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose refusals are one line on stderr (``medhub CMD: error: ...; see --help``), exit 2.

    Sub-parsers inherit the class, so every command refuses bad arguments the same way.
    """

    def error(self, message: str) -> None:  # type: ignore[override]
        """Print one line and exit 2 (argparse's default prints the whole usage first)."""
        message = " ".join(message.split())
        self.exit(2, f"{self.prog}: error: {message}; see '{self.prog} --help'\n")


def build_parser() -> argparse.ArgumentParser:
    """The full parser, with every command module's sub-commands registered."""
    parser = OneLineParser(
        prog="medhub",
        description="Pretrained checkpoints for medical imaging: browse, load, fine-tune, publish. " + DISCLAIMER,
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    parser.add_argument("--version", action="version", version=f"medhub {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if module_info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{module_info.name}")
        if hasattr(module, "register"):
            module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``medhub`` console script."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # a refusal (2), or --help / --version (0): the code, whoever calls main()
        return exc.code if isinstance(exc.code, int) else 2
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except MedhubError as exc:
        _print_error(exc)
        return 2
    except KeyboardInterrupt:
        print("medhub: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and closed early: not an error
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as exc:  # noqa: BLE001 - a user-caused kind becomes one line; a bug re-raises
        mapped = as_user_error(exc)
        if mapped is None:
            raise
        logging.getLogger("medhub").debug("mapped %r", exc, exc_info=True)
        _print_error(mapped)
        return 2


def _print_error(exc: MedhubError) -> None:
    """One line on stderr, whatever newlines the message holds (more with -v from the logger)."""
    text = " ".join(str(exc).split())
    print(f"medhub: error: {text}", file=sys.stderr)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
