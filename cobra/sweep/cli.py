"""`launch.py sweep | final | report`: the sweep workflow on the command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def cmd_sweep(args: argparse.Namespace) -> dict[str, Any]:
    from cobra.sweep.spec import load_sweep
    from cobra.sweep.tuner import run_sweep

    spec = load_sweep(args.file)
    return run_sweep(spec, resume=args.resume)


def cmd_final(args: argparse.Namespace) -> dict[str, Any]:
    from cobra.errors import ConfigError
    from cobra.final import run_final

    if not (args.best or args.run):
        raise ConfigError("say which trial to continue: --best (optionally --sweep NAME) or "
                          "--run MLFLOW_RUN_ID")
    return run_final(experiment=args.experiment, sweep=args.sweep, run_id=args.run,
                     overrides=args.overrides, runs_dir=Path(args.runs_dir))


def cmd_report(args: argparse.Namespace) -> dict[str, Any]:
    from cobra import report, tracking

    uri = tracking.resolve_tracking_uri()
    tracking.check_reachable(uri)
    out = Path(args.out) if args.out else None
    result = report.make_report(uri, args.experiment, args.sweep, out or Path("reports"),
                                rows=args.rows, cols=args.cols)
    print(result.pop("table"), file=sys.stderr)
    return result


def add_subcommands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sweep", help="run a hyperparameter sweep (Ray Tune + Optuna + MLflow)")
    p.add_argument("file", help="sweep YAML, e.g. sweeps/demo.yaml")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted sweep without re-running finished trials")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("final", help="seeds → masks → segmentation from the best sweep trial")
    p.add_argument("--best", action="store_true", help="the best finished trial by the metric")
    p.add_argument("--sweep", help="sweep name (default: the latest sweep)")
    p.add_argument("--run", help="an MLflow run id of a trial, instead of --best")
    p.add_argument("--experiment", default="cobra", help="MLflow experiment (default cobra)")
    p.add_argument("--runs-dir", default="runs", help="where the final run directory goes")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override the trial's config for the final stages")
    p.set_defaults(func=cmd_final)

    p = sub.add_parser("report", help="the sweep as an ablation table (terminal, md, csv, png)")
    p.add_argument("--sweep", help="sweep name (default: the latest sweep)")
    p.add_argument("--experiment", default="cobra")
    p.add_argument("--rows", help="dotted key for table rows (default: inferred)")
    p.add_argument("--cols", help="dotted key for table columns (default: inferred)")
    p.add_argument("--out", help="directory for report.md/.csv/.png (default reports/)")
    p.set_defaults(func=cmd_report)
