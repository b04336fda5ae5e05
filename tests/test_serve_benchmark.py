"""Smoke test for benchmarks/serve_load.py's cases: each runs at tiny settings and prints its JSON.

Nothing here asserts a speed or a ratio (those live in BENCHMARKS.md); only that each case completes
without errors and reports what it promises.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "serve_load.py"


def _run(*args: str) -> dict:
    root = str(SCRIPT.parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=600, cwd=root, env=env
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    ("case", "extra"),
    [
        ("large", ["--repeat", "1", "--seconds", "1", "--clients", "2", "--big-kib", "512"]),
        ("slow", ["--slow-clients", "50"]),
        ("memory", []),
    ],
)
def test_serve_load_cases_run(case, extra):
    report = _run("--case", case, "--quick", *extra)
    assert report["case"] == case
    if case == "large":
        run = report["runs"][0]
        assert run["medhub"]["errors"] == run["http_server"]["errors"] == 0
        assert run["medhub"]["downloads"] > 0 and report["ratio_mb_per_s_median"] > 0
    elif case == "slow":
        assert report["probes_ok"] == report["probes"] == 3 and report["slow_connected"] == 50
    else:
        assert set(report["vmrss_mib"]) == {"start", "after_history", "after_trees", "after_second_round"}
