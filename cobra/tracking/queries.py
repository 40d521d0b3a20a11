"""Reading sweeps back from MLflow (which outlives Ray's results directory): a sweep's trials as
plain `TrialRecord`s, the best of them, and the files `launch.py final` continues from."""

import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from unittest import mock

from cobra.errors import TrackingError
from cobra.tracking import tags as tag
from cobra.tracking.mlflow_api import MlflowClient, MlflowException, Run
from cobra.tracking.reporter import as_float, sanitize_key
from cobra.tracking.store import Store, sqlite_path


@dataclass
class TrialRecord:
    """One run as read back from MLflow: params as strings, latest value of each metric."""

    run_id: str
    run_name: str
    params: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    status: str = ""
    tags: dict[str, str] = field(default_factory=dict)
    experiment_id: str = ""
    seconds: float | None = None  # wall time of an ended run


def _record(run: Run) -> TrialRecord:
    return TrialRecord(run_id=run.info.run_id, run_name=run.info.run_name or run.info.run_id,
                       params=dict(run.data.params), metrics=dict(run.data.metrics),
                       status=run.info.status, tags=dict(run.data.tags),
                       experiment_id=run.info.experiment_id, seconds=_seconds(run))


def _seconds(run: Run) -> float | None:
    start, end = run.info.start_time, run.info.end_time
    return (end - start) / 1000.0 if start and end else None


# ----------------------------------------------------------------------------------------------
# Finding runs


def experiment_id(store: Store, name: str) -> str:
    """The id of an existing experiment; TrackingError when there is none by that name."""
    exp = store.client.get_experiment_by_name(name)
    if exp is None or exp.lifecycle_stage == "deleted":
        raise TrackingError(f"experiment '{name}' not found in {store.redacted}; check "
                            f"--experiment or MLFLOW_TRACKING_URI")
    return exp.experiment_id


def _search_all(client: MlflowClient, experiment_ids: list[str], filter_string: str = "",
                order_by: list[str] | None = None) -> list[Run]:
    """Every matching run, following MLflow's pagination."""
    runs: list[Run] = []
    token: str | None = None
    while True:
        page = client.search_runs(experiment_ids, filter_string=filter_string,
                                  max_results=1000, order_by=order_by, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def sweep_runs(client: MlflowClient, exp_id: str) -> list[Run]:
    """Sweep parent runs, newest first."""
    return _search_all(client, [exp_id], f"tags.`{tag.KIND}` = 'sweep'",
                       ["attributes.start_time DESC"])


def children(client: MlflowClient, parent: Run) -> list[Run]:
    """Child runs of `parent`, oldest first (run ids are hex, safe to quote)."""
    return _search_all(client, [parent.info.experiment_id],
                       f"tags.`{tag.PARENT}` = '{parent.info.run_id}'",
                       ["attributes.start_time ASC"])


def get_run(store: Store, run_id: str) -> Run:
    """Run `run_id`; TrackingError when the store has no such run."""
    try:
        return store.client.get_run(run_id)
    except MlflowException as exc:
        raise TrackingError(f"run {run_id} not found in {store.redacted}; check the run id (the "
                            f"MLflow UI lists a sweep's trials under its parent run)") from exc


# ----------------------------------------------------------------------------------------------
# Trials


def get_trial(store: Store, run_id: str) -> TrialRecord:
    return _record(get_run(store, run_id))


def list_trials(store: Store, experiment: str,
                sweep_name: str | None) -> tuple[str, list[TrialRecord]]:
    """The sweep's parent run id (newest sweep when `sweep_name` is None) and its child runs."""
    client = store.client
    sweeps = sweep_runs(client, experiment_id(store, experiment))
    if not sweeps:
        raise TrackingError(f"experiment '{experiment}' holds no sweep; run `launch.py sweep` "
                            f"first or check --experiment")
    if sweep_name is None:
        parent = sweeps[0]
    else:
        named = [r for r in sweeps if r.data.tags.get(tag.SWEEP) == sweep_name]
        if not named:
            names = sorted({r.data.tags.get(tag.SWEEP, "?") for r in sweeps})
            raise TrackingError(f"sweep '{sweep_name}' not found in experiment '{experiment}' "
                                f"(available: {', '.join(names)}); check the sweep name")
        parent = named[0]
    return parent.info.run_id, [_record(r) for r in children(client, parent)]


def trials_of(store: Store, parent_run_id: str) -> list[TrialRecord]:
    """The child runs of one sweep parent run, oldest first."""
    return [_record(r) for r in children(store.client, get_run(store, parent_run_id))]


def scored_trials(trials: Sequence[TrialRecord], metric: str) -> list[TrialRecord]:
    """The trials that count: FINISHED (a failed or still running trial's value is not its
    result) with a finite `metric`."""
    key = sanitize_key(metric)
    return [t for t in trials
            if t.status == "FINISHED" and as_float(t.metrics.get(key)) is not None]


def pick_best(trials: Sequence[TrialRecord], metric: str, mode: str) -> TrialRecord | None:
    """The best of the scored trials by `metric` (`mode` max or min), None when none is
    scored. Of equal values the first wins: with `trials` oldest first, the earliest trial.

    The one decision of "best": the sweep's summary (the parent run's best_run_id) and
    `launch.py final --best` both take it, so they never disagree."""
    key = sanitize_key(metric)
    scored = scored_trials(trials, metric)
    if not scored:
        return None
    pick = max if mode == "max" else min
    return pick(scored, key=lambda t: t.metrics[key])


@dataclass
class SweepRecord:
    """One sweep as read back: its parent run, the name, metric and mode it was started with
    (the parent's tags), and its trials oldest first."""

    parent: TrialRecord
    name: str
    metric: str
    mode: str
    trials: list[TrialRecord]


def get_sweep(store: Store, experiment: str, sweep_name: str | None = None,
              metric: str | None = None, mode: str | None = None, remedy: str = "") -> SweepRecord:
    """The sweep `sweep_name` (the newest when None), its metric and mode those its parent
    records unless given; TrackingError (ending in `remedy`) when it records none usable."""
    parent_id, trials = list_trials(store, experiment, sweep_name)
    parent = get_trial(store, parent_id)
    metric = metric or parent.tags.get(tag.METRIC)
    mode = mode or parent.tags.get(tag.MODE, "max")
    if not metric:
        raise TrackingError(f"sweep run {parent_id} records no metric (tag {tag.METRIC}); it "
                            f"was not started by `launch.py sweep`{remedy}")
    if mode not in ("max", "min"):
        raise TrackingError(f"mode '{mode}' (tag {tag.MODE} of sweep run {parent_id}) is not "
                            f"'max' or 'min'{remedy}")
    return SweepRecord(parent, parent.tags.get(tag.SWEEP, parent.run_name), metric, mode, trials)


def best_trial(store: Store, experiment: str, sweep_name: str | None = None,
               run_id: str | None = None, metric: str | None = None,
               mode: str | None = None) -> TrialRecord:
    """The run `run_id`, or the sweep's best FINISHED trial by `metric` (default: the sweep's)."""
    if run_id:
        return get_trial(store, run_id)
    # `launch.py final` has no --metric or --mode: a sweep without them is picked from by --run
    sweep = get_sweep(store, experiment, sweep_name, metric, mode, "; pick a trial with --run")
    best = pick_best(sweep.trials, sweep.metric, sweep.mode)
    if best is None:
        raise TrackingError(f"sweep '{sweep.name}' has no FINISHED trial with metric "
                            f"'{sweep.metric}' ({len(sweep.trials)} trials in all); wait for a "
                            f"trial to finish or pick one with --run")
    return best


def sweeps_with_base(store: Store,
                     parent_run_id: str) -> list[tuple[TrialRecord, list[TrialRecord]]]:
    """The other sweeps of `parent_run_id`'s experiment on the same base config (tag
    BASE_CONFIG), newest first, each with its trials: where seed noise was measured before."""
    client = store.client
    parent = get_run(store, parent_run_id)
    digest = parent.data.tags.get(tag.BASE_CONFIG)
    if not digest:
        return []
    return [(_record(run), [_record(r) for r in children(client, run)])
            for run in sweep_runs(client, parent.info.experiment_id)
            if run.data.tags.get(tag.BASE_CONFIG) == digest
            and run.info.run_id != parent_run_id]


def finished_trial_seconds(store: Store, experiment: str, base_digest: str,
                           stages: str) -> list[float]:
    """Wall seconds of every FINISHED trial of `experiment`'s sweeps on the base config
    `base_digest` (tag BASE_CONFIG) whose trials ran `stages` (the parent's param, e.g.
    "seeds,ir_labels,irn,masks"), oldest sweep last: what the same work took before. Only
    reads: a store or experiment that does not exist yet gives [] and is not created."""
    db = sqlite_path(store.uri)
    if db is not None and not db.expanduser().exists():
        return []  # opening it would create an empty store
    client = store.client
    exp = client.get_experiment_by_name(experiment)
    if exp is None or exp.lifecycle_stage == "deleted":
        return []
    seconds = []
    for parent in sweep_runs(client, exp.experiment_id):
        if (parent.data.tags.get(tag.BASE_CONFIG) != base_digest
                or parent.data.params.get("stages") != stages):
            continue
        seconds += [_seconds(r) for r in children(client, parent)
                    if r.info.status == "FINISHED" and _seconds(r) is not None]
    return seconds


def artifact_bytes(store: Store, run_id: str, path: str) -> bytes | None:
    """The bytes of one artifact file of a run, or None when the run has no such file."""
    client = store.client
    folder, _, name = path.rpartition("/")
    if not any(a.path == path for a in client.list_artifacts(run_id, folder or None)):
        return None
    # a report reads one small file per trial: MLflow's progress bar for each is noise
    with tempfile.TemporaryDirectory(prefix="cobra-artifact-") as tmp, mock.patch.dict(
            os.environ, {"MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}):
        return Path(client.download_artifacts(run_id, path, tmp)).read_bytes()


def artifact_size(store: Store, run_id: str, folder: str) -> int:
    """Bytes of the files directly in a run's artifact folder (what it stores there)."""
    return sum(a.file_size or 0 for a in store.client.list_artifacts(run_id, folder))


def download_trial(store: Store, run_id: str, dst: Path) -> Path:
    """Fetch a trial's config.yaml and checkpoints/last.pt into `dst` (a run directory)."""
    client = store.client
    get_run(store, run_id)
    if not any(Path(a.path).name == "last.pt"
               for a in client.list_artifacts(run_id, "checkpoints")):
        raise TrackingError(f"run {run_id} has no checkpoint artifact (checkpoints/last.pt); "
                            f"it did not finish training — pick another with --run")
    if not any(a.path == "config.yaml" for a in client.list_artifacts(run_id)):
        raise TrackingError(f"run {run_id} has no config.yaml artifact; it was not logged by "
                            f"a CoBra trial — pick another with --run")
    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dst, prefix=".download-") as tmp:
        # Artifact repositories disagree on where a nested file lands (local: basename only,
        # servers: the full relative path), so place each one by the path returned.
        for artifact in ("config.yaml", "checkpoints/last.pt"):
            got = Path(client.download_artifacts(run_id, artifact, tmp))
            target = dst / artifact
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(got), str(target))
    return dst
