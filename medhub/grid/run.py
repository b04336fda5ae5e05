"""Run a grid: plan the cells against the results store, dispatch them, record every result.

>>> from medhub.grid.cells import expand_grid
>>> from medhub.grid.store import ResultStore
>>> store = ResultStore("sqlite:///:memory:")
>>> cells = expand_grid(["random:resnet18"], ["pneumoniamnist"], [1.0], runs=2)
>>> [c.seed for c in plan_grid(store, cells, resume=False)]
[0, 1]
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from medhub.errors import UsageError
from medhub.grid.cells import Cell
from medhub.grid.store import DONE, FAILED, PENDING, RUNNING, ResultStore, this_owner

log = logging.getLogger(__name__)

HEARTBEAT_S = 30.0


@dataclass
class GridEvent:
    """Progress of a grid run, for a progress display.

    Attributes:
        kind: ``"start"``, ``"done"``, ``"failed"`` or ``"retry"`` (its worker died; it is run again).
        cell: the cell's data (:meth:`Cell.to_dict`).
        result: the runner's result (``None`` for ``"start"``).
        finished: cells finished in this run so far; ``total``: cells this run set out to do.
    """

    kind: str
    cell: dict
    result: dict | None
    finished: int
    total: int


@dataclass
class GridSummary:
    """What a grid run did."""

    total: int
    planned: int
    done: int = 0
    failed: int = 0
    skipped: int = 0
    seconds: float = 0.0
    errors: dict[str, str] = field(default_factory=dict)


def plan_grid(store: ResultStore, cells: list[Cell], *, resume: bool) -> list[Cell]:
    """Store the grid's cells and return those to run now: all of a new grid, or with ``resume`` the
    missing and failed ones (cells whose runner died are released first).

    Raises:
        UsageError: without ``resume``, when the store already holds some of these cells.
    """
    keys = [c.key for c in cells]
    if len(set(keys)) != len(keys):
        raise UsageError("the grid lists the same cell twice; check --models and --tasks for repeats")
    if not resume:
        known = store.statuses(keys)
        if known:
            done = sum(1 for s in known.values() if s == DONE)
            raise UsageError(
                f"{len(known)} of these {len(cells)} cells are already stored in {store.url} ({done} done); "
                "pass --resume to run only the missing or failed ones, or choose another --results"
            )
    else:
        released = store.release_stale()
        if released:
            log.info("released %d cell(s) left running by a process that is gone", released)
    store.add_cells(cells)
    statuses = store.statuses(keys)
    busy = [k for k in keys if statuses.get(k) == RUNNING]
    if busy:
        log.warning("%d cell(s) are running in another process; they are left to it", len(busy))
    return [c for c in cells if statuses.get(c.key) in (PENDING, FAILED)]


def run_grid(
    store: ResultStore,
    cells: list[Cell],
    executor,
    *,
    out: str,
    data_root: str | None = None,
    device: str = "auto",
    on_event: Callable[[GridEvent], None] | None = None,
) -> GridSummary:
    """Run ``cells`` (from :func:`plan_grid`) with ``executor`` and store each result as it arrives.

    Each cell is claimed in the store just before it starts, so a cell that another process finished or
    holds meanwhile is skipped. On an interruption (Ctrl-C, SIGTERM), cells still running are marked failed
    and the next ``--resume`` runs them again; finished cells are never redone.
    """
    owner = this_owner()
    summary = GridSummary(total=len(cells), planned=len(cells))
    start = time.perf_counter()
    emit = on_event or (lambda event: None)
    finished = 0

    def claim(cell: dict) -> bool:
        if not store.claim(cell["key"], owner):
            summary.skipped += 1
            return False
        emit(GridEvent("start", cell, None, finished, summary.planned))
        return True

    def on_result(cell: dict, result: dict) -> None:
        nonlocal finished
        if result.get("retry"):  # its worker died; the executor submits it again
            store.mark_failed(cell["key"], result.get("error", "worker died"))
            emit(GridEvent("retry", cell, result, finished, summary.planned))
            return
        finished += 1
        if result.get("ok"):
            store.mark_done(cell["key"], result["report"], seconds=result.get("seconds"))
            summary.done += 1
        else:
            store.mark_failed(cell["key"], result.get("error", "unknown error"))
            summary.failed += 1
            summary.errors[cell["key"]] = result.get("error", "")
        emit(GridEvent("done" if result.get("ok") else "failed", cell, result, finished, summary.planned))

    stop = threading.Event()
    beat = threading.Thread(target=_heartbeat, args=(store, owner, stop), daemon=True)
    beat.start()
    options = {"out": out, "data_root": data_root, "device": device}
    try:
        executor.run([c.to_dict() for c in cells], options, claim, on_result)
    finally:
        stop.set()
        released = store.release_owner(owner, "interrupted before it finished; run again with --resume")
        if released:
            log.warning("%d running cell(s) marked failed; --resume runs them again", released)
        summary.seconds = time.perf_counter() - start
    return summary


def _heartbeat(store: ResultStore, owner: str, stop: threading.Event) -> None:
    while not stop.wait(HEARTBEAT_S):
        try:
            store.heartbeat(owner)
        except Exception:  # a missed beat only risks a later --resume redoing a cell
            log.debug("heartbeat failed", exc_info=True)
