"""Build hook: ship the top-level registry.yaml and model_cards/ inside the wheel as medhub/_data/."""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).parent
SHIPPED = ["registry.yaml", "model_cards"]


class BuildWithRegistry(build_py):
    """Copy the registry and the model cards next to the package code."""

    def run(self):
        super().run()
        target = Path(self.build_lib) / "medhub" / "_data"
        target.mkdir(parents=True, exist_ok=True)
        for name in SHIPPED:
            src = ROOT / name
            if src.is_dir():
                shutil.copytree(src, target / name, dirs_exist_ok=True)
            elif src.exists():
                shutil.copy2(src, target / name)


setup(cmdclass={"build_py": BuildWithRegistry})
