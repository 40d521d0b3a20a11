"""One sweep trial inside a Ray worker: CoBra's own train → seeds, reported to Ray and MLflow.

The training code only sees a `Reporter`; `RayReporter` turns each epoch into a
`ray.tune.report(metrics, checkpoint=...)` so schedulers can stop a trial and a crashed trial can
be restored from its last checkpoint."""

import dataclasses
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
from ray import tune

from cobra import tracking
from cobra.checkpoint import export_weights
from cobra.config import Config, with_overrides
from cobra.errors import CobraError, NonFiniteLossError
from cobra.layout import RunLayout
from cobra.pipeline import run_trial
from cobra.reporting import FileReporter, MultiReporter, Reporter
from cobra.results import trial_note
from cobra.sweep.spec import trial_name
from cobra.tracking import tags as tag

# Fault injection for the fault-tolerance tests and drills: crash a trial's first attempt right
# after the checkpoint of this epoch (1-based) has been reported.
CRASH_ENV = "COBRA_CRASH_ONCE_AFTER_EPOCH"


@dataclass(frozen=True)
class TrialContext:
    """What every trial needs from the driver (picklable: it travels to the workers)."""

    # the sweep's validated base config, as is: only the searched values (Ray's params) are
    # plain data, and the trial builds its config from the two once
    base_config: Config
    store: tracking.Store
    parent_run_id: str
    metric: str
    experiment_dir: str  # the sweep's directory in Ray's storage: a local path or a URI
    stages: tuple[str, ...] = ("seeds",)  # what the trial runs after training
    cpus: float = 1.0  # the trial's CPU share (Ray's resources): its masks stage's processes
    # the dataset splits every trial reads, described once by the driver (listing COCO's
    # annotations in every trial would cost seconds each)
    datasets: tuple[dict[str, Any], ...] = ()


class RayReporter(Reporter):
    """Per-epoch metrics + checkpoint to Ray Tune; the final report carries the seed metrics."""

    def __init__(self, layout: RunLayout, run_id: str) -> None:
        self.layout = layout
        self.last: dict[str, float] = {"mlflow_run_id": run_id}  # type: ignore[dict-item]

    def log_epoch(self, epoch: int, metrics: Mapping[str, float],
                  checkpoint: Path | None = None) -> None:
        self.last.update(metrics)
        self.last["epoch"] = epoch + 1
        if checkpoint is None:
            tune.report(dict(self.last))
        else:
            # Ray persists the checkpoint into its storage before report returns (and keeps only
            # the last one: CheckpointConfig(num_to_keep=1)), so the staging directory goes away
            # at once instead of piling up one full checkpoint per epoch in a temp folder.
            with _staged_checkpoint(self.layout) as staging:
                tune.report(dict(self.last), checkpoint=tune.Checkpoint.from_directory(staging))
        _maybe_crash(epoch + 1, self.layout)

    def log_summary(self, metrics: Mapping[str, Any]) -> None:
        self.last.update({k: v for k, v in metrics.items() if isinstance(v, (int, float))})

    def final_report(self) -> None:
        tune.report(dict(self.last))


STAGING_PREFIX = ".ray-checkpoint-"
EXPORT_PREFIX = ".mlflow-export-"


@contextmanager
def _staged_checkpoint(layout: RunLayout) -> Iterator[str]:
    """A directory holding only `last.pt`, for Ray to persist; removed afterwards.

    It sits in the run directory so that `last.pt` can be hard-linked (no bytes copied) rather
    than copied; a filesystem without hard links gets a copy."""
    staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=layout.root))
    try:
        try:
            os.link(layout.last_checkpoint, staging / "last.pt")
        except OSError:
            shutil.copy2(layout.last_checkpoint, staging / "last.pt")
        yield str(staging)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _maybe_crash(epoch: int, layout: RunLayout) -> None:
    target = os.environ.get(CRASH_ENV)
    marker = layout.root / ".crashed-once"
    if target and int(target) == epoch and not marker.exists():
        marker.touch()
        raise RuntimeError(f"injected crash after epoch {epoch} ({CRASH_ENV})")


def _restore(layout: RunLayout) -> Path | None:
    """The last checkpoint Ray kept for this trial (after a crash or a resumed sweep)."""
    # staging directories left by an attempt that died inside `tune.report`
    for stale in layout.root.glob(f"{STAGING_PREFIX}*"):
        shutil.rmtree(stale, ignore_errors=True)
    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as directory:
        layout.checkpoints.mkdir(parents=True, exist_ok=True)
        shutil.copy2(Path(directory) / "last.pt", layout.last_checkpoint)
    return layout.last_checkpoint


def _mlflow_run(ctx: TrialContext, trial_id: str, name: str,
                earlier: tracking.TrialRecord | None) -> tuple[str, bool]:
    """The trial's child run (and whether it is a restart's): an earlier attempt's run is
    reused when Ray restarts the trial, so retries stay one run."""
    node = ray.get_runtime_context().get_node_id()
    if earlier is not None:
        tracking.reopen_run(ctx.store, earlier.run_id)
        # a restarted trial may land on another node: keep where every attempt ran
        history = earlier.tags.get(tag.RAY_NODE_HISTORY, "")
        tracking.MlflowReporter(ctx.store, earlier.run_id).set_tags(
            {tag.RAY_NODE_ID: node, tag.RAY_NODE_HISTORY: f"{history},{node}".strip(",")})
        return earlier.run_id, True
    run_id = tracking.start_trial_run(ctx.store, ctx.parent_run_id, name,
                                      tags={tag.RAY_TRIAL_ID: trial_id, tag.RAY_NODE_ID: node,
                                            tag.RAY_NODE_HISTORY: node})
    return run_id, False


def _log_weights(reporter: Reporter, layout: RunLayout) -> None:
    """MLflow keeps the trial's weights alone, in half precision (what `final` needs; the
    resumable `last.pt` with its optimizer state stays in the run directory)."""
    with tempfile.TemporaryDirectory(prefix=EXPORT_PREFIX, dir=layout.root) as tmp:
        export = Path(tmp) / "last.pt"
        export_weights(layout.last_checkpoint, export, half=True)
        reporter.log_artifact(export, "checkpoints")


def trial_run_dir(ctx: TrialContext, trial_dir: Path) -> Path:
    """The trial's run directory: `<storage>/<sweep>/<trial>/run`, written there directly when
    storage is a local (or shared) path, so it outlives the Ray session and a resumed sweep finds
    it again. Not under Ray's trial directory: the driver uploads that whole tree at every state
    snapshot (one per checkpoint), which would copy every seed file again each epoch and race the
    run's atomic writes (a temporary file renamed away mid-upload fails the snapshot). With
    remote storage, the trial's working directory, which Ray does not upload."""
    if "://" in ctx.experiment_dir:
        return Path.cwd() / "run"
    return Path(ctx.experiment_dir) / trial_dir.name / "run"


def trial_config(ctx: TrialContext, params: Mapping[str, Any]) -> Config:
    """The trial's config, built (and validated) once: the sweep's base with Ray's values for
    the searched keys, without progress bars. run.* stays as in the base config: the trial
    directory moves between Ray sessions (a resumed sweep), and a trial's params must not
    change when it is restarted."""
    cfg = with_overrides(ctx.base_config, {**params, "train.progress": False})
    if cfg.masks.workers == 0:  # "all cores" means the trial's share, not the node's
        masks = dataclasses.replace(cfg.masks, workers=max(1, int(ctx.cpus)))
        cfg = dataclasses.replace(cfg, masks=masks)
    return cfg


# The result key of a trial that stopped on the user's input (a CobraError: a bad dataset,
# config or weights file). Every trial would fail alike and a retry changes nothing, so the trial
# ends without a traceback, `InputErrorStopper` ends the sweep, and the driver reports the
# message as one line with exit code 2.
INPUT_ERROR = "cobra_input_error"


class InputErrorStopper(tune.Stopper):
    """Stops the whole sweep once a trial reports INPUT_ERROR."""

    def __init__(self) -> None:
        self.seen = False

    def __call__(self, trial_id: str, result: dict) -> bool:
        if INPUT_ERROR in result:
            self.seen = True
        return self.seen

    def stop_all(self) -> bool:
        return self.seen


def run_sweep_trial(params: dict[str, Any], ctx: TrialContext) -> None:
    """Ray function trainable: `params` maps dotted config keys to this trial's values."""
    try:
        _run_sweep_trial(params, ctx)
    except CobraError as exc:
        from cobra.errors import one_line

        tune.report({INPUT_ERROR: f"trial {trial_name(params)}: {one_line(exc)}"})


def _run_sweep_trial(params: dict[str, Any], ctx: TrialContext) -> None:
    tune_ctx = tune.get_context()
    trial_id = tune_ctx.get_trial_id()
    layout = RunLayout(trial_run_dir(ctx, Path(tune_ctx.get_trial_dir())))
    layout.root.mkdir(parents=True, exist_ok=True)
    cfg = trial_config(ctx, params)
    # the MLflow run an earlier attempt of this Ray trial made, if any
    existing = tracking.find_trial_run(ctx.store, ctx.parent_run_id, trial_id)
    earlier = tracking.get_trial(ctx.store, existing) if existing else None
    if earlier is not None and earlier.status == "FINISHED":
        # Ray restarted a trial that had ended: its driver died before the next snapshot of the
        # experiment's state recorded the ending. MLflow holds the trial's result; hand that to
        # Ray again and leave the run (and the compute) alone.
        tune.report({**earlier.metrics, "mlflow_run_id": earlier.run_id})
        return
    run_id, resumed = _mlflow_run(ctx, trial_id, trial_name(params), earlier)
    mlflow_reporter = tracking.MlflowReporter(ctx.store, run_id, resumed=resumed,
                                              system_metrics=True)
    if not resumed and ctx.datasets:
        tracking.log_dataset_inputs(ctx.store, run_id, ctx.datasets)
    ray_reporter = RayReporter(layout, run_id)
    reporter = MultiReporter([FileReporter(layout.metrics), mlflow_reporter, ray_reporter])
    # the worker's pid lets an operator (or a fault drill) find the process of a trial
    mlflow_reporter.set_tags({tag.SEARCHED: ",".join(params), tag.RAY_WORKER_PID: os.getpid()})
    try:
        metrics = run_trial(cfg, layout, reporter, resume_from=_restore(layout), stages=ctx.stages)
    except NonFiniteLossError as exc:
        # Deterministic: retrying from the checkpoint would diverge again. End this trial as
        # failed with its reason and let the sweep go on.
        mlflow_reporter.set_tags({tag.FAILURE: str(exc)})
        mlflow_reporter.log_text(str(exc), "failure.txt")
        mlflow_reporter.close("FAILED")
        return
    except CobraError as exc:
        # the user's input: a verdict, not a crash (run_sweep_trial hands it to the driver)
        mlflow_reporter.set_tags({tag.FAILURE: str(exc)[:500]})
        mlflow_reporter.close("FAILED")
        raise
    except BaseException as exc:
        # Ray may retry this attempt from its checkpoint: record the crash, not a verdict
        mlflow_reporter.set_tags({tag.LAST_CRASH: f"{type(exc).__name__}: {exc}"[:500]})
        mlflow_reporter.close("FAILED")
        raise
    mlflow_reporter.log_artifact(layout.config, None)
    _log_weights(mlflow_reporter, layout)
    mlflow_reporter.set_tags({tag.NOTE: trial_note(metrics)})
    ray_reporter.final_report()
    mlflow_reporter.close("FINISHED")
