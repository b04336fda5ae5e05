"""The README's examples run, so the README cannot drift from the code.

Every fenced ``bash`` block and every ``python`` block of README.md is executed in a fresh folder with its own
HOME, against the data embedded in medhub, unless the line just above its opening fence is an HTML comment

    <!-- readme-test: skip (needs network) -->

naming why (network, data the user downloads, a server that runs until stopped, the whole test suite). Blocks
run as written except that trainings are made small: ``--epochs N`` (or ``--quick``) becomes ``--epochs 1`` (added to
``medhub reproduce``/``adapt``/``benchmark`` lines without it), ``--runs N`` becomes ``--runs 1``, Python's
``epochs=``/``runs=`` likewise, and ``/tmp/`` paths move into the test's folder. ``python``/``medhub`` are
the ones of the interpreter running the tests.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
SKIP = re.compile(r"<!--\s*readme-test:\s*skip\s*\((?P<why>[^)]+)\)\s*-->")
FENCE = re.compile(r"^```(?P<lang>[A-Za-z]*)[^\n]*\n(?P<body>.*?)^```\s*$", re.M | re.S)
TRAINING = re.compile(r"\bmedhub (reproduce|adapt|benchmark)\b")


def readme_blocks(text: str) -> list[tuple[int, str, str, str | None]]:
    """``(line, language, body, skip reason or None)`` of every fenced block."""
    blocks = []
    for match in FENCE.finditer(text):
        line = text.count("\n", 0, match.start()) + 1
        before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        skip = SKIP.search(before)
        blocks.append((line, match.group("lang").lower(), match.group("body"), skip.group("why") if skip else None))
    return blocks


def small(body: str, language: str, tmp: Path) -> str:
    """The block with trainings shortened and /tmp paths moved under ``tmp``."""
    body = body.replace("/tmp/", f"{tmp}/")
    if language == "python":
        body = re.sub(r"\bepochs=\d+", "epochs=1", body)
        return re.sub(r"\bruns=\d+", "runs=1", body)
    body = re.sub(r" --quick\b", "", body)  # --quick sets its own epochs: one epoch is shorter still
    body = re.sub(r"--epochs[ =]\d+", "--epochs 1", body)
    body = re.sub(r"--runs[ =]\d+", "--runs 1", body)
    lines = []
    for command in body.replace("\\\n", " ").splitlines():
        code = command.split(" #", 1)[0]
        if TRAINING.search(code) and "--epochs" not in code:
            command = code.rstrip() + " --epochs 1"
        lines.append(command)
    return "\n".join(lines) + "\n"


def runnable_blocks() -> list[tuple[int, str, str, str | None]]:
    """The bash/sh/python blocks; a block repeating an earlier one runs once."""
    blocks, seen = [], {}
    for line, language, body, why in readme_blocks(README.read_text(encoding="utf-8")):
        if language not in ("bash", "sh", "python"):
            continue
        if why is None and body in seen:
            why = f"the same command as README line {seen[body]}, run there"
        seen.setdefault(body, line)
        blocks.append((line, language, body, why))
    return blocks


BLOCKS = runnable_blocks()


def test_the_readme_has_runnable_examples_and_every_skip_says_why():
    runnable = [b for b in BLOCKS if b[3] is None]
    assert any("medhub reproduce" in b[2] for b in runnable), "the main job must be executed"
    assert len(runnable) >= 5
    for line, _, body, why in BLOCKS:
        assert why is None or why.strip(), f"README line {line}: a skip names its reason"
        if why is None:
            assert "..." not in body.replace("...]", ""), f"README line {line}: placeholders cannot run; mark it"


@pytest.mark.parametrize(("line", "language", "body", "why"), BLOCKS, ids=[f"line{b[0]}-{b[1]}" for b in BLOCKS])
def test_readme_block_runs(line, language, body, why, tmp_path):
    if why is not None:
        pytest.skip(f"README line {line}: {why}")
    home = tmp_path / "home"
    work = tmp_path / "work"
    home.mkdir()
    work.mkdir()
    bindir = str(Path(sys.executable).parent)
    env = {**os.environ, "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"),
           "XDG_CACHE_HOME": str(home / ".cache"), "MEDHUB_HOME": str(home / ".cache" / "medhub"),
           "HF_HOME": str(home / ".cache" / "huggingface"), "PATH": bindir + os.pathsep + os.environ["PATH"],
           "PYTHONPATH": str(README.parent), "OMP_NUM_THREADS": "2"}
    for name in ("MEDHUB_REGISTRY", "MEDHUB_DATA", "MEDHUB_RESULTS"):
        env.pop(name, None)
    script = small(body, language, tmp_path)
    command = [sys.executable, "-c", script] if language == "python" else ["bash", "-euo", "pipefail", "-c", script]
    done = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, (f"README line {line} failed ({done.returncode}):\n{script}\n--- stdout\n"
                                  f"{done.stdout[-3000:]}\n--- stderr\n{done.stderr[-3000:]}")
    assert "Traceback" not in done.stderr
