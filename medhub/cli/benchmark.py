"""``medhub benchmark``: run a grid of reproduce runs (checkpoints x tasks x label fractions x seeds).

Also the ``--db`` mode of ``medhub results`` (:func:`show_db_results`): the reproduced matrix, significance
against a baseline, and plots.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path

from medhub.bounds import cli_type
from medhub.cli._output import print_json, print_table
from medhub.errors import UsageError

log = logging.getLogger(__name__)

DEFAULT_OUT = "medhub-benchmark"


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``benchmark``."""
    p = subparsers.add_parser(
        "benchmark",
        help="run a grid of fine-tuning runs (models x tasks x label fractions x seeds), resumable",
        description="Run every (model, task, label fraction, seed) cell with 'medhub reproduce', store each "
        "report in a results database, and resume where a previous run stopped. "
        "Research software, not a medical device.",
    )
    p.add_argument(
        "--models",
        required=True,
        help="ids, aliases, patterns ('resnet50_*') or random:<arch>, comma separated",
    )
    p.add_argument("--tasks", required=True, help="task ids, comma separated")
    p.add_argument("--runs", type=cli_type("runs"), default=1, help="seeds per cell (seeds 0..N-1, shared by every model)")
    p.add_argument(
        "--label-fractions", default="1.0", help="comma separated, e.g. 0.1,0.25,1.0 (default 1.0)"
    )
    p.add_argument("--epochs", type=cli_type("epochs"), help="override the task protocol's epochs")
    p.add_argument("--batch-size", type=cli_type("batch_size"), help="override the protocol's batch size")
    p.add_argument("--lr", type=cli_type("lr", float), help="override the protocol's learning rate")
    p.add_argument("--img-size", type=cli_type("img_size"), help="override the protocol's input size")
    p.add_argument("--linear-probe", action="store_true", help="train the head only")
    p.add_argument("--cifar-stem", action="store_true", help="random:<resnet> only: MedMNIST's CIFAR-style stem")
    p.add_argument(
        "--executor", choices=["local", "ray"], default="local", help="local processes or Ray (default local)"
    )
    p.add_argument("--address", help="Ray cluster: 'auto' or ray://host:10001 (default: start a local Ray)")
    p.add_argument("--workers", type=cli_type("workers"), help="cells at a time (default: CPUs / --cpus-per-run)")
    p.add_argument("--cpus-per-run", type=cli_type("cpus_per_run"), default=1, help="CPU threads per cell (default 1)")
    p.add_argument("--gpus-per-run", type=cli_type("gpus_per_run", float), default=0, help="GPUs per cell (default 0)")
    p.add_argument(
        "--max-retries", type=cli_type("max_retries"), default=1, help="re-runs of a cell whose worker died (default 1)"
    )
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where each cell trains (default auto)")
    p.add_argument(
        "--results", help=f"SQLAlchemy URL or SQLite path (default sqlite:///{DEFAULT_OUT}/results.db)"
    )
    p.add_argument("--resume", action="store_true", help="run only the cells that are missing or failed")
    p.add_argument(
        "--data-root", help="folder with one sub-folder per task (default: the trainer's data root)"
    )
    p.add_argument("--out", help="folder for each cell's run outputs (default: beside the SQLite file)")
    p.set_defaults(func=cmd_benchmark)


def _default_out(url: str) -> str:
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database and parsed.database != ":memory:":
        db = Path(parsed.database)
        return str(db.parent / f"{db.stem}_runs")
    return DEFAULT_OUT


def cmd_benchmark(args: argparse.Namespace) -> int:
    """Plan the grid against the results database, then run what is left."""
    from medhub.grid.cells import expand_grid, parse_fractions, resolve_models, resolve_tasks
    from medhub.grid.store import ResultStore

    if args.address and args.executor != "ray":
        raise UsageError("--address joins a Ray cluster: add --executor ray (or drop --address)")
    settings = {
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "img_size": args.img_size,
        "linear_probe": args.linear_probe,
        "cifar_stem": args.cifar_stem,
    }
    cells = expand_grid(
        resolve_models(args.models),
        resolve_tasks(args.tasks),
        parse_fractions(args.label_fractions),
        runs=args.runs,
        settings=settings,
    )
    from medhub._io import check_output_dir

    url = args.results or f"sqlite:///{DEFAULT_OUT}/results.db"
    if "://" not in url:
        url = f"sqlite:///{Path(url).expanduser().resolve()}"
    out = args.out or _default_out(url)
    check_output_dir(out, "--out")
    if args.data_root is not None and not Path(args.data_root).is_dir():
        raise UsageError(f"--data-root {args.data_root} is not a folder; pass the folder with one sub-folder per task")
    store = ResultStore(url)
    try:
        return _run(args, store, cells, out)
    finally:
        store.close()


def _run(args: argparse.Namespace, store, cells: list, out: str) -> int:
    from medhub.grid.run import plan_grid

    todo = plan_grid(store, cells, resume=args.resume)
    counts = store.counts([c.key for c in cells])
    _say(
        f"grid: {len(cells)} cells ({', '.join(f'{n} {s}' for s, n in sorted(counts.items()))}); "
        f"{len(todo)} to run; results in {store.url}"
    )
    if not todo:
        _say("nothing to run: every cell has a stored result (or is running elsewhere)")
        return 0
    from medhub.grid.executors import make_executor
    from medhub.grid.run import run_grid

    executor = make_executor(
        args.executor,
        address=args.address,
        workers=args.workers,
        cpus_per_run=args.cpus_per_run,
        gpus_per_run=args.gpus_per_run,
        max_retries=args.max_retries,
    )
    _say(f"executor: {args.executor}, {executor.capacity} cell(s) at a time; run outputs in {out}")
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        summary = run_grid(
            store,
            todo,
            executor,
            out=out,
            data_root=args.data_root,
            device=args.device,
            on_event=_print_event,
        )
    finally:
        signal.signal(signal.SIGTERM, previous)
    _say(
        f"finished: {summary.done} done, {summary.failed} failed, {summary.skipped} skipped in {summary.seconds:.1f}s"
    )
    if summary.failed:
        _say(
            f"{summary.failed} cell(s) failed; fix the cause and rerun with --resume (see 'medhub results --db {store.url}')"
        )
        return 1
    return 0


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _say(text: str) -> None:
    print(text, flush=True)


def _print_event(event) -> None:
    cell = event.cell
    name = f"{cell['model']} {cell['task']} lf={cell['label_fraction']:g} seed={cell['seed']}"
    if event.kind == "start":
        _say(f"[{event.finished}/{event.total}] start  {name}")
        return
    result = event.result or {}
    if event.kind == "done":
        report = result.get("report") or {}
        runs = report.get("runs") or [{}]
        value = runs[0].get("metric", report.get("mean"))
        metric = f"{report.get('metric', 'metric')}={value:.4f}" if isinstance(value, (int, float)) else ""
        _say(f"[{event.finished}/{event.total}] done   {name} {metric} ({result.get('seconds', 0):.1f}s)")
    elif event.kind == "retry":
        _say(f"[{event.finished}/{event.total}] retry  {name}: {result.get('error')}")
    else:
        _say(f"[{event.finished}/{event.total}] FAILED {name}: {result.get('error')}")


# ---- medhub results --db ---------------------------------------------------------------------------------
def show_db_results(args: argparse.Namespace) -> int:
    """``medhub results --db URL``: reproduced matrix, significance vs a baseline, optional plots."""
    from medhub.grid import analysis
    from medhub.grid.store import ResultStore

    if getattr(args, "plots", None):
        from medhub._io import check_output_dir

        check_output_dir(args.plots, "--plots")
    store = ResultStore(args.db, create=False)
    try:
        rows = store.rows(task=args.task, model=getattr(args, "model", None), report_keys=analysis.REPORT_KEYS)
    finally:
        store.close()
    summary = analysis.summarize(rows, baseline=getattr(args, "baseline", None))
    if getattr(args, "plots", None):
        summary["plots"] = [str(p) for p in analysis.write_plots(summary, Path(args.plots))]
    if args.json:
        print_json(summary)
    elif getattr(args, "csv", False):
        analysis.write_csv(summary, sys.stdout)
    else:
        _print_summary(summary)
    return 0


def _print_summary(summary: dict) -> None:
    headers, rows = analysis_matrix_table(summary)
    print_table(
        headers,
        rows,
        title=f"Reproduced results (mean ± std over seeds; reported in brackets) - {summary['status']}",
    )
    sig = summary["significance"]
    if sig["rows"]:
        print()
        print_table(
            ["model", "task", "fraction", "runs", "diff", "t", "p", "mark", "test"],
            [
                (
                    r["model"],
                    r["task"],
                    f"{r['label_fraction']:g}",
                    "{}+{}".format(*r["n"]) if isinstance(r["n"], (list, tuple)) else r["n"],
                    _fmt(r["difference"], "+.4f"),
                    _fmt(r["t"], ".2f"),
                    _fmt(r["p"], ".2g"),
                    r.get("mark") or "-",
                    r["test"],
                )
                for r in sig["rows"]
            ],
            title=f"vs baseline {sig['baseline']} ({sig['method']}; alpha {sig['alpha']})",
        )
    elif sig.get("note"):
        print(f"\nsignificance: {sig['note']}")
    published = summary.get("published_comparisons") or []
    if published:
        print()
        print_table(
            ["model", "baseline", "task", "published diff", "published p / mark", "diff here", "p / mark here",
             "agrees"],
            [(r["model"], r["baseline"], r["task"], _fmt(r["published_delta"], "+.4f"),
              f"{_fmt(r['published_p'], '.2g')} / {r['published_mark'] or '-'}", _fmt(r["difference"], "+.4f"),
              f"{_fmt(r['p'], '.2g')} / {r['mark'] or '-'}", {True: "yes", False: "no", None: "-"}[r["agrees"]])
             for r in published],
            title="Published comparisons (registry 'comparisons') checked on this grid",
        )
    for path in summary.get("plots", []):
        print(f"plot: {path}")


def analysis_matrix_table(summary: dict) -> tuple[list[str], list[tuple]]:
    """Headers and rows of the model x task matrix for a terminal table."""
    tasks = summary["tasks"]
    table: dict[tuple, dict[str, str]] = {}
    for entry in summary["matrix"]:
        cell = f"{entry['mean']:.4f}±{entry['std']:.4f} (n={entry['n']})"
        if entry.get("reported_mean") is not None:
            cell += f" [{entry['reported_mean']:.3f}]"
        key = (entry["model"], f"{entry['label_fraction']:g}", entry["setting"], entry["metric"].upper())
        table.setdefault(key, {})[entry["task"]] = cell
    rows = [(*key, *(cells.get(t, "") for t in tasks)) for key, cells in sorted(table.items())]
    return ["model", "fraction", "setting", "metric", *tasks], rows


def _fmt(value, spec: str) -> str:
    return "-" if value is None or value != value else format(value, spec)
