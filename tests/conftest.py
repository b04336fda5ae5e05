"""Test isolation: every test gets its own HOME, config, caches and Hub settings; nothing reaches the internet."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

# Before anything is collected or imported: a session HOME, XDG folders and caches of its own, and none of the
# user's medhub / Hugging Face settings. Module-level code (parametrize lists that read the registry) and
# session/module fixtures run before the per-test isolation below, so they must not see ~/.config/medhub.
SESSION_HOME = Path(tempfile.mkdtemp(prefix="medhub-test-home-"))
os.environ.update({
    "HOME": str(SESSION_HOME), "XDG_CONFIG_HOME": str(SESSION_HOME / ".config"),
    "XDG_CACHE_HOME": str(SESSION_HOME / ".cache"), "HF_HOME": str(SESSION_HOME / ".cache" / "huggingface"),
    "MEDHUB_HOME": str(SESSION_HOME / ".cache" / "medhub"),
})
for _name in ("MEDHUB_REGISTRY", "MEDHUB_DATA", "MEDHUB_RESULTS", "HF_TOKEN", "HF_HUB_OFFLINE", "HF_HUB_CACHE",
              "HUGGINGFACE_HUB_CACHE", "TORCH_HOME"):
    os.environ.pop(_name, None)

# huggingface_hub reads these at import time: set them before anything imports it.
os.environ["HF_HUB_DISABLE_XET"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import sys  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pytest  # noqa: E402

# The shared test Hub (`hub_server`, `hub`): importing it sets HF_ENDPOINT to a free 127.0.0.1 port.
from hub_fixture import hub, hub_server  # noqa: E402, F401

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MEDHUB_SHARED", ROOT.parent / "shared"))
DATA = SHARED / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data``: real medical images. Missing data is a failure, never a silent skip."""
    if not DATA.is_dir():
        pytest.fail(f"{DATA} is missing: the tests need ../shared/data beside the repository (or MEDHUB_SHARED)")
    return DATA


def pytest_sessionfinish(session, exitstatus) -> None:
    """Remove the session HOME."""
    shutil.rmtree(SESSION_HOME, ignore_errors=True)


@pytest.fixture(autouse=True)
def isolated_home(tmp_path_factory, monkeypatch) -> Path:
    """A fresh HOME, XDG config/cache, HF cache and medhub cache for each test."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(home / ".cache"))
    monkeypatch.setenv("HF_HOME", str(home / ".cache" / "huggingface"))
    monkeypatch.setenv("MEDHUB_HOME", str(home / ".cache" / "medhub"))
    for name in ("MEDHUB_REGISTRY", "MEDHUB_DATA", "MEDHUB_RESULTS", "HF_TOKEN", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    from medhub.registry import clear_cache

    clear_cache()
    return home


@pytest.fixture
def one_torch_thread():
    """Training tests run on one torch thread (steadier on a shared 2-core machine); restored afterwards."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
