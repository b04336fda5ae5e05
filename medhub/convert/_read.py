"""Reading checkpoint files without ever running code stored in them.

``.safetensors`` is read with safetensors, ``.npz`` with numpy (``allow_pickle=False``), everything else
with ``torch.load(weights_only=True)``. The only class admitted beyond plain data is ``argparse.Namespace``
(the training arguments DINO, MAE and PyContrast save beside the weights); any other object makes the
load fail before it is built, and :class:`~medhub.errors.UnsafeCheckpointError` says what to do.
"""

from __future__ import annotations

import argparse
import logging
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch

from medhub.errors import ConversionError, UnsafeCheckpointError

logger = logging.getLogger(__name__)

SAFE_GLOBALS = (argparse.Namespace,)
"""Classes a checkpoint may contain besides tensors and plain data."""


def read_checkpoint(path: str | Path) -> Any:
    """Load a checkpoint file safely and return the object it holds (usually a dict).

    Args:
        path: a ``.safetensors``, ``.npz`` or torch file (``.pth``, ``.pth.tar``, ``.bin``, ``.pt``, ``.ckpt``).

    Raises:
        FileNotFoundError: (as :class:`~medhub.errors.ConversionError`) when the file is missing.
        UnsafeCheckpointError: when the pickle needs any class other than tensors, plain data or
            ``argparse.Namespace``; nothing from the file is executed.

    >>> read_checkpoint("resnet50.safetensors")  # doctest: +SKIP
    {'conv1.weight': tensor(...), ...}
    """
    path = Path(path)
    if path.is_dir():
        raise ConversionError(
            f"{path} is a folder; pass the checkpoint file inside it (a TensorFlow checkpoint folder "
            "needs --format simclr_tf, which explains the conversion)",
            path=str(path),
        )
    if not path.is_file():
        raise ConversionError(f"checkpoint {path} does not exist; check the path", path=str(path))
    if path.stat().st_size == 0:
        raise ConversionError(f"{path} is empty (0 bytes); download or write it again", path=str(path))
    name = path.name.lower()
    if name.endswith(".safetensors"):
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except SafetensorError as exc:
            raise ConversionError(f"{path.name} is not a readable safetensors file ({exc}); it is truncated or "
                                  "in another format: download it again", path=str(path)) from None
    if name.endswith(".npz"):
        return _read_npz(path)
    return _read_torch(path)


def _read_npz(path: Path) -> dict[str, torch.Tensor]:
    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as arrays:
            return {key: torch.from_numpy(arrays[key].copy()) for key in arrays.files}
    except ValueError as exc:  # object arrays need pickle
        raise UnsafeCheckpointError(
            f"{path.name} holds pickled Python objects inside the .npz; medhub reads plain arrays only",
            path=str(path),
        ) from exc


def _read_torch(path: Path) -> Any:
    try:
        with torch.serialization.safe_globals(list(SAFE_GLOBALS)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        culprit = _unsupported_global(str(exc))
        if culprit is None:
            raise _unreadable(path, exc) from None
        hint = _hint_for(path, culprit)
        raise UnsafeCheckpointError(
            f"{path.name} needs the Python object '{culprit}' to load, and medhub never runs code from a "
            f"checkpoint; {hint}",
            path=str(path),
            culprit=culprit,
        ) from None
    except (RuntimeError, EOFError, KeyError, IndexError, ValueError, zipfile.BadZipFile, OSError) as exc:
        raise _unreadable(path, exc) from None


def _unreadable(path: Path, exc: BaseException) -> ConversionError:
    """The one-line refusal of a file that is no ``torch.save`` output (cut short, an HTML page, other bytes)."""
    lines = [line for line in str(exc).splitlines() if line.strip()]
    if isinstance(exc, (RuntimeError, OSError, zipfile.BadZipFile)) and lines:
        detail = lines[0][:120]
    elif isinstance(exc, EOFError):
        detail = "the file ends early"
    else:
        detail = "its bytes are not a torch.save file, e.g. an HTML page saved under this name"
    return ConversionError(
        f"{path.name} is not a readable PyTorch checkpoint ({detail}); check that the download completed",
        path=str(path),
    )


def _unsupported_global(message: str) -> str | None:
    """The global a refused pickle asks for (``posix.system``), or ``None`` when the bytes are no pickle that
    names one (``Unsupported operand``: not a torch.save stream at all)."""
    for pattern in (
        r"Unsupported global: GLOBAL ([\w.]+)",
        r"GLOBAL ([\w.]+) was not an allowed global",
        r"unsupported GLOBAL ([\w.]+)",
        r"Trying to (?:call|load) .*?([\w.]+)",
    ):
        match = re.search(pattern, message)
        if match:
            return match.group(1)
    if re.search(r"Unsupported operand \d+", message):
        return None
    first = message.strip().splitlines()
    return first[-1][:80] if first else "unknown"


def _hint_for(path: Path, culprit: str) -> str:
    if path.suffix == ".pkl" or "haiku" in culprit or "jax" in culprit:
        return "a BYOL Haiku pickle needs --format byol_haiku, which explains the conversion"
    if culprit.startswith("torch.nn.") or culprit.startswith("torchvision."):
        return (
            "the file stores a whole model object; in an environment you trust, re-save it with "
            "torch.save(model.state_dict(), 'weights.pth') and convert that"
        )
    return (
        "if you trust its source, re-save only its tensors in a separate environment, e.g. "
        "torch.save(torch.load(f, weights_only=False)['model'], 'weights.pth'), and convert that"
    )
