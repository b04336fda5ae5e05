"""The wheel carries its registry and model cards: `medhub list` works from any folder once installed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_outside_the_repo_finds_its_registry(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(ROOT)],
        check=True,
        capture_output=True,
    )
    wheel = next(tmp_path.glob("medhub-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "medhub/_data/registry.yaml" in names
    assert any(n.startswith("medhub/_data/model_cards/") for n in names) or not any((ROOT / "model_cards").glob("*.md"))
    installed = tmp_path / "installed"
    zipfile.ZipFile(wheel).extractall(installed)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # -S: skip site (and the editable install's path hook); dependencies come from site-packages explicitly.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(installed), sysconfig.get_paths()["purelib"]])}
    code = "import json, medhub, medhub.cli, sys; print(medhub.__file__); sys.exit(medhub.cli.main(['list', '--json']))"
    proc = subprocess.run([sys.executable, "-S", "-c", code], cwd=elsewhere, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-800:]
    first, rest = proc.stdout.split("\n", 1)
    assert first.startswith(str(installed))
    ids = {item["id"] for item in json.loads(rest)}
    assert "resnet50_imagenet1k" in ids
