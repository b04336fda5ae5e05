"""The test suite ignores the user's configuration: a user overlay that breaks every registry read (as an
empty or invalid ``~/.config/medhub/registry.d/user.yaml`` does) changes nothing, at collection time or in
module fixtures."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import conftest

ROOT = Path(__file__).resolve().parents[1]


def test_the_session_has_its_own_home():
    assert Path.home() != conftest.SESSION_HOME  # the per-test HOME, inside the session's temporary tree
    assert os.environ["XDG_CONFIG_HOME"].startswith(os.environ["HOME"])
    assert "MEDHUB_REGISTRY" not in os.environ


def test_a_broken_user_overlay_does_not_reach_the_tests(tmp_path):
    user_home = tmp_path / "user"
    overlay = user_home / ".config" / "medhub" / "registry.d" / "user.yaml"
    overlay.parent.mkdir(parents=True)
    overlay.write_text("checkpoints:\n  my_model: {arch: resnet18, lineage: [{dataset: x}]}\n  broken: [\n")
    env = {**os.environ, "HOME": str(user_home), "XDG_CONFIG_HOME": str(user_home / ".config"),
           "MEDHUB_REGISTRY": str(overlay), "PYTHONPATH": str(ROOT)}
    # the user's setup breaks medhub itself...
    cli = subprocess.run([sys.executable, "-m", "medhub", "list"], capture_output=True, text=True, env=env,
                         timeout=120)
    assert cli.returncode == 2 and "user.yaml" in cli.stderr
    # ...but not a test module that reads the registry while it is collected and in its tests
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          "tests/test_data_registry_layouts.py", "-k", "not shared", "--co"],
                         capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert " collected" in run.stdout and "ERROR" not in run.stdout, run.stdout[-2000:]
