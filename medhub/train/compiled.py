"""Whether a run's training step goes through ``torch.compile`` (TorchInductor), and the compiled module.

Off by default (since 2026-12-01). It was on for CIFAR-stem ResNets on a CPU while their step was NCHW:
Inductor fused the BatchNorm/ReLU/add chains around the oneDNN convolutions (1.12x the eager step at 2
threads). Since CPU runs of those networks train channels-last (:func:`medhub.train.runner.channels_last_for`),
the compiled step measured 0.99x the eager one on the idle 2-core development machine and 1.04x (2 threads) /
0.95x (1 thread) beside a CPU burner (``benchmarks/medmnist_recipe.py --compile``, BENCHMARKS.md), after a
one-off compilation of 3-30 s (minutes on a busy machine) and only with a C++ compiler on PATH: no gain left
to pay for it.

``--compile`` (``reproduce(..., compile_model=True)``) turns it on for any run. The choice is kept in the run's
state, so ``--resume`` continues with the same arithmetic; the numbers stay fp32 and deterministic (the same
generated kernels every run), but differ from eager ones in the last bits (other summation order), as a
different thread count would.

Only full training batches run compiled: evaluation and a smaller last batch run the same weights eagerly,
which spares a second and third compilation (other shapes, eval-mode BatchNorm) for a few batches per epoch.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import asdict, dataclass

import torch

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class CompileChoice:
    """Whether the training step is compiled, and why (recorded in ``result.json``)."""

    used: bool
    why: str

    def as_dict(self) -> dict:
        """A JSON-ready record."""
        return asdict(self)


def compiler_available() -> bool:
    """True when a C++ compiler Inductor can call is on PATH (``$CXX``, ``g++``, ``c++`` or ``clang++``)."""
    import os

    names = [os.environ.get("CXX", ""), "g++", "c++", "clang++"]
    return any(name and shutil.which(name) for name in names)


def choose_compile(requested: bool | None) -> CompileChoice:
    """Compile the training step or not: ``requested`` (True/False from ``--compile``/``--no-compile``), else off
    (see the module doc).

    Raises:
        UsageError: ``--compile`` without a C++ compiler on PATH (Inductor needs one).
    """
    if requested is None:
        return CompileChoice(False, "default: off (measured no faster than the eager channels-last step on a CPU; "
                                    "--compile to try it)")
    if requested and not compiler_available():
        from medhub.errors import UsageError

        raise UsageError("--compile needs a C++ compiler (g++ or clang++) on PATH; install one or drop --compile")
    return CompileChoice(bool(requested), "--compile" if requested else "--no-compile")


def compile_for_training(model: torch.nn.Module) -> torch.nn.Module:
    """``torch.compile(model)`` (Inductor, static shapes, fp32): shares ``model``'s parameters and buffers."""
    return torch.compile(model, dynamic=False)
