"""Whether a run's training step goes through ``torch.compile`` (TorchInductor), and the compiled module.

Why: on a CPU, the CIFAR-stem ResNet-18 of MedMNIST v2's 28 px experiments spends its step in many small
memory-bound operators (BatchNorm, ReLU, additions on 28x28 maps at batch 128); Inductor fuses them into
generated C++ loops. On the busy 2-core development machine (2026-11-30, fp32, batch 128) the compiled step
gave 1.13-2.0x the eager images/s with 2 threads (three runs) and ~1.05x with 1 (the oneDNN convolutions,
~86% of the step, are the same either way; ``benchmarks/medmnist_recipe.py``, BENCHMARKS.md). Compilation costs a one-off warm-up
(~25 s there at moderate load, minutes on a very busy machine; recorded per run as ``first_step_s``), so it
is on by default only where the planned steps repay it:

* a CPU run (CUDA runs keep cuDNN kernels and channels-last),
* of a CIFAR-stem ResNet (the network this was measured on),
* with at least :data:`MIN_STEPS` planned training steps (MedMNIST's 100-epoch recipe on PneumoniaMNIST has
  3,700; the shortened ``--quick`` schedule ~150),
* and a C++ compiler on PATH (Inductor needs one).

``--compile`` / ``--no-compile`` (``reproduce(..., compile_model=True/False)``) decide instead. The choice is
kept in the run's state, so ``--resume`` continues with the same arithmetic; the numbers stay fp32 and
deterministic (the same generated kernels every run), but differ from eager ones in the last bits (other
summation order), as a different thread count would.

Only full training batches run compiled: evaluation and a smaller last batch run the same weights eagerly,
which spares a second and third compilation (other shapes, eval-mode BatchNorm) for a few batches per epoch.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import asdict, dataclass

import torch

log = logging.getLogger(__name__)

MIN_STEPS = 300


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


def choose_compile(requested: bool | None, *, device: torch.device, stem: str | None, segmentation: bool,
                   steps: int) -> CompileChoice:
    """Compile the training step or not: ``requested`` if given, else the default described in the module doc.

    Args:
        requested: True/False from ``--compile``/``--no-compile``; None for the default.
        device: where the run trains.
        stem: the plan's stem (``"cifar"`` or None).
        segmentation: a segmentation network (never compiled by default).
        steps: planned training steps (epochs x batches per epoch).
    """
    if requested is not None:
        if requested and not compiler_available():
            from medhub.errors import UsageError

            raise UsageError("--compile needs a C++ compiler (g++ or clang++) on PATH; install one or drop --compile")
        return CompileChoice(bool(requested), "--compile" if requested else "--no-compile")
    if device.type != "cpu":
        return CompileChoice(False, f"default: off on {device.type}")
    if segmentation or stem != "cifar":
        return CompileChoice(False, "default: on for CIFAR-stem ResNets on a CPU only (--compile to try it)")
    if steps < MIN_STEPS:
        return CompileChoice(False, f"default: {steps} training steps do not repay the compilation "
                                    f"(on from {MIN_STEPS})")
    if not compiler_available():
        return CompileChoice(False, "default: no C++ compiler on PATH for torch.compile")
    return CompileChoice(True, f"default: CIFAR-stem ResNet on a CPU, {steps} training steps")


def compile_for_training(model: torch.nn.Module) -> torch.nn.Module:
    """``torch.compile(model)`` (Inductor, static shapes, fp32): shares ``model``'s parameters and buffers."""
    return torch.compile(model, dynamic=False)
