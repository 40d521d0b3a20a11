"""Command line: `python launch.py COMMAND ...`. Thin: parse, call a library function, print.

Every command ends by printing one JSON line with its headline metrics (and the run directory) on
stdout so scripts can read it. Problems the user can fix print one `error:` line on stderr and exit
with code 2; nothing is overwritten."""

import argparse
import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cobra.errors import CobraError, NonFiniteLossError, OneLineParser, Terminated, one_line
from cobra.reporting import jsonable


def _add_overrides(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a dotted config key (repeatable), e.g. --set loss.tau=0.05")


# ------------------------------------------------------------------------------------------------
# Commands


def _record_failure(layout, reporter, exc: BaseException) -> None:
    """Mark the run as ended badly: the reporter's end record, `status.json` and, for an error
    nobody anticipated, the traceback in `error.log` (which main's `error:` line points to)."""
    interrupted = isinstance(exc, KeyboardInterrupt)
    if not interrupted and not isinstance(exc, (CobraError, NonFiniteLossError)):
        write_error_log(exc, layout.error_log)
    # a run directory that has become unwritable (full disk, read-only remount) must not hide
    # the original error behind an OSError from this bookkeeping
    with contextlib.suppress(OSError):
        if reporter is not None:
            reporter.close("FAILED")
        layout.write_status("KILLED" if interrupted else "FAILED",
                            None if interrupted else one_line(exc))


def _lock_run(layout) -> None:
    """One command at a time on a run directory: a second `train --resume` or `stage` on a
    run in use is refused, so nothing is written twice."""
    from cobra.locks import hold

    hold(layout.lock, f"run directory '{layout.root}'")


def _train_run_dir(args: argparse.Namespace):
    """`train`'s run directory, locked, and its config (None with --resume: the directory's
    own, read once torch is imported)."""
    from cobra.config import load_config, with_overrides
    from cobra.errors import ConfigError
    from cobra.layout import new_run, open_run

    if args.resume and (args.config or args.name):
        given = "a config file" if args.config else "--name"
        raise ConfigError(f"--resume continues '{args.resume}' with its own config.yaml and "
                          f"directory, so {given} would be ignored; drop it (or start a new "
                          f"run without --resume)")
    if args.resume:
        layout = open_run(args.resume)
        _lock_run(layout)
        return layout, None
    cfg = load_config(args.config, args.overrides)
    if args.name:
        cfg = with_overrides(cfg, {"run.name": args.name})
    # exclusive create: this process owns `layout.root`, so it alone may remove it
    layout = new_run(cfg.run.dir, cfg.run.name)
    _lock_run(layout)
    return layout, cfg


def cmd_train(args: argparse.Namespace) -> dict[str, Any]:
    layout, cfg = _train_run_dir(args)
    # torch and the models: imported once the command line is known to be good
    from cobra.accel import slow_amp_warning
    from cobra.objective import projections_never_start
    from cobra.pipeline import run_trial
    from cobra.reporting import FileReporter
    from cobra.runtime import resolve_device
    from cobra.stages import train

    if args.resume:
        cfg = train.resume_config(layout, args.overrides)
        resume_from = layout.last_checkpoint if layout.last_checkpoint.exists() else None
    else:
        resume_from = None
    reporter = FileReporter(layout.metrics)
    try:
        # inside the try: a device this machine lacks is bad input, and its run goes away
        for warning in (projections_never_start(cfg.loss, cfg.train.epochs,
                                                cfg.model.branches == "both"),
                        slow_amp_warning(cfg.train.amp, resolve_device(cfg.train.device))):
            if warning:
                print(warning, file=sys.stderr, flush=True)
        if args.no_seeds:
            metrics = train.run(cfg, layout, reporter, resume_from=resume_from)
        else:
            metrics = run_trial(cfg, layout, reporter, resume_from=resume_from)
    except CobraError as exc:
        if not args.resume and not layout.last_checkpoint.exists():
            # Bad input found before the first checkpoint in a directory this process created:
            # leave no half-made run behind.
            shutil.rmtree(layout.root, ignore_errors=True)
        else:
            _record_failure(layout, reporter, exc)
        raise
    except BaseException as exc:
        _record_failure(layout, reporter, exc)
        raise
    reporter.close("FINISHED")
    layout.write_status("FINISHED")
    return {**metrics, "run_dir": str(layout.root)}


def cmd_stage(args: argparse.Namespace) -> dict[str, Any]:
    from cobra.config import load_config
    from cobra.layout import open_run

    layout = open_run(args.run_dir)
    _lock_run(layout)
    from cobra.pipeline import run_stages  # torch: once the run is known to be free
    from cobra.reporting import FileReporter

    cfg = load_config(layout.config, args.overrides, saved=True)
    reporter = FileReporter(layout.metrics)
    try:
        metrics = run_stages(cfg, layout, reporter, stages=args.names, force=args.force)
    except CobraError:
        raise  # bad input: the run's earlier results still stand
    except BaseException as exc:
        _record_failure(layout, None, exc)
        raise
    return {**metrics, "run_dir": str(layout.root)}


def cmd_data(args: argparse.Namespace) -> dict[str, Any]:
    from cobra.config import load_config
    from cobra.data.synthetic import write_synthetic

    cfg = load_config(None, args.overrides)
    root = write_synthetic(Path(args.out), cfg.data.synthetic)
    return {"data_root": str(root)}


def cmd_pretrain(args: argparse.Namespace) -> dict[str, Any]:
    from cobra import pretrain
    from cobra.config import load_config

    return pretrain.run(load_config(args.config, args.overrides))


def cmd_config(args: argparse.Namespace) -> dict[str, Any] | None:
    import yaml

    from cobra.config import describe, load_config, to_dict

    if args.list:
        rows = describe()
        width = max(len(key) for key, _, _ in rows)  # nested keys (masks.ir_labels.crf.*) run long
        for key, default, text in rows:
            print(f"{key:{width}s} {default!s:24s} {text}")
        return None
    cfg = load_config(args.config, args.overrides)
    print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
    return None


def cmd_sweep(args: argparse.Namespace) -> dict[str, Any]:
    from cobra.sweep.spec import load_sweep
    from cobra.sweep.tuner import run_sweep

    spec = load_sweep(args.file)
    if args.plan:
        from cobra.sweep.plan import print_plan

        return print_plan(spec)
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
    out = _writable_directory(Path(args.out or "reports"), "report --out")
    from cobra import results, tracking  # mlflow: once the command line is known to be good

    result = results.make_report(tracking.open_store(), args.experiment, args.sweep, out,
                                rows=args.rows, cols=args.cols)
    print(result.pop("table"), file=sys.stderr)
    return result


def _writable_directory(path: Path, what: str) -> Path:
    """`path` as a directory this process can write into (made if missing), else a CobraError
    naming it: found before any work, not when the first file is written."""
    from cobra.errors import ConfigError

    if path.exists() and not path.is_dir():
        raise ConfigError(f"{what} '{path}' is a file, not a directory; give a directory "
                          f"(it receives several files)")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create {what} directory '{path}' ({exc.strerror}); give a "
                          f"writable directory") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(f"{what} directory '{path}' is not writable; give a writable one")
    return path


# Commands that write under $COBRA_CACHE (the synthetic dataset, builtin weights, the decoded
# image cache): its problems are found before they start.
CACHE_COMMANDS = ("train", "stage", "pretrain", "sweep", "final")


def check_cache_dir() -> None:
    """$COBRA_CACHE (default ~/.cache/cobra) must be a directory this process can write."""
    raw = os.environ.get("COBRA_CACHE", "~/.cache/cobra")
    _writable_directory(Path(raw).expanduser(), "COBRA_CACHE")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="launch.py", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)

    p = sub.add_parser("train", help="train CoBra, then make and score seeds")
    p.add_argument("config", nargs="?", help="run config YAML (default: built-in defaults)")
    p.add_argument("--name", help="run directory name under run.dir")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its last checkpoint")
    p.add_argument("--no-seeds", action="store_true", help="stop after training")
    _add_overrides(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("stage", help="run post-training stages on an existing run directory")
    p.add_argument("names", nargs="+", metavar="NAME",
                   help="seeds, ir_labels, irn, masks, segment (in that order)")
    p.add_argument("--run-dir", required=True)
    p.add_argument("--force", action="store_true", help="redo even if outputs are complete")
    _add_overrides(p)
    p.set_defaults(func=cmd_stage)

    p = sub.add_parser("data", help="write the built-in synthetic dataset in VOC layout")
    p.add_argument("kind", choices=["synthetic"])
    p.add_argument("--out", required=True, help="directory to write (must not hold other data)")
    _add_overrides(p)
    p.set_defaults(func=cmd_data)

    p = sub.add_parser("pretrain", help="pretrain the config's backbones on the built-in corpus "
                       "(what model.pretrained=builtin loads; cached, made once)")
    p.add_argument("config", nargs="?", help="run config YAML naming the backbones")
    _add_overrides(p)
    p.set_defaults(func=cmd_pretrain)

    p = sub.add_parser("config", help="print the resolved config, or --list every key")
    p.add_argument("config", nargs="?")
    p.add_argument("--list", action="store_true")
    _add_overrides(p)
    p.set_defaults(func=cmd_config)

    sub.add_parser("bench", help="the benchmark: ratios against in-run baselines "
                   "(launch.py bench --help)", add_help=False)

    _add_sweep_commands(sub)
    return parser


def _add_sweep_commands(sub: argparse._SubParsersAction) -> None:
    """sweep (Ray Tune + Optuna + MLflow), then final and report, which read MLflow only."""
    p = sub.add_parser("sweep", help="run a hyperparameter sweep (Ray Tune + Optuna + MLflow)")
    p.add_argument("file", help="sweep YAML, e.g. sweeps/demo.yaml")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted sweep without re-running finished trials")
    p.add_argument("--plan", action="store_true",
                   help="print the trials, what runs at once and the expected time and "
                        "CPU/GPU-hours; start nothing")
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


def _traceback_text(exc: BaseException) -> str:
    from cobra.uris import redact  # no mlflow import on the error path

    return redact("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))


def _say_error(text: str) -> None:
    """The one `error:` line, with every secret of a URI in it hidden (a library's message
    may quote MLFLOW_TRACKING_URI whole)."""
    from cobra.uris import redact

    print(f"error: {redact(text)}", file=sys.stderr)


def write_error_log(exc: BaseException, path: Path) -> None:
    """Keep the traceback of `exc` in `path` and remember where, for main's `error:` line."""
    from cobra.layout import atomic_write_text

    try:
        atomic_write_text(path, _traceback_text(exc))
    except OSError:
        return  # an unwritable run directory: main falls back to a temporary file
    exc.cobra_error_log = path  # type: ignore[attr-defined]


def _error_log_of(exc: BaseException) -> Path | None:
    """Where the traceback of an unexpected error is kept (a temporary file when no run has it)."""
    if getattr(exc, "cobra_error_log", None) is None:
        try:
            fd, name = tempfile.mkstemp(prefix="cobra-error-", suffix=".log")
            with os.fdopen(fd, "w") as fh:
                fh.write(_traceback_text(exc))
            exc.cobra_error_log = Path(name)  # type: ignore[attr-defined]
        except OSError:
            return None
    return exc.cobra_error_log  # type: ignore[attr-defined]


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """For one command: SIGTERM raises Terminated (a KeyboardInterrupt), so every path that
    handles Ctrl+C (status KILLED, a resumable checkpoint, the sweep's resume hint) handles it;
    and the locks the command took are given back when it ends."""
    from cobra.locks import release_all

    def terminate(signum, frame):
        raise Terminated(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        release_all()


def _bench(argv: list[str]) -> int:
    """The benchmark lives in the checkout's benchmarks/, which the package does not install."""
    try:
        from benchmarks.bench import main as bench_main
    except ModuleNotFoundError as exc:
        if exc.name not in ("benchmarks", "benchmarks.bench"):
            raise
        print("error: the benchmark is not installed with the cobra package; run `python "
              "launch.py bench` from a checkout of the repository", file=sys.stderr)
        return 2
    return bench_main(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:  # the benchmark has its own flags (benchmarks/bench.py --help)
        return _bench(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        if args.command in CACHE_COMMANDS:
            check_cache_dir()
        with _sigterm_as_interrupt():
            result = args.func(args)
    except CobraError as exc:
        _say_error(one_line(exc))
        return 2
    except NonFiniteLossError as exc:
        _say_error(one_line(exc))
        return 1
    except Terminated:
        print("terminated", file=sys.stderr)
        return 143  # 128 + SIGTERM, as the shell reports a process SIGTERM ended
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the last line of defence: one line, a log
        log = _error_log_of(exc)
        where = f" (traceback in {log})" if log else ""
        _say_error(f"{type(exc).__name__}: {one_line(exc)}{where}")
        return 1
    if result is not None:
        from cobra.uris import redact

        print(redact(json.dumps(jsonable(result), default=str)))
    return 0
