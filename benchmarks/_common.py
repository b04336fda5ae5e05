"""Shared helpers for the benchmarks: interleaved timing, medians, machine facts, the JSON last line.

Every benchmark compares medhub (side A) with a baseline (side B) measured in the same process, one run of
each in alternating order (A,B then B,A, ...), so that load from other processes on a shared machine hits
both sides alike. The headline ratio is the median of the per-round ratios (:func:`paired_ratio`); the ratio of the two
sides' medians is reported beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any


def parser(description: str) -> argparse.ArgumentParser:
    """An argument parser with the options every benchmark shares."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument(
        "--quick", action="store_true", help="small settings, finishes within two minutes on 2 cores"
    )
    p.add_argument("--repeats", type=int, default=None, help="timed runs per side (default: 5)")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads for both sides (default 1: steadier on a shared machine)",
    )
    return p


def setup_torch(threads: int) -> None:
    """Same torch thread count for both sides."""
    import torch

    torch.set_num_threads(max(1, threads))


def sync(device) -> None:
    """Wait for a GPU's queued work, so that a timed run includes it (no-op on a CPU)."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median(values: list[float]) -> float:
    """Median of a non-empty list."""
    return float(statistics.median(values))


def timed(fn: Callable[[], Any]) -> float:
    """Wall seconds of one call."""
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def interleaved(sides: dict[str, Callable[[], Any]], repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """Time each side ``repeats`` times, alternating the order each round (A,B / B,A / ...).

    ``warmup`` untimed rounds run first (imports, allocator, lazy caches). Returns seconds per side.
    """
    names = list(sides)
    for _ in range(warmup):
        for name in names:
            sides[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(repeats):
        for name in names if round_ % 2 == 0 else names[::-1]:
            times[name].append(timed(sides[name]))
    return times


def interleaved_records(
    sides: dict[str, Callable[[], dict[str, float]]], repeats: int, warmup: int = 1
) -> dict[str, list[dict[str, float]]]:
    """Like :func:`interleaved`, for sides that time several phases themselves and return them as a dict."""
    names = list(sides)
    for _ in range(warmup):
        for name in names:
            sides[name]()
    records: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    for round_ in range(repeats):
        for name in names if round_ % 2 == 0 else names[::-1]:
            records[name].append(sides[name]())
    return records


def summary(times: list[float], digits: int = 4) -> dict[str, Any]:
    """Median, min, max and every run, rounded."""
    return {
        "median_s": round(median(times), digits),
        "min_s": round(min(times), digits),
        "max_s": round(max(times), digits),
        "runs_s": [round(t, digits) for t in times],
    }


def ratio(numerator: float, denominator: float) -> float:
    """numerator / denominator, rounded to three decimals."""
    return round(numerator / denominator, 3) if denominator > 0 else float("nan")


def paired_ratio(numerators: list[float], denominators: list[float]) -> float:
    """Median over rounds of ``numerators[i] / denominators[i]``: the headline ratio.

    Both runs of a round are adjacent in time, so each round's ratio sees the same machine load; the median
    of those is steadier than the ratio of the two sides' medians when other processes come and go.
    """
    return round(median([n / d for n, d in zip(numerators, denominators, strict=True)]), 3)


def machine() -> dict[str, Any]:
    """What the numbers were measured on: CPUs, load, library versions, GPU (if any)."""
    import torch

    info: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "platform": platform.platform(terse=True),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    if hasattr(os, "getloadavg"):
        info["loadavg_1m"] = round(os.getloadavg()[0], 2)
    return info


def subprocess_seconds(code: str, env: dict[str, str] | None = None) -> float:
    """Run ``code`` in a fresh interpreter; it must print one float (seconds it measured itself)."""
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, **(env or {})},
    )
    return float(out.stdout.strip().splitlines()[-1])


def emit(result: dict[str, Any]) -> None:
    """Print the result as one JSON object on the last line of stdout."""
    sys.stdout.flush()
    print(json.dumps(result, sort_keys=False), flush=True)


def note(message: str) -> None:
    """Progress for humans, on stderr (stdout's last line stays the JSON)."""
    print(message, file=sys.stderr, flush=True)
