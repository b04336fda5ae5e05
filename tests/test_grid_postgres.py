"""The results store on a real PostgreSQL server (a throwaway one, started for this module): concurrent
claims, stored results never overwritten, resume planning, and ``medhub results --db``. (Real cells run in
tests/test_grid_run.py; the store code is the same for both databases.)

Skipped, with the reason, where the PostgreSQL server binaries or the psycopg driver are not installed.
"""

from __future__ import annotations

import json
import multiprocessing as mp

import pytest
from pg_server import PG_BIN, postgres_available, throwaway_postgres

from medhub.cli import main
from medhub.grid.cells import expand_grid
from medhub.grid.run import plan_grid
from medhub.grid.store import RUNNING, ResultStore

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pg_url():
    pytest.importorskip(
        "psycopg", reason="the psycopg driver is not installed (pip install 'medhub[postgres]')"
    )
    if not postgres_available():
        pytest.skip(f"no PostgreSQL server binaries in {PG_BIN} (set MEDHUB_PG_BIN)")
    with throwaway_postgres() as url:
        yield url


def _fresh(url: str) -> ResultStore:
    store = ResultStore(url)
    with store.engine.begin() as conn:
        from medhub.grid.store import cells_table

        conn.execute(cells_table.delete())
    return store


def _claim_all(url: str, keys: list[str], queue) -> None:
    store = ResultStore(url)
    queue.put([k for k in keys if store.claim(k)])


def test_concurrent_claims_on_postgres(pg_url):
    store = _fresh(pg_url)
    cells = expand_grid(["random:a"], ["t"], [0.5, 1.0], runs=15)
    store.add_cells(cells)
    keys = [c.key for c in cells]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_claim_all, args=(pg_url, keys, queue)) for _ in range(3)]
    for p in procs:
        p.start()
    claimed = [k for _ in procs for k in queue.get(timeout=120)]
    for p in procs:
        p.join(timeout=60)
    assert sorted(claimed) == sorted(keys)
    assert store.counts() == {RUNNING: len(keys)}


def test_resume_and_results_on_postgres(pg_url, capsys):
    store = _fresh(pg_url)
    cells = expand_grid(["random:a", "random:b"], ["breastmnist"], [1.0], runs=2, settings={"epochs": 1})
    assert len(plan_grid(store, cells, resume=False)) == 4
    for cell, metric in zip(cells, (0.6, 0.62, 0.7, 0.75), strict=True):
        assert store.claim(cell.key)
        report = {"model": cell.model, "task": cell.task, "metric": "auc", "mean": metric, "reported": None,
                  "runs": [{"seed": cell.seed, "metric": metric, "per_class": {}, "epochs": 1, "seconds": 0.1}]}  # fmt: skip
        assert store.mark_done(cell.key, report)
    assert not store.mark_done(
        cells[0].key, {"metric": "auc", "runs": [{"metric": 0.0}]}
    )  # never overwritten
    assert plan_grid(store, cells, resume=True) == []
    picked = {r["key"]: r["report"] for r in store.rows(report_keys=("mean", "runs", "absent"))}
    full = {r["key"]: r["report"] for r in store.rows()}
    assert picked == {k: {"mean": v["mean"], "runs": v["runs"], "absent": None} for k, v in full.items()}
    assert main(["results", "--db", pg_url, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [(e["model"], e["n"]) for e in data["matrix"]] == [("random:a", 2), ("random:b", 2)]
    (row,) = data["significance"]["rows"]
    assert row["model"] == "random:b" and row["test"] == "independent t-test"  # equal variances, as the lab reports (issue 12)
