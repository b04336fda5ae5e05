"""The allowed range of every numeric option and argument, checked before any work starts.

One table serves the CLI (argparse types built by :func:`cli_type`, so ``--img-size 100000`` is refused while
parsing) and the Python API (:func:`check`, called by ``medhub.load``, ``reproduce``, ``adapt``, the grid).
Upper bounds are sanity limits, not recommendations: an input side of 2048 px is already 16x the benchmark's
largest protocol (224 px for classification, 512 px for segmentation).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass

from medhub.errors import UsageError, check_range


@dataclass(frozen=True)
class Bound:
    """``low <= value <= high`` (``low < value`` with ``low_open``); None leaves that side open."""

    low: float | None
    high: float | None
    low_open: bool = False


BOUNDS: dict[str, Bound] = {
    "img_size": Bound(8, 2048),
    "num_classes": Bound(0, 100_000),  # 0: no classifier (timm's convention for a feature extractor)
    "in_chans": Bound(1, 64),
    "epochs": Bound(1, 10_000),
    "batch_size": Bound(1, 65_536),
    "runs": Bound(1, 1_000),
    "lr": Bound(0, 10, low_open=True),
    "label_fraction": Bound(0, 1, low_open=True),
    "seed": Bound(0, 2**32 - 1),  # numpy's seed range
    "workers": Bound(1, 1_024),
    "cpus_per_run": Bound(1, 1_024),
    "gpus_per_run": Bound(0, 64),
    "max_retries": Bound(0, 100),
    "port": Bound(0, 65_535),
    "max_upload_mb": Bound(1, 10_000_000),
    "min_age_hours": Bound(0, 1_000_000),
    "n_images": Bound(2, 1_000_000),
    "frame": Bound(0, 100_000),
    # medhub serve
    "cache_mb": Bound(1, 1 << 20),
    "max_connections": Bound(1, 1_000_000),
    "timeout_s": Bound(0, 86_400, low_open=True),
    "keep_alive_requests": Bound(1, 1_000_000_000),  # 0-based frame of a multi-frame DICOM/TIFF  # medhub rank's sample: two images at the very least for any score
}


def check(name: str, value: float | None, *, label: str | None = None) -> None:
    """Raise :class:`~medhub.errors.UsageError` when ``value`` lies outside ``BOUNDS[name]``; None passes.

    Args:
        name: key of :data:`BOUNDS` (``img_size``).
        value: the value to check.
        label: how the user wrote it (default: ``name`` as an API argument, e.g. ``img_size``).
    """
    bound = BOUNDS[name]
    if isinstance(value, bool) or not isinstance(value, (int, float, type(None))):
        raise UsageError(f"{label or name} must be a number, got {value!r}")
    check_range(label or name, value, bound.low, bound.high, low_open=bound.low_open)


def cli_type(name: str, kind: type = int) -> Callable[[str], float]:
    """An argparse ``type=`` that parses ``kind`` and checks ``BOUNDS[name]`` (a refusal is exit 2)."""

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, "
                                             f"got '{text}'") from None
        try:
            check(name, value, label="value")
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc).replace("value must", "must")) from None
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse
