"""The run hierarchy's lifecycle: experiments, and the sweep, trial and final runs started,
found again (resume, retry), reopened and finished; what each run says about itself
(description, links, source tags, dataset inputs) and the files and models logged to it."""

import contextlib
import functools
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cobra.tracking import tags as tag
from cobra.tracking.mlflow_api import (
    Metric,
    MlflowClient,
    MlflowException,
    dataset_input,
    log_pytorch_model,
    process_tracking_uri,
)
from cobra.tracking.queries import TrialRecord, children, get_run, sweep_runs
from cobra.tracking.reporter import MlflowReporter, sanitize_key, str_tags
from cobra.tracking.store import Store, sqlite_path

# The checkout whose commit the source tags name.
_SOURCE_ROOT = Path(__file__).resolve().parents[2]


# ----------------------------------------------------------------------------------------------
# Experiments


def _artifact_location(store: Store, name: str) -> str | None:
    """Artifacts of a sqlite store live next to the database, not in the caller's cwd."""
    db = sqlite_path(store.uri)
    if db is None:
        return None  # servers and file stores choose their own artifact root
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", name) or "experiment"
    return (db.expanduser().resolve().parent / "mlartifacts" / safe).as_uri()


def get_or_create_experiment(store: Store, name: str) -> str:
    """The id of experiment `name`, created (or restored from deletion) when needed."""
    client = store.client
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            client.restore_experiment(exp.experiment_id)
        return exp.experiment_id
    try:
        # the experiment's kind is model development, not GenAI (MLflow 3.17's UI still opens
        # in its GenAI workspace until a user picks "Model training": see the README)
        return client.create_experiment(name, artifact_location=_artifact_location(store, name),
                                        tags={tag.EXPERIMENT_KIND: "custom_model_development"})
    except MlflowException:
        # Another process (a parallel trial) created it between our lookup and create.
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


# ----------------------------------------------------------------------------------------------
# Sweep, trial and final runs


def start_sweep_run(store: Store, experiment: str, sweep_name: str, sweep_file: Path, metric: str,
                    mode: str, tags: dict | None = None) -> str:
    """Create the sweep's parent run, log the sweep YAML to it, and return its id."""
    client = store.client
    exp_id = get_or_create_experiment(store, experiment)
    # the experiment's Chart view opens on the metric of its latest sweep
    client.set_experiment_tag(exp_id, tag.PRIMARY_METRIC, metric)
    client.set_experiment_tag(exp_id, tag.PRIMARY_METRIC_GREATER, str(mode == "max").lower())
    all_tags = {**source_tags(), **str_tags(tags), tag.KIND: "sweep", tag.SWEEP: sweep_name,
                tag.METRIC: metric, tag.MODE: mode}
    run = client.create_run(exp_id, tags=all_tags, run_name=sweep_name)
    client.log_artifact(run.info.run_id, str(sweep_file))
    return run.info.run_id


def find_sweep_run(store: Store, experiment: str, sweep_name: str) -> str | None:
    """The latest parent run of sweep `sweep_name` (for resume), or None."""
    client = store.client
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return None
    # Filtered here rather than in the filter string: sweep names may hold quotes.
    for run in sweep_runs(client, exp.experiment_id):
        if run.data.tags.get(tag.SWEEP) == sweep_name:
            return run.info.run_id
    return None


def start_trial_run(store: Store, parent_run_id: str, run_name: str, tags: dict) -> str:
    """Create a child run of the sweep's parent, in the parent's experiment (MLflow nests runs
    of one experiment only), and return its id."""
    client = store.client
    parent = get_run(store, parent_run_id)
    all_tags = {**source_tags(), **str_tags(tags), tag.PARENT: parent_run_id, tag.KIND: "trial",
                tag.SWEEP: parent.data.tags.get(tag.SWEEP, "")}
    run = client.create_run(parent.info.experiment_id, tags=all_tags, run_name=run_name)
    if parent.data.tags.get(tag.METRIC):
        declare_metric(client, run.info.run_id, parent.data.tags[tag.METRIC])
    return run.info.run_id


def declare_metric(client: MlflowClient, run_id: str, metric: str) -> None:
    """Make `metric` the run's first metric, before system metrics and losses: MLflow's
    Compare page plots the selected runs' first shared metric (in logging order) against the
    params that differ, so a sweep's first Compare shows the swept keys against its metric.
    The placeholder is NaN at step -1: no value, and never the latest once the score is in."""
    placeholder = Metric(sanitize_key(metric), float("nan"), int(time.time() * 1000), -1)
    client.log_batch(run_id, metrics=[placeholder])


def find_trial_run(store: Store, parent_run_id: str, ray_trial_id: str) -> str | None:
    """The newest child of `parent_run_id` made for Ray trial `ray_trial_id`, or None."""
    client = store.client
    parent = get_run(store, parent_run_id)
    matches = [r for r in children(client, parent)
               if r.data.tags.get(tag.RAY_TRIAL_ID) == str(ray_trial_id)]
    return matches[-1].info.run_id if matches else None


def reopen_run(store: Store, run_id: str) -> None:
    """Mark a run RUNNING again: a retried trial or a resumed sweep continues its own run."""
    store.client.update_run(run_id, status="RUNNING")


def finish_sweep(store: Store, parent_run_id: str, best_run_id: str | None,
                 best_value: float | None, metric: str, status: str = "FINISHED",
                 cell_mean: float | None = None) -> None:
    """Record the sweep's best on its parent run and end the parent: `best_<metric>` is the
    best cell's mean over its training seeds (`cell_mean`, the value its description heads
    with; the best trial's where not given), `best_trial_<metric>` the best single trial's."""
    reporter = MlflowReporter(store, parent_run_id)
    if best_run_id:
        reporter.set_tags({tag.BEST_RUN: best_run_id})
    summary = {f"best_{metric}": best_value if cell_mean is None else cell_mean,
               f"best_trial_{metric}": best_value}
    reporter.log_summary({k: v for k, v in summary.items() if v is not None})
    reporter.close(status)


def start_final_run(store: Store, experiment: str, source: TrialRecord) -> str:
    """Create the run that retrains / evaluates the chosen trial, and return its id."""
    exp_id = get_or_create_experiment(store, experiment)
    tags = {**source_tags(), tag.KIND: "final", tag.SOURCE_RUN: source.run_id}
    if tag.SWEEP in source.tags:
        tags[tag.SWEEP] = source.tags[tag.SWEEP]
    run = store.client.create_run(exp_id, tags=tags, run_name=f"final-{source.run_name}")
    return run.info.run_id


# ----------------------------------------------------------------------------------------------
# What a run says about itself, and what is logged to it


@functools.lru_cache(maxsize=1)
def source_tags() -> dict[str, str]:
    """Who ran it and from which commit: the tags MLflow's UI shows as User and Source. Read
    once per process (two git calls): a reused Ray worker starts many trials. Not mutated by
    callers, which unpack it."""
    import getpass
    import subprocess

    tags = {tag.SOURCE_TYPE: "LOCAL", tag.SOURCE_NAME: "launch.py"}
    with contextlib.suppress(Exception):  # no login name (some containers)
        tags[tag.USER] = getpass.getuser()
    git = ["git", "-C", str(_SOURCE_ROOT)]
    try:
        commit = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=5)
        if commit.returncode == 0:
            tags[tag.SOURCE_COMMIT] = commit.stdout.strip()
            dirty = subprocess.run([*git, "status", "--porcelain", "--untracked-files=no"],
                                   capture_output=True, text=True, timeout=5)
            tags[tag.SOURCE_DIRTY] = str(bool(dirty.stdout.strip())).lower()
    except (OSError, subprocess.SubprocessError):  # no git here: a wheel install
        pass
    return tags


def log_dataset_inputs(store: Store, run_id: str, splits: Iterable[Mapping[str, Any]]) -> None:
    """Record the dataset splits a run read (MLflow's Datasets column): each mapping has
    name, context (train / validation / scored), source, digest and num_images."""
    inputs = [dataset_input(str(split["name"]), str(split["digest"]), str(split["source"]),
                            split["num_images"], str(split["context"])) for split in splits]
    store.client.log_inputs(run_id, datasets=inputs)


def set_description(store: Store, run_id: str, markdown: str) -> None:
    """The run's description (MLflow renders markdown, links included)."""
    MlflowReporter(store, run_id).set_tags({tag.NOTE: markdown})


def run_link(experiment_id: str, run_id: str, text: str) -> str:
    """A markdown link to a run that works inside the MLflow UI (a route of its app); built
    from what the caller holds, without asking the store."""
    return f"[{text or run_id}](#/experiments/{experiment_id}/runs/{run_id})"


def artifact_link(store: Store, run_id: str, path: str, text: str) -> str:
    """A markdown link to a run's artifact that opens in the MLflow UI's artifact view."""
    run = get_run(store, run_id)
    return f"[{text}](#/experiments/{run.info.experiment_id}/runs/{run_id}/artifacts/{path})"


def log_files(store: Store, run_id: str, paths: Iterable[Path], subdir: str | None = None) -> None:
    """Upload files to an existing run (e.g. a report to the sweep's parent run)."""
    reporter = MlflowReporter(store, run_id)
    for path in paths:
        reporter.log_artifact(Path(path), subdir)


@dataclass(frozen=True)
class ModelVersionInfo:
    """What a registered model version says about itself: where it came from and how good it
    is (MLflow's registry shows the description and tags beside each version)."""

    description: str = ""
    tags: dict[str, str] = field(default_factory=dict)


def log_torch_model(store: Store, run_id: str, model, name: str, registered_name: str,
                    input_example, pip_requirements: list[str], extra_files: list[Path] = (),
                    version: ModelVersionInfo = ModelVersionInfo()) -> str:
    """Log `model` as an MLflow PyTorch model of the run (signature and input example
    included; loads with `mlflow.pytorch.load_model("models:/<name>/<version>")`) and register
    it. Returns what happened: `registered <name> v<N>`, or why it was not registered (a store
    without a model registry; the model stays logged with the run)."""
    client = store.client
    experiment = get_run(store, run_id).info.experiment_id
    with process_tracking_uri(store.uri):
        model_uri, model_id = log_pytorch_model(client, experiment, run_id, model, name,
                                                input_example, pip_requirements,
                                                list(extra_files), str_tags(version.tags))
        try:
            return _register(client, run_id, model_uri, model_id, registered_name, version)
        except Exception as exc:  # file stores: "Model Registry is not supported"
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            return f"not registered: this store has no model registry ({first[:200]})"


def _register(client: MlflowClient, run_id: str, model_uri: str, model_id: str, name: str,
              version: ModelVersionInfo) -> str:
    """A new version of registered model `name` (created on first use) from the logged model."""
    try:
        client.create_registered_model(name)
    except MlflowException as exc:
        if "RESOURCE_ALREADY_EXISTS" not in str(exc.error_code):
            raise
    made = client.create_model_version(name, model_uri, run_id=run_id, tags=str_tags(version.tags),
                                       description=version.description, model_id=model_id)
    return f"registered {name} v{made.version}"
