"""Run one grid cell in the current process: the single seam between the grid and the trainer.

A worker process (local pool or Ray) calls :func:`prepare_worker` once, which imports torch and the trainer,
then :func:`run_cell` for each cell it receives. :func:`run_cell` never raises: a cell that fails returns
its error, so one broken cell never takes a worker (or the grid) down.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import traceback

log = logging.getLogger(__name__)

_PREPARED = False


def prepare_worker(threads: int = 1, gpu_ids: str | None = None, parent_pid: int | None = None) -> None:
    """Set up this worker process once: thread count, visible GPUs, parent watchdog, trainer import.

    Args:
        threads: intra-op threads for torch (the cell's CPU share).
        gpu_ids: value for ``CUDA_VISIBLE_DEVICES`` (``""`` hides every GPU); None leaves it alone.
        parent_pid: exit this process when that process disappears (a killed driver leaves no orphans).
    """
    global _PREPARED
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    os.environ["MEDHUB_THREADS"] = str(max(1, threads))  # each cell's run keeps this share (medhub.cpu)
    if gpu_ids is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu_ids
    if parent_pid:
        threading.Thread(target=_exit_with_parent, args=(parent_pid,), daemon=True).start()
    import torch

    torch.set_num_threads(max(1, threads))
    import medhub.reproduce  # noqa: F401  (imported once per worker, not per cell)

    _PREPARED = True


def _exit_with_parent(parent_pid: int) -> None:
    while True:
        time.sleep(1.0)
        if os.getppid() != parent_pid:
            os._exit(3)


def cell_out_dir(out_root: str, cell: dict) -> str:
    """Where a cell's run folder lives: ``OUT/cells/<model>/<task>/lf<F>_seed<S>[_<settings>]``."""
    model = cell["model"].replace(":", "-").replace("/", "-")
    name = f"lf{cell['label_fraction']:g}_seed{cell['seed']}"
    if cell.get("settings"):
        name += "_" + "_".join(f"{k}{v}" for k, v in sorted(cell["settings"].items()))
    return os.path.join(out_root, "cells", model, cell["task"], name)


def run_cell(cell: dict, options: dict) -> dict:
    """Run one cell with ``reproduce`` and return ``{"key", "ok", "report" | "error", "seconds", "worker"}``.

    Args:
        cell: :meth:`Cell.to_dict` output (model, task, label_fraction, seed, settings, key).
        options: grid-wide options: ``out`` (root folder), ``data_root`` (per-task folders under it, or
            None for the trainer's default data), ``device``, ``threads``.
    """
    start = time.perf_counter()
    result = {"key": cell["key"], "worker": f"{socket.gethostname()}:{os.getpid()}"}
    try:
        if not _PREPARED:
            prepare_worker(int(options.get("threads") or 1))
        from medhub.reproduce import reproduce

        out = cell_out_dir(options["out"], cell)
        data_root = options.get("data_root")
        report = reproduce(
            cell["model"],
            cell["task"],
            data_dir=os.path.join(data_root, cell["task"]) if data_root else None,
            runs=1,
            seed=int(cell["seed"]),
            label_fraction=float(cell["label_fraction"]),
            device=options.get("device") or "auto",
            out=out,
            resume=os.path.isdir(out),
            progress=False,
            **cell.get("settings", {}),
        )
        result.update(ok=True, report=report)
    except Exception as exc:  # a failed cell is data, not a crash: report it and keep the worker alive
        log.debug("cell %s failed", cell["key"], exc_info=True)
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        result.update(ok=False, error=f"{type(exc).__name__}: {message}", traceback=traceback.format_exc())
    result["seconds"] = time.perf_counter() - start
    return result
