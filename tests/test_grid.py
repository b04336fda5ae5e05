"""The grid's machinery without training: expansion, the results store under concurrent writers, planning
and resume rules, significance tests and plots."""

from __future__ import annotations

import json
import multiprocessing as mp
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats

from medhub.cli import main
from medhub.errors import UnknownModelError, UnknownTaskError, UsageError
from medhub.grid import analysis
from medhub.grid.cells import expand_grid, parse_fractions, resolve_models, resolve_tasks
from medhub.grid.run import plan_grid
from medhub.grid.store import DONE, FAILED, PENDING, RUNNING, ResultStore


def _report(metric: float, seed: int, model: str = "m", task: str = "t") -> dict:
    return {"model": model, "task": task, "metric": "auc", "mean": metric, "std": 0.0,
            "runs": [{"seed": seed, "metric": metric, "per_class": {}, "epochs": 1, "seconds": 0.1}],
            "reported": {"mean": 0.9, "std": None, "runs": None, "source": "paper"}}  # fmt: skip


# ---- cells ----------------------------------------------------------------------------------------------
def test_expand_grid_pairs_seeds_across_models():
    cells = expand_grid(["random:a", "random:b"], ["t1", "t2"], [0.5, 1.0], runs=3, settings={"epochs": 1})
    assert len(cells) == 2 * 2 * 2 * 3
    assert len({c.key for c in cells}) == len(cells)
    assert {c.seed for c in cells if c.model == "random:a"} == {
        c.seed for c in cells if c.model == "random:b"
    }
    assert cells[0].key == "random:a|t1|lf=0.5|seed=0|epochs=1"


def test_models_patterns_aliases_and_baselines():
    models = resolve_models("resnet50_imagenet1k*, random:resnet18")
    assert "resnet50_imagenet1k" in models and models[-1] == "random:resnet18"
    assert all(m.startswith("resnet50_imagenet1k") for m in models[:-1])
    with pytest.raises(UsageError, match="matches no checkpoint"):
        resolve_models("nothing_like_this_*")
    with pytest.raises(UnknownModelError):
        resolve_models("resnet50_imagenet1kk")
    with pytest.raises(UnknownTaskError):
        resolve_tasks("pneumoniamnis")


@pytest.mark.parametrize("bad", ["0", "1.5", "half"])
def test_label_fractions_are_checked(bad):
    assert parse_fractions("0.1, 0.25,1.0") == [0.1, 0.25, 1.0]
    with pytest.raises(UsageError):
        parse_fractions(bad)


# ---- store ----------------------------------------------------------------------------------------------
def _claim_all(url: str, keys: list[str], queue) -> None:
    store = ResultStore(url)
    queue.put([k for k in keys if store.claim(k)])


def test_concurrent_writers_claim_each_cell_once(tmp_path):
    url = f"sqlite:///{tmp_path / 'r.db'}"
    cells = expand_grid(["random:a"], ["t"], [0.1, 0.5, 1.0], runs=20)
    ResultStore(url).add_cells(cells)
    keys = [c.key for c in cells]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_claim_all, args=(url, keys, queue)) for _ in range(3)]
    for p in procs:
        p.start()
    claimed = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    flat = [k for part in claimed for k in part]
    assert sorted(flat) == sorted(keys)  # every cell claimed exactly once, no writer failed
    assert ResultStore(url).counts() == {RUNNING: len(keys)}


def test_a_stored_result_is_never_overwritten(tmp_path):
    store = ResultStore(str(tmp_path / "r.db"))  # a bare path means a SQLite file
    (cell,) = expand_grid(["random:a"], ["t"], [1.0])
    store.add_cells([cell])
    assert store.claim(cell.key)
    assert store.mark_done(cell.key, _report(0.8, 0))
    assert not store.claim(cell.key)
    assert not store.mark_done(cell.key, _report(0.1, 0))
    store.mark_failed(cell.key, "late failure")
    (row,) = store.rows()
    assert row["status"] == DONE and row["metric"] == 0.8 and row["report"]["runs"][0]["seed"] == 0


def test_resume_releases_cells_of_a_dead_owner(tmp_path):
    store = ResultStore(f"sqlite:///{tmp_path / 'r.db'}")
    cells = expand_grid(["random:a"], ["t"], [1.0], runs=3)
    assert len(plan_grid(store, cells, resume=False)) == 3
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    import socket

    store.claim(cells[0].key, owner=f"{socket.gethostname()}:{dead.stdout.strip()}")
    store.claim(cells[1].key)
    store.mark_done(cells[1].key, _report(0.7, 1))
    with pytest.raises(UsageError, match="--resume"):
        plan_grid(store, cells, resume=False)
    todo = plan_grid(store, cells, resume=True)
    assert [c.key for c in todo] == [cells[0].key, cells[2].key]
    assert store.statuses()[cells[0].key] == FAILED and store.statuses()[cells[2].key] == PENDING


def test_results_db_needs_an_existing_grid(tmp_path, capsys):
    assert main(["results", "--db", f"sqlite:///{tmp_path / 'none.db'}"]) == 2
    assert "medhub benchmark" in capsys.readouterr().err


# ---- analysis -------------------------------------------------------------------------------------------
def _filled_store(tmp_path, values: dict[str, list[float]], seeds=(0, 1, 2)) -> ResultStore:
    store = ResultStore(f"sqlite:///{tmp_path / 'r.db'}")
    for model, metrics in values.items():
        for seed, metric in zip(seeds, metrics, strict=True):
            (cell,) = expand_grid([model], ["pneumoniamnist"], [1.0], first_seed=seed)
            store.add_cells([cell])
            store.claim(cell.key)
            store.mark_done(cell.key, _report(metric, seed, model, "pneumoniamnist"))
    return store


def test_independent_t_test_against_the_baseline(tmp_path):
    base, other = [0.70, 0.72, 0.71], [0.80, 0.79, 0.83]
    store = _filled_store(tmp_path, {"random:resnet18": base, "resnet50_imagenet1k": other})
    summary = analysis.summarize(store.rows())
    (row,) = summary["significance"]["rows"]
    expected = stats.ttest_ind(other, base)  # equal variances: the lab's independent two-sample t-test
    assert summary["significance"]["baseline"] == "random:resnet18"
    assert row["test"] == "independent t-test" and row["n"] == (3, 3)
    assert row["p"] == pytest.approx(expected.pvalue) and row["t"] == pytest.approx(expected.statistic)
    assert row["mark"] == ("**" if 1e-4 <= expected.pvalue < 0.01 else row["mark"])
    assert row["mark"] == analysis.level(expected.pvalue) and row["significant"] is bool(expected.pvalue < 0.05)
    entry = next(e for e in summary["matrix"] if e["model"] == "resnet50_imagenet1k")
    assert entry["mean"] == pytest.approx(sum(other) / 3) and entry["reported_mean"] == 0.9
    assert entry["std"] == pytest.approx(float(np.std(other)))  # population std, as the released code prints


def test_unpaired_seeds_use_the_same_test(tmp_path):
    store = _filled_store(tmp_path, {"random:resnet18": [0.6, 0.65]}, seeds=(0, 1))
    for seed, metric in ((5, 0.9), (6, 0.85), (7, 0.88)):
        (cell,) = expand_grid(["resnet50_imagenet1k"], ["pneumoniamnist"], [1.0], first_seed=seed)
        store.add_cells([cell])
        store.claim(cell.key)
        store.mark_done(cell.key, _report(metric, seed))
    (row,) = analysis.summarize(store.rows())["significance"]["rows"]
    assert row["test"] == "independent t-test" and row["n"] == (3, 2)
    assert row["p"] == pytest.approx(stats.ttest_ind([0.9, 0.85, 0.88], [0.6, 0.65]).pvalue)


def test_significance_marks_follow_the_figure_legend():
    assert [analysis.level(p) for p in (0.5, 0.05, 0.0499, 0.01, 0.0099, 1e-4, 9.9e-5)] == [
        "n.s.", "n.s.", "*", "*", "**", "**", "***"]


def test_published_comparisons_are_checked_against_the_grid(tmp_path):
    from medhub.schema import PublishedComparison

    store = _filled_store(tmp_path, {"swin_tiny_imagenet1k": [0.70, 0.71, 0.69],
                                     "convnext_tiny_imagenet1k": [0.74, 0.75, 0.73]})
    matrix = analysis.summarize(store.rows())["matrix"]
    published = [PublishedComparison(model="convnext_tiny_imagenet1k", baseline="swin_tiny_imagenet1k",
                                     task="pneumoniamnist", metric="auc", delta=0.037, source="test"),
                 PublishedComparison(model="convnext_tiny_imagenet1k", baseline="swin_tiny_imagenet1k",
                                     task="pneumoniamnist", metric="auc", p_value=0.3, source="test"),
                 PublishedComparison(model="convnext_tiny_imagenet1k", baseline="resnet50_imagenet1k",
                                     task="pneumoniamnist", metric="auc", delta=0.01, source="not in the grid")]
    same_sign, other_mark = analysis.check_published(matrix, published)
    expected = stats.ttest_ind([0.74, 0.75, 0.73], [0.70, 0.71, 0.69]).pvalue
    assert same_sign["difference"] == pytest.approx(0.04) and same_sign["p"] == pytest.approx(expected)
    assert same_sign["agrees"] is True and same_sign["published_delta"] == 0.037
    assert other_mark["published_mark"] == "n.s." and other_mark["mark"] == analysis.level(expected) != "n.s."
    assert other_mark["agrees"] is False


def test_results_cli_json_csv_and_plots(tmp_path, capsys):
    store = _filled_store(
        tmp_path, {"random:resnet18": [0.7, 0.72, 0.71], "resnet50_imagenet1k": [0.8, 0.79, 0.83]}
    )
    url, plots = store.url, tmp_path / "plots"
    assert (
        main(["results", "--db", url, "--json", "--baseline", "resnet50_imagenet1k", "--plots", str(plots)])
        == 0
    )
    data = json.loads(capsys.readouterr().out)
    assert data["significance"]["baseline"] == "resnet50_imagenet1k"
    assert {e["model"] for e in data["matrix"]} == {"random:resnet18", "resnet50_imagenet1k"}
    for name in ("pneumoniamnist_bars", "pneumoniamnist_label_efficiency"):
        assert (plots / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert "<svg" in (plots / f"{name}.svg").read_text()
    assert main(["results", "--db", url, "--csv"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("model,task,label_fraction") and len(lines) == 3
    assert main(["results", "--db", url]) == 0
    assert "independent t-test" in capsys.readouterr().out


def test_reading_a_missing_results_database_creates_nothing(tmp_path, capsys):
    from medhub.cli import main

    url = f"sqlite:///{tmp_path}/absent/results.db"
    assert main(["results", "--db", url]) == 2
    assert "no such results database" in capsys.readouterr().err
    assert not (tmp_path / "absent").exists()


def test_rows_fetch_only_the_report_keys_asked_for(tmp_path):
    """report_keys: the database extracts the fields; they equal the full report's, absent ones are None."""
    store = ResultStore(str(tmp_path / "r.db"))
    cells = expand_grid(["random:a"], ["t"], [1.0], runs=2)
    store.add_cells(cells)
    report = {**_report(0.8, 0), "reported": {"mean": 0.9, "std": 0.01, "source": "x", "setting": {"a": [1, 2]}},
              "verdict": "not reproduced"}
    assert store.claim(cells[0].key) and store.mark_done(cells[0].key, report)
    full = {r["key"]: r for r in store.rows()}
    part = {r["key"]: r for r in store.rows(report_keys=("reported", "verdict", "absent"))}
    assert part[cells[0].key]["report"] == {"reported": report["reported"], "verdict": "not reproduced", "absent": None}
    assert full[cells[0].key]["report"]["reported"] == report["reported"]
    assert part[cells[1].key]["report"] is None  # pending: no report
    assert {k: v for k, v in part[cells[0].key].items() if k != "report"} == \
        {k: v for k, v in full[cells[0].key].items() if k != "report"}
    with pytest.raises(ValueError):
        store.rows(report_keys=("x') OR 1=1 --",))


def test_vectorised_t_tests_equal_one_scipy_call_per_pair():
    """compare_many groups pairs by run counts into one ttest_ind(axis=1) call; each result equals its own call."""
    import math
    import random

    from scipy import stats

    from medhub.grid.analysis import compare_many

    rng = random.Random(3)
    pairs = []
    for _ in range(60):
        n_a, n_b = rng.choice([(3, 3), (2, 5), (5, 2), (1, 3), (4, 4)])
        pairs.append(({s: rng.random() for s in range(n_a)}, {s: rng.random() for s in range(n_b)}))
    pairs.append(({0: 0.5, 1: 0.5}, {0: 0.5, 1: 0.5}))  # no variance on either side
    for (ours, theirs), result in zip(pairs, compare_many(pairs), strict=True):
        if min(len(ours), len(theirs)) < 2:
            assert result["p"] is None and result["test"].startswith("none")
            continue
        expected = stats.ttest_ind(list(ours.values()), list(theirs.values()))
        if math.isnan(expected.pvalue):
            assert result["p"] is None and "no variance" in result["test"]
            continue
        assert result["t"] == pytest.approx(float(expected.statistic), rel=1e-12)
        assert result["p"] == pytest.approx(float(expected.pvalue), rel=1e-12)
