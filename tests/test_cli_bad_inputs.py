"""Every option of every CLI command, given a bad input, is refused the same way: exit 2, one line on stderr,
no traceback, nothing left behind.

The table ``ROWS`` holds at least one bad input per option (and per positional argument) of every command that
``medhub.cli.build_parser`` registers. ``test_every_option_has_a_row`` walks the argparse parsers, so an option
added without a row here fails. Kinds: wrong type, wrong range, missing path, a path of the wrong kind (a file
where a folder is needed), an unreachable server, a corrupt or empty file, an unknown name, a value on a flag.

Placeholders in a row's argv: ``{file}`` an existing text file, ``{dir}`` an empty folder, ``{missing}`` a path
that does not exist, ``{new}`` a new output path, ``{trunc}`` a truncated .safetensors, ``{zero}`` a zero-byte
.pth, ``{notadb}`` a text file named as a database, ``{badyaml}`` a malformed YAML file, ``{no_tokens}`` an
empty token file, ``{ckpt}`` a real 2-class resnet10t .safetensors; ``{unreachable}`` (in env) a closed port.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from medhub.cli import build_parser, main

R = "random:resnet18"
T = "breastmnist"

# (command, option or positional dest, argv, env, kind)
ROWS: list[tuple[str, str, list[str], dict[str, str], str]] = [
    # the root parser
    ("", "--verbose", ["--verbose=2", "tasks"], {}, "value on a flag"),
    ("", "--version", ["--version=1"], {}, "value on a flag"),
    # list / show / tasks
    ("list", "pattern", ["list", "zzz*"], {}, "matches nothing"),
    ("list", "--arch", ["list", "--arch", "no_such_arch*"], {}, "matches nothing"),
    ("list", "--objective", ["list", "--objective", "nonsense"], {}, "matches nothing"),
    ("list", "--data", ["list", "--data", "nowhere"], {}, "matches nothing"),
    ("list", "--task", ["list", "--task", "no_such_task"], {}, "unknown name"),
    ("list", "--json", ["list", "--json=yes"], {}, "value on a flag"),
    ("show", "id", ["show", "no_such_checkpoint"], {}, "unknown name"),
    ("show", "--json", ["show", "resnet50_imagenet1k", "--json=1"], {}, "value on a flag"),
    ("tasks", "--json", ["tasks", "--json=1"], {}, "value on a flag"),
    # results
    ("results", "--task", ["results", "--task", "no_such_task"], {}, "unknown name"),
    ("results", "--model", ["results", "--model", "no_such_checkpoint"], {}, "unknown name"),
    ("results", "--metric", ["results", "--metric", "f1"], {}, "wrong value"),
    ("results", "--json", ["results", "--json=1"], {}, "value on a flag"),
    ("results", "--db", ["results", "--db", "sqlite:///{notadb}"], {}, "corrupt file"),
    ("results", "--db", ["results", "--db", "sqlite:///{missing}"], {}, "missing path"),
    ("results", "--db", ["results", "--db", "not a url://"], {}, "wrong type"),
    ("results", "--csv", ["results", "--csv"], {}, "needs --db"),
    ("results", "--baseline", ["results", "--baseline", R], {}, "needs --db"),
    ("results", "--plots", ["results", "--db", "sqlite:///{notadb}", "--plots", "{file}"], {}, "file for folder"),
    # registry
    ("registry validate", "file", ["registry", "validate", "{missing}"], {}, "missing path"),
    ("registry validate", "file", ["registry", "validate", "{badyaml}", "--shallow"], {}, "corrupt file"),
    ("registry validate", "--shallow", ["registry", "validate", "--shallow=1"], {}, "value on a flag"),
    ("registry protocols", "--out", ["registry", "protocols", "--out", "{dir}"], {}, "folder for file"),
    ("registry protocols", "--check", ["registry", "protocols", "--check"], {}, "needs --out"),
    # cards, card, site
    ("cards build", "--check", ["cards", "build", "--check=1"], {}, "value on a flag"),
    ("cards build", "--dir", ["cards", "build", "--dir", "{file}"], {}, "file for folder"),
    ("card", "id", ["card", "no_such_checkpoint"], {}, "unknown name"),
    ("card", "--raw", ["card", "resnet50_imagenet1k", "--raw=1"], {}, "value on a flag"),
    ("site build", "out_dir", ["site", "build", "{file}"], {}, "file for folder"),
    ("site build", "--rank-json", ["site", "build", "{new}", "--rank-json", "{trunc}"], {}, "corrupt file"),
    ("site build", "--results-db", ["site", "build", "{new}", "--results-db", "sqlite:///{notadb}"], {},
     "corrupt file"),
    # convert
    ("convert", "path", ["convert", "{trunc}", "--arch", "resnet18", "-o", "{new}"], {}, "corrupt file"),
    ("convert", "path", ["convert", "{zero}", "--arch", "resnet18", "-o", "{new}"], {}, "empty file"),
    ("convert", "path", ["convert", "{missing}", "--arch", "resnet18", "-o", "{new}"], {}, "missing path"),
    ("convert", "path", ["convert", "{dir}", "--arch", "resnet18", "-o", "{new}"], {}, "folder for file"),
    ("convert", "--arch", ["convert", "{ckpt}", "--arch", "no_such_arch", "-o", "{new}"], {}, "unknown name"),
    ("convert", "--format", ["convert", "{ckpt}", "--arch", "resnet10t", "--format", "nope", "-o", "{new}"], {},
     "unknown name"),
    ("convert", "--output", ["convert", "{ckpt}", "--arch", "resnet10t", "-o", "{file}"], {}, "file for folder"),
    ("convert", "--num-classes", ["convert", "{ckpt}", "--arch", "resnet10t", "-o", "{new}", "--num-classes", "-3"],
     {}, "wrong range"),
    ("convert", "--num-classes", ["convert", "{ckpt}", "--arch", "resnet10t", "-o", "{new}", "--num-classes", "two"],
     {}, "wrong type"),
    ("convert", "--model-arg", ["convert", "{ckpt}", "--arch", "resnet10t", "-o", "{new}", "--model-arg", "foo=1"],
     {}, "unknown name"),
    ("convert", "--model-arg", ["convert", "{ckpt}", "--arch", "resnet10t", "-o", "{new}", "--model-arg", "novalue"],
     {}, "wrong type"),
    ("convert", "--label-names", ["convert", "{ckpt}", "--arch", "resnet10t", "-o", "{new}", "--label-names",
                                  "a,b,c"], {}, "wrong count"),
    ("convert", "--prefix", ["convert", "{ckpt}", "--arch", "resnet10t", "-o", "{new}", "--prefix", "nosuch."], {},
     "unknown name"),
    ("convert", "--key-map", ["convert", "{ckpt}", "--arch", "resnet10t", "-o", "{new}", "--key-map", "(=x"], {},
     "wrong type"),
    ("convert", "--json", ["convert", "{ckpt}", "--arch", "resnet10t", "-o", "{new}", "--json=1"], {},
     "value on a flag"),
    # fetch
    ("fetch", "ids", ["fetch", "no_such_checkpoint"], {}, "unknown name"),
    ("fetch", "--revision", ["fetch", "resnet50_imagenet1k", "--revision"], {}, "missing value"),
    ("fetch", "--cache-dir", ["fetch", "resnet50_imagenet1k", "--cache-dir", "{file}"], {}, "file for folder"),
    ("fetch", "--no-progress", ["fetch", "resnet50_imagenet1k", "--no-progress=1"], {}, "value on a flag"),
    ("fetch", "--json", ["fetch", "resnet50_imagenet1k", "--json=1"], {}, "value on a flag"),
    # push
    ("push", "src", ["push", "{missing}", "--repo", "a/b", "--arch", "resnet10t"], {}, "missing path"),
    ("push", "src", ["push", "{trunc}", "--repo", "a/b", "--arch", "resnet18"], {}, "corrupt file"),
    ("push", "--repo", ["push", "{ckpt}", "--repo", "not a repo", "--arch", "resnet10t"], {}, "wrong type"),
    ("push", "--repo", ["push", "{ckpt}", "--repo", "lab/r10", "--arch", "resnet10t"],
     {"HF_ENDPOINT": "{unreachable}", "HF_TOKEN": "x" * 16}, "unreachable server"),
    ("push", "--repo", ["push", "{ckpt}", "--repo", "lab/r10", "--arch", "resnet10t"],
     {"HF_ENDPOINT": "not-a-url", "HF_TOKEN": "x" * 16}, "malformed server URL"),
    ("push", "--id", ["push", "{ckpt}", "--repo", "a/b", "--arch", "resnet10t", "--id", "Bad Id!"], {}, "wrong type"),
    ("push", "--arch", ["push", "{ckpt}", "--repo", "a/b", "--arch", "no_such_arch"], {}, "unknown name"),
    ("push", "--format", ["push", "{ckpt}", "--repo", "a/b", "--arch", "resnet10t", "--format", "nope"], {},
     "unknown name"),
    ("push", "--private", ["push", "{ckpt}", "--repo", "a/b", "--private=1"], {}, "value on a flag"),
    ("push", "--base", ["push", "{ckpt}", "--repo", "a/b", "--arch", "resnet10t", "--base", "no_such_checkpoint"],
     {}, "unknown name"),
    ("push", "--data", ["push", "{ckpt}", "--repo", "a/b", "--data"], {}, "missing value"),
    ("push", "--objective", ["push", "{ckpt}", "--repo", "a/b", "--objective"], {}, "missing value"),
    ("push", "--license", ["push", "{ckpt}", "--repo", "a/b", "--license"], {}, "missing value"),
    ("push", "--labels", ["push", "{ckpt}", "--repo", "a/b", "--arch", "resnet10t", "--labels", "a,b,c"], {},
     "wrong count"),
    ("push", "--json", ["push", "{ckpt}", "--repo", "a/b", "--json=1"], {}, "value on a flag"),
    # serve and store
    ("serve", "--root", ["serve", "--root", "{file}"], {}, "file for folder"),
    ("serve", "--host", ["serve", "--root", "{new}", "--host", "999.1.1.1", "--port", "0"], {}, "wrong value"),
    ("serve", "--port", ["serve", "--root", "{new}", "--port", "70000"], {}, "wrong range"),
    ("serve", "--port", ["serve", "--root", "{new}", "--port", "http"], {}, "wrong type"),
    ("serve", "--token-file", ["serve", "--root", "{new}", "--token-file", "{missing}"], {}, "missing path"),
    ("serve", "--token-file", ["serve", "--root", "{new}", "--token-file", "{no_tokens}"], {}, "empty file"),
    ("serve", "--public-read", ["serve", "--root", "{new}", "--public-read=1"], {}, "value on a flag"),
    ("serve", "--max-upload-mb", ["serve", "--root", "{new}", "--max-upload-mb", "0"], {}, "wrong range"),
    ("serve", "--regular-only", ["serve", "--root", "{new}", "--regular-only=1"], {}, "value on a flag"),
    ("serve", "--access-log", ["serve", "--root", "{new}", "--access-log=1"], {}, "value on a flag"),
    ("serve", "--audit-log", ["serve", "--root", "{new}", "--audit-log", "{dir}"], {}, "folder for file"),
    ("serve", "--cache-mb", ["serve", "--root", "{new}", "--cache-mb", "0"], {}, "wrong range"),
    ("serve", "--max-connections", ["serve", "--root", "{new}", "--max-connections", "0"], {}, "wrong range"),
    ("serve", "--header-timeout", ["serve", "--root", "{new}", "--header-timeout", "0"], {}, "wrong range"),
    ("serve", "--body-timeout", ["serve", "--root", "{new}", "--body-timeout", "-5"], {}, "wrong range"),
    ("serve", "--send-timeout", ["serve", "--root", "{new}", "--send-timeout", "soon"], {}, "wrong type"),
    ("serve", "--keep-alive-timeout", ["serve", "--root", "{new}", "--keep-alive-timeout", "1e9"], {},
     "wrong range"),
    ("serve", "--keep-alive-requests", ["serve", "--root", "{new}", "--keep-alive-requests", "0"], {},
     "wrong range"),
    ("store fsck", "--quick", ["store", "fsck", "--root", "{dir}", "--quick=1"], {}, "value on a flag"),
    ("store fsck", "--quarantine", ["store", "fsck", "--root", "{dir}", "--quarantine=1"], {}, "value on a flag"),
    ("store fsck", "--no-progress", ["store", "fsck", "--root", "{dir}", "--no-progress=1"], {}, "value on a flag"),
    ("store fsck", "--root", ["store", "fsck", "--root", "{dir}"], {}, "not a store"),
    ("store fsck", "--root", ["store", "fsck", "--root", "{file}"], {}, "file for folder"),
    ("store gc", "--root", ["store", "gc", "--root", "{missing}"], {}, "missing path"),
    ("store gc", "--min-age-hours", ["store", "gc", "--root", "{dir}", "--min-age-hours", "-1"], {}, "wrong range"),
    ("store gc", "--dry-run", ["store", "gc", "--root", "{dir}", "--dry-run=1"], {}, "value on a flag"),
    ("store gc", "--json", ["store", "gc", "--root", "{dir}", "--json=1"], {}, "value on a flag"),
    # reproduce
    ("reproduce", "model", ["reproduce", "no_such_checkpoint", T], {}, "unknown name"),
    ("reproduce", "model", ["reproduce", "random:no_such_arch", T], {}, "unknown name"),
    ("reproduce", "model", ["reproduce", "random:inception_v3", T], {}, "size the arch cannot take"),
    ("reproduce", "task", ["reproduce", R, "no_such_task"], {}, "unknown name"),
    ("reproduce", "--runs", ["reproduce", R, T, "--runs", "0"], {}, "wrong range"),
    ("reproduce", "--label-fraction", ["reproduce", R, T, "--label-fraction", "1.5"], {}, "wrong range"),
    ("reproduce", "--linear-probe", ["reproduce", R, T, "--linear-probe=1"], {}, "value on a flag"),
    ("reproduce", "--cifar-stem", ["reproduce", "random:vit_tiny_patch16_224", T, "--cifar-stem"], {},
     "wrong kind of model"),
    ("reproduce", "--out", ["reproduce", R, T, "--out", "{file}"], {}, "file for folder"),
    ("reproduce", "--data-dir", ["reproduce", R, T, "--data-dir", "{file}"], {}, "file for folder"),
    ("reproduce", "--epochs", ["reproduce", R, T, "--epochs", "0"], {}, "wrong range"),
    ("reproduce", "--epochs", ["reproduce", R, T, "--epochs", "1.5"], {}, "wrong type"),
    ("reproduce", "--batch-size", ["reproduce", R, T, "--batch-size", "-1"], {}, "wrong range"),
    ("reproduce", "--lr", ["reproduce", R, T, "--lr", "0"], {}, "wrong range"),
    ("reproduce", "--lr", ["reproduce", R, T, "--lr", "fast"], {}, "wrong type"),
    ("reproduce", "--img-size", ["reproduce", R, T, "--img-size", "100000"], {}, "wrong range"),
    ("reproduce", "--device", ["reproduce", R, T, "--device", "tpu"], {}, "wrong value"),
    ("reproduce", "--seed", ["reproduce", R, T, "--seed", "-1"], {}, "wrong range"),
    ("reproduce", "--resume", ["reproduce", R, T, "--resume", "--out", "{dir}"], {}, "nothing to resume"),
    ("reproduce", "--arch", ["reproduce", "{ckpt}", T, "--arch", "no_such_arch"], {}, "unknown name"),
    ("reproduce", "--no-progress", ["reproduce", R, T, "--no-progress=1"], {}, "value on a flag"),
    ("reproduce", "--json", ["reproduce", R, T, "--json=1"], {}, "value on a flag"),
    ("reproduce", "--dry-run", ["reproduce", R, T, "--dry-run=1"], {}, "value on a flag"),
    ("reproduce", "--dry-run", ["reproduce", "no_such_checkpoint", T, "--dry-run"], {}, "unknown name"),
    ("reproduce", "--compile", ["reproduce", R, T, "--compile=1"], {}, "value on a flag"),
    ("reproduce", "--keep-head", ["reproduce", R, T, "--keep-head=1"], {}, "value on a flag"),
    ("reproduce", "--native-size", ["reproduce", R, T, "--native-size"], {}, "needs --img-size"),
    ("reproduce", "--precision", ["reproduce", R, T, "--precision", "fp8"], {}, "wrong value"),
    ("reproduce", "--quick", ["reproduce", R, T, "--quick", "--epochs", "3"], {}, "conflicting options"),
    ("reproduce", "--subset-seed", ["reproduce", R, T, "--subset-seed", "-1"], {}, "wrong range"),
    ("reproduce", "--window", ["reproduce", R, T, "--window", "40"], {}, "wrong type"),
    ("reproduce", "--voi-function", ["reproduce", R, T, "--voi-function", "CUBIC"], {}, "wrong value"),
    ("reproduce", "--voi-function", ["reproduce", R, T, "--voi-function", "SIGMOID"], {}, "needs --window"),
    ("reproduce", "--frame", ["reproduce", R, T, "--frame", "-1"], {}, "wrong range"),
    # pack, unpack, mirror
    ("pack", "names", ["pack", "no_such_checkpoint", "-o", "{new}"], {}, "unknown name"),
    ("pack", "--output", ["pack", "resnet50_imagenet1k", "-o", "{dir}"], {}, "folder for file"),
    ("pack", "--with-tasks", ["pack", "resnet50_imagenet1k", "-o", "{new}", "--with-tasks=1"], {}, "value on a flag"),
    ("pack", "--accept-terms", ["pack", "resnet50_imagenet1k", "-o", "{new}", "--accept-terms=1"], {},
     "value on a flag"),
    ("pack", "--json", ["pack", "resnet50_imagenet1k", "-o", "{new}", "--json=1"], {}, "value on a flag"),
    ("unpack", "archive", ["unpack", "{trunc}"], {}, "corrupt file"),
    ("unpack", "archive", ["unpack", "{missing}"], {}, "missing path"),
    ("unpack", "--cache", ["unpack", "{trunc}", "--cache=1"], {}, "value on a flag"),
    ("unpack", "--to-store", ["unpack", "{trunc}", "--to-store", "{file}"], {}, "file for folder"),
    ("unpack", "--overlay", ["unpack", "{trunc}", "--overlay", "{dir}"], {}, "folder for file"),
    ("unpack", "--namespace", ["unpack", "{trunc}", "--namespace", "Bad NS!"], {}, "wrong type"),
    ("unpack", "--json", ["unpack", "{trunc}", "--json=1"], {}, "value on a flag"),
    ("mirror", "pattern", ["mirror", "zzz*", "--endpoint", "{unreachable}"], {}, "matches nothing"),
    ("mirror", "--endpoint", ["mirror", "resnet50_imagenet1k", "--endpoint", "{unreachable}"], {},
     "unreachable server"),
    ("mirror", "--endpoint", ["mirror", "resnet50_imagenet1k", "--endpoint", "not-a-url"], {}, "wrong type"),
    ("mirror", "--namespace", ["mirror", "resnet50_imagenet1k", "--endpoint", "{unreachable}", "--namespace",
                               "Bad NS!"], {}, "wrong type"),
    ("mirror", "--overlay", ["mirror", "resnet50_imagenet1k", "--endpoint", "{unreachable}", "--overlay", "{dir}"],
     {}, "folder for file"),
    ("mirror", "--token-file", ["mirror", "resnet50_imagenet1k", "--endpoint", "{unreachable}", "--token-file",
                                "{missing}"], {}, "missing path"),
    ("mirror", "--accept-terms", ["mirror", "resnet50_imagenet1k", "--endpoint", "{unreachable}",
                                  "--accept-terms=1"], {}, "value on a flag"),
    ("mirror", "--json", ["mirror", "resnet50_imagenet1k", "--endpoint", "{unreachable}", "--json=1"], {},
     "value on a flag"),
    # adapt
    ("adapt", "base", ["adapt", "no_such_checkpoint", T, "--out", "{new}"], {}, "unknown name"),
    ("adapt", "task", ["adapt", R, "no_such_task", "--out", "{new}"], {}, "unknown name"),
    ("adapt", "--out", ["adapt", R, T, "--out", "{file}"], {}, "file for folder"),
    ("adapt", "--id", ["adapt", R, T, "--out", "{new}", "--id", "Bad Id!"], {}, "wrong type"),
    ("adapt", "--overlay", ["adapt", R, T, "--out", "{new}", "--overlay", "{dir}"], {}, "folder for file"),
    ("adapt", "--data-dir", ["adapt", R, T, "--out", "{new}", "--data-dir", "{file}"], {}, "file for folder"),
    ("adapt", "--epochs", ["adapt", R, T, "--out", "{new}", "--epochs", "0"], {}, "wrong range"),
    ("adapt", "--batch-size", ["adapt", R, T, "--out", "{new}", "--batch-size", "0"], {}, "wrong range"),
    ("adapt", "--lr", ["adapt", R, T, "--out", "{new}", "--lr", "-1"], {}, "wrong range"),
    ("adapt", "--img-size", ["adapt", R, T, "--out", "{new}", "--img-size", "100000"], {}, "wrong range"),
    ("adapt", "--device", ["adapt", R, T, "--out", "{new}", "--device", "tpu"], {}, "wrong value"),
    ("adapt", "--seed", ["adapt", R, T, "--out", "{new}", "--seed", "x"], {}, "wrong type"),
    ("adapt", "--resume", ["adapt", R, T, "--out", "{dir}", "--resume"], {}, "nothing to resume"),
    ("adapt", "--arch", ["adapt", "{ckpt}", T, "--out", "{new}", "--arch", "no_such_arch"], {}, "unknown name"),
    ("adapt", "--no-progress", ["adapt", R, T, "--out", "{new}", "--no-progress=1"], {}, "value on a flag"),
    ("adapt", "--json", ["adapt", R, T, "--out", "{new}", "--json=1"], {}, "value on a flag"),
    # rank
    ("rank", "task", ["rank", "no_such_task", "--models", R], {}, "unknown name"),
    ("rank", "--models", ["rank", T, "--models", "zzz*"], {}, "matches nothing"),
    ("rank", "--data-dir", ["rank", T, "--models", R, "--data-dir", "{file}"], {}, "file for folder"),
    ("rank", "--n-images", ["rank", T, "--models", R, "--n-images", "0"], {}, "wrong range"),
    ("rank", "--score", ["rank", T, "--models", R, "--score", "accuracy"], {}, "unknown name"),
    ("rank", "--arch", ["rank", T, "--models", "{ckpt}", "--arch", "no_such_arch"], {}, "unknown name"),
    ("rank", "--img-size", ["rank", T, "--models", R, "--img-size", "100000"], {}, "wrong range"),
    ("rank", "--device", ["rank", T, "--models", R, "--device", "tpu"], {}, "wrong value"),
    ("rank", "--batch-size", ["rank", T, "--models", R, "--batch-size", "0"], {}, "wrong range"),
    ("rank", "--seed", ["rank", T, "--models", R, "--seed", "-1"], {}, "wrong range"),
    ("rank", "--against", ["rank", T, "--models", R, "--against", "sqlite:///{notadb}", "--out", "{new}"], {},
     "corrupt file"),
    ("rank", "--out", ["rank", T, "--models", R, "--out", "{file}"], {}, "file for folder"),
    ("rank", "--refresh", ["rank", T, "--models", R, "--refresh=1"], {}, "value on a flag"),
    ("rank", "--json", ["rank", T, "--models", R, "--json=1"], {}, "value on a flag"),
    # benchmark
    ("benchmark", "--models", ["benchmark", "--models", "zzz*", "--tasks", T], {}, "matches nothing"),
    ("benchmark", "--tasks", ["benchmark", "--models", R, "--tasks", "no_such_task"], {}, "unknown name"),
    ("benchmark", "--runs", ["benchmark", "--models", R, "--tasks", T, "--runs", "0"], {}, "wrong range"),
    ("benchmark", "--label-fractions", ["benchmark", "--models", R, "--tasks", T, "--label-fractions", "2"], {},
     "wrong range"),
    ("benchmark", "--epochs", ["benchmark", "--models", R, "--tasks", T, "--epochs", "0"], {}, "wrong range"),
    ("benchmark", "--batch-size", ["benchmark", "--models", R, "--tasks", T, "--batch-size", "0"], {},
     "wrong range"),
    ("benchmark", "--lr", ["benchmark", "--models", R, "--tasks", T, "--lr", "-1"], {}, "wrong range"),
    ("benchmark", "--img-size", ["benchmark", "--models", R, "--tasks", T, "--img-size", "5"], {}, "wrong range"),
    ("benchmark", "--linear-probe", ["benchmark", "--models", R, "--tasks", T, "--linear-probe=1"], {},
     "value on a flag"),
    ("benchmark", "--cifar-stem", ["benchmark", "--models", R, "--tasks", T, "--cifar-stem=1"], {},
     "value on a flag"),
    ("benchmark", "--executor", ["benchmark", "--models", R, "--tasks", T, "--executor", "slurm"], {},
     "wrong value"),
    ("benchmark", "--address", ["benchmark", "--models", R, "--tasks", T, "--address", "ray://h:10001"], {},
     "needs --executor ray"),
    ("benchmark", "--workers", ["benchmark", "--models", R, "--tasks", T, "--workers", "0"], {}, "wrong range"),
    ("benchmark", "--cpus-per-run", ["benchmark", "--models", R, "--tasks", T, "--cpus-per-run", "0"], {},
     "wrong range"),
    ("benchmark", "--gpus-per-run", ["benchmark", "--models", R, "--tasks", T, "--gpus-per-run", "-1"], {},
     "wrong range"),
    ("benchmark", "--max-retries", ["benchmark", "--models", R, "--tasks", T, "--max-retries", "-1"], {},
     "wrong range"),
    ("benchmark", "--device", ["benchmark", "--models", R, "--tasks", T, "--device", "tpu"], {}, "wrong value"),
    ("benchmark", "--results", ["benchmark", "--models", R, "--tasks", T, "--results", "sqlite:///{notadb}",
                                "--out", "{new}"], {}, "corrupt file"),
    ("benchmark", "--resume", ["benchmark", "--models", R, "--tasks", T, "--resume=1"], {}, "value on a flag"),
    ("benchmark", "--data-root", ["benchmark", "--models", R, "--tasks", T, "--data-root", "{file}"], {},
     "file for folder"),
    ("benchmark", "--out", ["benchmark", "--models", R, "--tasks", T, "--out", "{file}"], {}, "file for folder"),
]


def parser_options() -> set[tuple[str, str]]:
    """(command, option) for every option and positional of every command parser (and the root's)."""
    found: set[tuple[str, str]] = set()

    def walk(parser: argparse.ArgumentParser, path: tuple[str, ...]) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, (*path, name))
                continue
            longs = [o for o in action.option_strings if o.startswith("--")]
            key = (longs or action.option_strings or [action.dest])[0]
            found.add((" ".join(path), key))

    walk(build_parser(), ())
    return found


def test_every_option_has_a_row():
    """A new option (or command) without a bad-input row in ROWS fails here: add one."""
    covered = {(command, option) for command, option, *_ in ROWS}
    missing = sorted(parser_options() - covered)
    assert not missing, f"options without a bad-input row in tests/test_cli_bad_inputs.py: {missing}"
    stale = sorted(covered - parser_options())
    assert not stale, f"rows for options that no longer exist: {stale}"


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A real 2-class timm resnet10t state dict as safetensors (small: 20 MB)."""
    import timm
    from safetensors.torch import save_file

    path = tmp_path_factory.mktemp("ckpt") / "resnet10t.safetensors"
    save_file(timm.create_model("resnet10t", num_classes=2).state_dict(), str(path))
    return path


@pytest.fixture
def workdir(tmp_path, monkeypatch, checkpoint) -> dict[str, str]:
    """The current folder of a row, with the files its placeholders name."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile.txt").write_text("x\n")
    (tmp_path / "emptydir").mkdir()
    (tmp_path / "trunc.safetensors").write_bytes(checkpoint.read_bytes()[:100])
    (tmp_path / "zero.pth").write_bytes(b"")
    (tmp_path / "notadb.db").write_text("not a database\n")
    (tmp_path / "bad.yaml").write_text("checkpoints: [unclosed\n  - : :\n")
    (tmp_path / "no_tokens.txt").write_text("# no token yet\n\n")
    return {
        "file": "afile.txt", "dir": "emptydir", "missing": "no/such/path", "new": "new_out", "trunc":
        "trunc.safetensors", "zero": "zero.pth", "notadb": "notadb.db", "badyaml": "bad.yaml",
        "no_tokens": "no_tokens.txt", "ckpt": str(checkpoint), "unreachable": f"http://127.0.0.1:{_closed_port()}",
    }


def _tree(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): (p.stat().st_size if p.is_file() else -1) for p in root.rglob("*")}


@pytest.mark.parametrize(("command", "option", "argv", "env", "kind"), ROWS,
                         ids=[f"{c or 'medhub'} {o} {k}".replace(" ", "_") for c, o, _, _, k in ROWS])
def test_bad_input_is_one_line_and_exit_2(command, option, argv, env, kind, workdir, monkeypatch, capsys):
    for name, value in env.items():
        monkeypatch.setenv(name, value.format(**workdir))
    before = _tree(Path.cwd())
    code = main([arg.format(**workdir) for arg in argv])
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, f"exit {code}; stderr: {err}; stdout: {out[:300]}"
    assert len(lines) == 1, f"expected one line on stderr, got: {err}"
    assert "Traceback" not in err
    assert "error" in lines[0]
    assert _tree(Path.cwd()) == before, "a refused command left files behind"


SUBPROCESS_ROWS = [
    ["convert", "zero.pth", "--arch", "resnet18", "-o", "new_out"],
    ["results", "--db", "sqlite:///notadb.db"],
    ["reproduce", "random:deit_tiny_patch16_224", "breastmnist", "--img-size", "100000"],
    ["serve", "--root", "afile.txt"],
]


@pytest.mark.parametrize("argv", SUBPROCESS_ROWS, ids=[a[0] for a in SUBPROCESS_ROWS])
def test_console_script_prints_no_traceback(argv, workdir):
    """The installed entry point, in its own process: the real stderr a user sees."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run([sys.executable, "-m", "medhub", *argv], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not Path("new_out").exists()
