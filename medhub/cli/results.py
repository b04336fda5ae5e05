"""``medhub results``: the matrix of reported results (model x task)."""

from __future__ import annotations

import argparse

from medhub.cli._output import print_json, print_table
from medhub.cli.browse import format_result
from medhub.errors import UsageError
from medhub.registry import load_registry
from medhub.schema import ReportedResult

METRICS = ("auc", "acc", "dice")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``results``."""
    p = subparsers.add_parser(
        "results", help="reported results as a model x task table",
        description="Reported results as a model x task table; with --db, a benchmark grid's reproduced results "
        "(mean and population std over seeds), every model tested against a baseline with the independent two-sample "
        "t-test (equal variances, scipy.stats.ttest_ind; marks n.s., * p<0.05, ** p<0.01, *** p<0.0001), and the "
        "registry's published comparisons checked where both checkpoints ran.")
    p.add_argument("--task", help="only this task")
    p.add_argument("--model", help="only this checkpoint id, alias or random:<arch>")
    p.add_argument("--metric", help="only this metric (auc, acc, dice)")
    p.add_argument("--json", action="store_true", help="print a JSON array")
    p.add_argument("--db", help="show reproduced results from a 'medhub benchmark' database (SQLAlchemy URL)")
    p.add_argument("--csv", action="store_true", help="with --db: print the matrix as CSV")
    p.add_argument("--baseline", help="with --db: model to test every other against (default: a random: model) "
                   "with the independent two-sample t-test, equal variances (scipy.stats.ttest_ind), as the benchmark "
                   "lab reports; marks n.s., * p<0.05, ** p<0.01, *** p<0.0001; std is the population std (np.std); "
                   "the registry's published deltas/p-values between checkpoints that both ran are checked too")
    p.add_argument("--plots", help="with --db: write per-task bar and label-efficiency plots (PNG, SVG) here")
    p.set_defaults(func=cmd_results)


def result_id(result: ReportedResult) -> str:
    """A stable id for a reported result: model/task/metric plus its setting, e.g. ``.../img_size=28``."""
    setting = ",".join(f"{k}={v}" for k, v in sorted(result.setting.items()))
    return "/".join(filter(None, (result.model, result.task, result.metric, setting)))


def cmd_results(args: argparse.Namespace) -> int:
    """Print reported results, one row per (model, setting) and one column per task."""
    if args.db:  # reproduced results of a benchmark grid
        from medhub.cli.benchmark import show_db_results

        return show_db_results(args)
    if args.metric and args.metric.lower() not in METRICS:
        raise UsageError(f"--metric {args.metric} is not one of {', '.join(METRICS)}")
    if not args.db and (args.csv or args.baseline or args.plots):
        raise UsageError("--csv, --baseline and --plots read a benchmark database: add --db URL")
    results = load_registry().results_for(model=args.model, task=args.task)
    if args.metric:
        results = [r for r in results if r.metric == args.metric.lower()]
    if args.json:
        print_json([{"id": result_id(r), **r.model_dump(mode="json")} for r in results])
        return 0
    if args.task or args.model:
        rows = [(r.model, r.task, format_result(r)) for r in results]
        print_table(["model", "task", "result"], rows, title=f"{len(rows)} reported results")
        return 0
    tasks = sorted({r.task for r in results})
    matrix: dict[tuple, dict[str, str]] = {}
    for r in results:
        setting = ", ".join(f"{k}={v}" for k, v in r.setting.items())
        std = f"±{r.std:.3f}" if r.std is not None else ""
        matrix.setdefault((r.model, setting, r.metric), {})[r.task] = f"{r.mean:.3f}{std}"
    rows = [(m, s, metric.upper(), *(cells.get(t, "") for t in tasks)) for (m, s, metric), cells in sorted(matrix.items())]
    print_table(["model", "setting", "metric", *tasks], rows, title="Reported results (0-1 scale)")
    return 0
