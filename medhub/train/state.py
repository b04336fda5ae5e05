"""Seeds, determinism, and the per-epoch training state that makes ``--resume`` exact.

The state file holds the model, optimizer, scheduler, epoch, history, early-stopping counters, the best
weights so far and every RNG state, written atomically after each epoch (a ``kill -9`` leaves the
previous epoch's file). It is read back with ``torch.load(weights_only=True)``: no pickle code runs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medhub._io import atomic_open
from medhub.cpu import ThreadChoice, choose_threads
from medhub.errors import DataError

log = logging.getLogger(__name__)
STATE_FILE = "state.pt"
BEST_FILE = "best.safetensors"
THREADS_FILE = "threads.json"


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


@contextlib.contextmanager
def deterministic(device: torch.device, seed: int) -> Iterator[None]:
    """Seeded, deterministic kernels inside the block; the caller's flags and RNG states come back after.

    Same seed + same device -> same numbers. Kernels without a deterministic version only warn.
    """
    saved = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark, rng_states(), random.getstate())
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    if device.type == "cuda":
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    seed_everything(seed)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[2], saved[3]
        restore_rng(saved[4])
        random.setstate(saved[5])


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of one epoch: resuming at any epoch reproduces the RNG stream of an uninterrupted run."""
    return (seed * 7919 + epoch * 104_729) % (2**31)


def run_threads(run_dir: Path, resume: bool) -> ThreadChoice:
    """The intra-op thread count of the run in ``run_dir``: the saved one when resuming, else a fresh
    :func:`medhub.cpu.choose_threads` (written to ``run_dir/threads.json``).

    A run keeps one count from start to end, across ``--resume`` too: the count changes floating-point
    summation order, and a resumed run must end where an uninterrupted one would.
    """
    import json

    from medhub._io import atomic_write_text

    path = run_dir / THREADS_FILE
    if resume and path.is_file():
        try:
            return ThreadChoice(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            log.warning("%s is unreadable; choosing the thread count again", path)
    choice = choose_threads()
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(choice.as_dict()))
    return choice


def rng_states() -> dict[str, Any]:
    """Every RNG state as tensors (safe for ``weights_only`` loading)."""
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    states = {"torch": torch.get_rng_state(), "numpy": torch.from_numpy(keys.astype(np.int64)),
              "numpy_pos": torch.tensor([pos, has_gauss], dtype=torch.int64), "numpy_gauss": torch.tensor(gauss)}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng(states: dict[str, Any]) -> None:
    """Put back the RNG states saved by :func:`rng_states`."""
    torch.set_rng_state(states["torch"])
    if "numpy" in states:
        pos, has_gauss = (int(v) for v in states["numpy_pos"])
        keys = states["numpy"].numpy().astype(np.uint32)
        np.random.set_state(("MT19937", keys, pos, has_gauss, float(states["numpy_gauss"])))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def save_state(folder: Path, state: dict[str, Any]) -> Path:
    """Write the training state atomically to ``folder/state.pt``."""
    path = folder / STATE_FILE
    with atomic_open(path, "wb") as handle:
        torch.save(state, handle)
    return path


def load_state(folder: Path) -> dict[str, Any] | None:
    """The saved training state, or None when there is none; a corrupt file is an error that says what to do."""
    path = folder / STATE_FILE
    if not path.is_file():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a damaged file
        raise DataError(f"{path}: cannot read the saved training state ({exc}); delete it to start the run over",
                        path=path) from exc


def save_best(folder: Path, state: dict[str, torch.Tensor]) -> Path:
    """Write the best epoch's weights to ``folder/best.safetensors`` atomically (written on each improvement)."""
    from safetensors.torch import save

    from medhub._io import atomic_write_bytes

    path = folder / BEST_FILE
    atomic_write_bytes(path, save({k: v.contiguous() for k, v in state.items()}))
    return path


def load_best(folder: Path) -> dict[str, torch.Tensor]:
    """The best weights saved by :func:`save_best`."""
    from safetensors.torch import load_file

    path = folder / BEST_FILE
    if not path.is_file():
        raise DataError(f"{path} is missing beside state.pt; delete {folder} to start the run over", path=path)
    return load_file(str(path))


def cpu_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A detached CPU copy of the model's weights (the best epoch's snapshot)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
