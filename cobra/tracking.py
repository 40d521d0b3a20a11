"""MLflow tracking for sweeps: the one module of the project that imports mlflow.

Everything goes through `MlflowClient(uri)` with explicit run ids, never mlflow's global "active
run", so the same calls work from the driver and from Ray worker processes. Run structure:

    experiment
      <sweep_name>            cobra.kind=sweep, cobra.metric, cobra.mode, artifact: the sweep YAML
        <trial run name>      cobra.kind=trial, mlflow.parentRunId, ray_trial_id, params, metrics,
                              artifacts: config.yaml, checkpoints/last.pt, pictures/
      final-<trial run name>  cobra.kind=final, source_run_id
"""

from __future__ import annotations

import base64
import contextlib
import functools
import json
import logging
import math
import numbers
import os
import posixpath
import re
import shutil
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, Run, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from cobra.errors import TrackingError
from cobra.reporting import Reporter

# MLflow's own limits (mlflow.utils.validation); exceeding them makes log_batch fail outright.
MAX_PARAMS_PER_BATCH = 100
MAX_METRICS_PER_BATCH = 1000
MAX_PARAM_VALUE = 6000
MAX_TAG_VALUE = 8000

# Metric values keep this many decimals (mIoU in %, losses, mAP): what a reader can use.
METRIC_DECIMALS = 4

KIND_TAG = "cobra.kind"
SWEEP_TAG = "cobra.sweep"
METRIC_TAG = "cobra.metric"
MODE_TAG = "cobra.mode"
BEST_TAG = "cobra.best_run_id"
FAILURE_TAG = "cobra.failure"
PARENT_TAG = "mlflow.parentRunId"
RUN_NAME_TAG = "mlflow.runName"
TRIAL_ID_TAG = "ray_trial_id"
SOURCE_TAG = "source_run_id"
NOTE_TAG = "mlflow.note.content"
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
SYSTEM_METRICS_ENV = "COBRA_SYSTEM_METRICS"
SYSTEM_METRICS_INTERVAL_S = 10

# Bounds applied to mlflow's HTTP client in processes that log to a server: its defaults retry a
# dead server for minutes, which would hang a trial instead of failing it.
HTTP_ENV_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
                     "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}
# How long a finishing trial waits for an absent server to come back before it fails.
FLUSH_TIMEOUT_ENV = "COBRA_MLFLOW_FLUSH_TIMEOUT_S"

# A fresh sqlite store announces its schema set-up on stderr; users need one line, not three.
for _noisy in ("mlflow.store.db.utils", "alembic.runtime.migration"):
    logging.getLogger(_noisy).setLevel(logging.WARNING)

_BAD_KEY_CHARS = re.compile(r"[^A-Za-z0-9_\-. /]")


# ----------------------------------------------------------------------------------------------
# Store location and reachability


def resolve_tracking_uri() -> str:
    """`MLFLOW_TRACKING_URI` if set, else an absolute sqlite store `./mlflow.db`."""
    uri = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    return uri or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def redact(text: str, uri: str) -> str:
    """`text` with the password of `uri` (scheme://user:PASSWORD@host) replaced by ***: secrets
    in MLFLOW_TRACKING_URI never reach a terminal, a log or a JSON line."""
    try:
        password = urllib.parse.urlsplit(uri).password
    except ValueError:  # not a URL at all: nothing to hide
        password = None
    return text.replace(f":{password}@", ":***@").replace(password, "***") if password else text


def _is_http(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def _sqlite_path(uri: str) -> Path | None:
    """The database file of a `sqlite:///` URI (None for in-memory stores or other schemes)."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///"):].split("?", 1)[0]
    if not path or path == ":memory:":
        return None
    return Path(path)


def _http_health(uri: str, timeout_s: float) -> str | None:
    """None when `{uri}/health` answers 200, else the reason it did not."""
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout_s) as resp:
            return None if resp.status == 200 else f"HTTP {resp.status}"
    except urllib.error.HTTPError as exc:
        return f"HTTP {exc.code}"
    except urllib.error.URLError as exc:
        return str(exc.reason)
    except Exception as exc:  # timeouts, resets, bad URLs: all mean "not usable"
        return f"{type(exc).__name__}: {exc}"


def _http_login(uri: str, timeout_s: float) -> str | None:
    """None when the server takes this process's credentials (or needs none), else what it said.

    /health answers without a login on a basic-auth server, so a wrong or missing
    MLFLOW_TRACKING_USERNAME/PASSWORD would otherwise surface only after Ray started. Sends the
    same Basic header mlflow's client sends; the password itself is never part of the answer."""
    request = urllib.request.Request(
        f"{uri.rstrip('/')}/api/2.0/mlflow/experiments/search?max_results=1")
    user = os.environ.get("MLFLOW_TRACKING_USERNAME")
    password = os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if user and password:
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s):
            return None
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):
            who = f"user {user!r}" if user and password else "no login"
            return (f"MLflow server {uri} refused {who} (HTTP {exc.code}); set "
                    f"MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD to an account it knows")
        return None  # other answers are the tracking calls' business, not a login problem
    except Exception:  # the server went away since /health: reported by the tracking calls
        return None


def _bounded(call, timeout_s: float, late: str) -> str | None:
    """call() in a thread, given timeout_s + 1 s: urllib's socket timeout does not bound a slow
    DNS lookup."""
    result: list[str | None] = []
    worker = threading.Thread(target=lambda: result.append(call()), daemon=True)
    worker.start()
    worker.join(timeout_s + 1.0)
    return result[0] if result else late


def check_reachable(uri: str, timeout_s: float = 5.0) -> None:
    """Fail fast (TrackingError) before any trial starts when the tracking store is unusable."""
    if _is_http(uri):
        # Not the mlflow client: it retries an unreachable server for minutes.
        reason = _bounded(lambda: _http_health(uri, timeout_s), timeout_s,
                          f"no answer within {timeout_s:g}s")
        if reason is not None:
            raise TrackingError(redact(
                f"MLflow server {uri} is unreachable ({reason}); start it (mlflow server ...) "
                f"or unset MLFLOW_TRACKING_URI to use the local store", uri))
        refused = _bounded(lambda: _http_login(uri, timeout_s), timeout_s, None)
        if refused is not None:
            raise TrackingError(redact(refused, uri))
        return
    db = _sqlite_path(uri)
    if db is not None:
        parent = db.expanduser().resolve().parent
        if not parent.is_dir():
            raise TrackingError(f"MLflow store {uri}: directory {parent} does not exist; "
                                f"create it or point MLFLOW_TRACKING_URI elsewhere")
        if not os.access(parent, os.W_OK):
            raise TrackingError(f"MLflow store {uri}: directory {parent} is not writable; "
                                f"fix its permissions or point MLFLOW_TRACKING_URI elsewhere")
    try:
        MlflowClient(uri).search_experiments(max_results=1)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TrackingError(redact(f"MLflow store {uri} cannot be opened ({first}); fix "
                                   f"MLFLOW_TRACKING_URI or unset it to use ./mlflow.db", uri)
                            ) from None


def _client(uri: str) -> MlflowClient:
    if _is_http(uri):
        for key, value in HTTP_ENV_DEFAULTS.items():
            os.environ.setdefault(key, value)  # the user's own setting wins
    return MlflowClient(uri)


# ----------------------------------------------------------------------------------------------
# Experiments and runs


def _artifact_location(uri: str, name: str) -> str | None:
    """Artifacts of a sqlite store live next to the database, not in the caller's cwd."""
    db = _sqlite_path(uri)
    if db is None:
        return None  # servers and file stores choose their own artifact root
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", name) or "experiment"
    return (db.expanduser().resolve().parent / "mlartifacts" / safe).as_uri()


def get_or_create_experiment(uri: str, name: str) -> str:
    """The id of experiment `name`, created (or restored from deletion) when needed."""
    client = _client(uri)
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            client.restore_experiment(exp.experiment_id)
        return exp.experiment_id
    try:
        # the experiment's kind is model development, not GenAI (MLflow 3.17's UI still opens
        # in its GenAI workspace until a user picks "Model training": see the README)
        return client.create_experiment(name, artifact_location=_artifact_location(uri, name),
                                        tags={EXPERIMENT_KIND_TAG: "custom_model_development"})
    except MlflowException:
        # Another process (a parallel trial) created it between our lookup and create.
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def _experiment_id(client: MlflowClient, uri: str, name: str) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is None or exp.lifecycle_stage == "deleted":
        raise TrackingError(f"experiment '{name}' not found in {redact(uri, uri)}; check "
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


def _str_tags(tags: Mapping[str, Any] | None) -> dict[str, str]:
    return {str(k): str(v)[:MAX_TAG_VALUE] for k, v in (tags or {}).items()}


def _sweep_runs(client: MlflowClient, experiment_id: str) -> list[Run]:
    """Sweep parent runs, newest first."""
    return _search_all(client, [experiment_id], f"tags.`{KIND_TAG}` = 'sweep'",
                       ["attributes.start_time DESC"])


def start_sweep_run(uri: str, experiment: str, sweep_name: str, sweep_file: Path, metric: str,
                    mode: str, tags: dict | None = None) -> str:
    """Create the sweep's parent run, log the sweep YAML to it, and return its id."""
    client = _client(uri)
    exp_id = get_or_create_experiment(uri, experiment)
    all_tags = {**source_tags(), **_str_tags(tags), KIND_TAG: "sweep", SWEEP_TAG: sweep_name,
                METRIC_TAG: metric, MODE_TAG: mode}
    run = client.create_run(exp_id, tags=all_tags, run_name=sweep_name)
    client.log_artifact(run.info.run_id, str(sweep_file))
    return run.info.run_id


def find_sweep_run(uri: str, experiment: str, sweep_name: str) -> str | None:
    """The latest parent run of sweep `sweep_name` (for resume), or None."""
    client = _client(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return None
    # Filtered here rather than in the filter string: sweep names may hold quotes.
    for run in _sweep_runs(client, exp.experiment_id):
        if run.data.tags.get(SWEEP_TAG) == sweep_name:
            return run.info.run_id
    return None


def _children(client: MlflowClient, parent: Run) -> list[Run]:
    """Child runs of `parent`, oldest first (run ids are hex, safe to quote)."""
    return _search_all(client, [parent.info.experiment_id],
                       f"tags.`{PARENT_TAG}` = '{parent.info.run_id}'",
                       ["attributes.start_time ASC"])


def _get_run(client: MlflowClient, uri: str, run_id: str) -> Run:
    try:
        return client.get_run(run_id)
    except MlflowException as exc:
        raise TrackingError(f"run {run_id} not found in {redact(uri, uri)}; check the run id "
                            f"(`launch.py sweep-report` lists a sweep's runs)") from exc


def start_trial_run(uri: str, experiment: str, parent_run_id: str, run_name: str,
                    tags: dict) -> str:
    """Create a child run of the sweep's parent and return its id."""
    client = _client(uri)
    parent = _get_run(client, uri, parent_run_id)
    # Children go to the parent's experiment whatever `experiment` says: MLflow only nests
    # runs of one experiment.
    del experiment
    all_tags = {**source_tags(), **_str_tags(tags), PARENT_TAG: parent_run_id, KIND_TAG: "trial",
                SWEEP_TAG: parent.data.tags.get(SWEEP_TAG, "")}
    run = client.create_run(parent.info.experiment_id, tags=all_tags, run_name=run_name)
    return run.info.run_id


def find_trial_run(uri: str, parent_run_id: str, ray_trial_id: str) -> str | None:
    """The newest child of `parent_run_id` made for Ray trial `ray_trial_id`, or None."""
    client = _client(uri)
    parent = _get_run(client, uri, parent_run_id)
    matches = [r for r in _children(client, parent)
               if r.data.tags.get(TRIAL_ID_TAG) == str(ray_trial_id)]
    return matches[-1].info.run_id if matches else None


def reopen_run(uri: str, run_id: str) -> None:
    """Mark a run RUNNING again: a retried trial or a resumed sweep continues its own run."""
    _client(uri).update_run(run_id, status="RUNNING")


def finish_sweep(uri: str, parent_run_id: str, best_run_id: str | None,
                 best_value: float | None, metric: str, status: str = "FINISHED") -> None:
    """Record the sweep's best trial on its parent run and end the parent."""
    reporter = MlflowReporter(uri, parent_run_id)
    if best_run_id:
        reporter.set_tags({BEST_TAG: best_run_id})
    if best_value is not None:
        reporter.log_summary({f"best_{metric}": best_value})
    reporter.close(status)


def start_final_run(uri: str, experiment: str, source: TrialRecord) -> str:
    """Create the run that retrains / evaluates the chosen trial, and return its id."""
    client = _client(uri)
    exp_id = get_or_create_experiment(uri, experiment)
    tags = {**source_tags(), KIND_TAG: "final", SOURCE_TAG: source.run_id}
    if SWEEP_TAG in source.tags:
        tags[SWEEP_TAG] = source.tags[SWEEP_TAG]
    run = client.create_run(exp_id, tags=tags, run_name=f"final-{source.run_name}")
    return run.info.run_id


# ----------------------------------------------------------------------------------------------
# Logging


def sanitize_key(key: str) -> str:
    """A metric/param name MLflow accepts: disallowed characters become `_`."""
    out = _BAD_KEY_CHARS.sub("_", str(key))
    # MLflow also rejects names that change under path normalisation ("a//b", "/a", "./a").
    norm = posixpath.normpath(out) if out else ""
    if norm != out or norm == "." or out.startswith(("/", "..")):
        out = out.replace("/", "_")
        if out.startswith("."):
            out = "_" + out
    return out or "_"


def _as_float(value: Any) -> float | None:
    """A finite float, or None for non-numbers, bools and NaN/inf (MLflow cannot chart them)."""
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 1) == 0:
        value = value.item()  # numpy / torch scalars
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _chunks(items: list, size: int) -> Iterable[list]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


class MlflowReporter(Reporter):
    """Reporter hooks logged to one MLflow run, by id."""

    def __init__(self, uri: str, run_id: str, resumed: bool = False,
                 system_metrics: bool = False) -> None:
        self.uri = uri
        self.run_id = run_id
        self.client = _client(uri)
        self._monitor = _start_system_metrics(uri, run_id, resumed) if system_metrics else None
        self._params: dict[str, str] | None = None  # what the run already holds, loaded lazily
        # A restarted trial replays the epoch it was in when it died (resume is exact, so the
        # values are the same); (key, step) pairs the run already holds are not logged twice.
        self._logged_steps: dict[str, set[int]] | None = None if resumed else {}
        # Metrics the store could not take yet (server away): kept in order and sent first on
        # the next call, so training goes on through an outage and nothing is dropped.
        self._pending: list[Metric] = []

    def _logged_params(self) -> dict[str, str]:
        if self._params is None:
            self._params = dict(self.client.get_run(self.run_id).data.params)
        return self._params

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log params in batches; identical re-logs (retried trials) are skipped."""
        wanted = {sanitize_key(k): ("None" if v is None else str(v))[:MAX_PARAM_VALUE]
                  for k, v in params.items()}
        logged = self._logged_params()
        self._raise_on_changed(wanted, logged)
        todo = [Param(k, v) for k, v in wanted.items() if k not in logged]
        for batch in _chunks(todo, MAX_PARAMS_PER_BATCH):
            try:
                self.client.log_batch(self.run_id, params=batch)
            except MlflowException:
                # Another process may have logged some of them meanwhile: fine when identical.
                self._params = None
                logged = self._logged_params()
                self._raise_on_changed(wanted, logged)
                rest = [p for p in batch if p.key not in logged]
                if rest:
                    self.client.log_batch(self.run_id, params=rest)
            logged.update({p.key: p.value for p in batch})

    def _raise_on_changed(self, wanted: Mapping[str, str], logged: Mapping[str, str]) -> None:
        for key, value in wanted.items():
            if key in logged and logged[key] != value:
                raise TrackingError(
                    f"param '{key}' of MLflow run {self.run_id} was logged as "
                    f"'{logged[key][:80]}' and now as '{value[:80]}'; a resumed trial must keep "
                    f"its config - start a new run instead of reusing this one")

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Finite numeric metrics at `step` (0 when None); keys sanitized for MLflow."""
        now = int(time.time() * 1000)
        clean: dict[str, float] = {}
        for key, value in metrics.items():
            number = _as_float(value)
            if number is not None:
                # dict: collisions after sanitizing dedupe; rounded: 56.71234891 is float noise
                clean[sanitize_key(key)] = round(number, METRIC_DECIMALS)
        seen = self._steps_on_record()
        fresh = [Metric(k, v, now, int(step or 0)) for k, v in clean.items()
                 if int(step or 0) not in seen.get(k, ())]
        self._pending += fresh
        self._flush()

    def _steps_on_record(self) -> dict[str, set[int]]:
        if self._logged_steps is None:
            keys = self.client.get_run(self.run_id).data.metrics
            self._logged_steps = {k: {m.step for m in self.client.get_metric_history(
                self.run_id, k)} for k in keys}
        return self._logged_steps

    def _flush(self) -> bool:
        """Send buffered metrics; False (and keep them) while the store is unreachable."""
        while self._pending:
            batch = self._pending[:MAX_METRICS_PER_BATCH]
            try:
                self.client.log_batch(self.run_id, metrics=batch)
            except Exception:  # connection refused, timeouts, 5xx: the store is away
                return False
            del self._pending[: len(batch)]
        return True

    def _wait_for_store(self, action: str) -> None:
        """Before the run's last writes: retry buffered metrics until the store is back, or fail
        the trial with the reason (its metrics stay in the run directory's metrics.jsonl)."""
        deadline = time.time() + float(os.environ.get(FLUSH_TIMEOUT_ENV, "300"))
        while not self._flush():
            if time.time() > deadline:
                raise TrackingError(
                    f"MLflow store {redact(self.uri, self.uri)} unreachable while {action}; "
                    f"{len(self._pending)} "
                    f"metric values of run {self.run_id} are only in the run directory's "
                    f"metrics.jsonl - bring the server back and resume the sweep")
            time.sleep(2.0)

    def log_epoch(self, epoch: int, metrics: Mapping[str, float],
                  checkpoint: Path | None = None) -> None:
        """Epoch metrics at step=epoch; checkpoints are uploaded once at the end, not here."""
        self.log_metrics(metrics, step=epoch)

    def log_artifact(self, path: Path, subdir: str | None = None) -> None:
        """Upload a file (or a directory's contents) under `subdir`."""
        path = Path(path)
        self._wait_for_store(f"uploading {path.name}")
        if path.is_dir():
            self.client.log_artifacts(self.run_id, str(path), artifact_path=subdir)
        else:
            self.client.log_artifact(self.run_id, str(path), artifact_path=subdir)

    def log_summary(self, metrics: Mapping[str, Any]) -> None:
        """Headline metrics, without a step."""
        self.log_metrics(metrics)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Set run tags (values stringified, truncated to MLflow's limit)."""
        entries = [RunTag(k, v) for k, v in _str_tags(tags).items()]
        for batch in _chunks(entries, MAX_PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, tags=batch)

    def log_table(self, columns: Mapping[str, list], artifact_file: str) -> None:
        """A table artifact MLflow's UI renders (and compares across runs)."""
        import pandas as pd

        self._wait_for_store(f"uploading {artifact_file}")
        self.client.log_table(self.run_id, pd.DataFrame(dict(columns)), artifact_file)

    def log_text(self, text: str, artifact_file: str) -> None:
        """Store `text` as the artifact `artifact_file` (e.g. failure.txt)."""
        self.client.log_text(self.run_id, text, artifact_file)

    def close(self, status: str = "FINISHED") -> None:
        """End the run with FINISHED, FAILED or KILLED (after every buffered metric is in)."""
        if self._monitor is not None:
            self._monitor.finish()
            self._monitor = None
        self._wait_for_store("ending the run")
        self.client.set_terminated(self.run_id, status)


def _start_system_metrics(uri: str, run_id: str, resumed: bool):
    """MLflow's CPU / memory / disk / network (and GPU) charts for a run, sampled every
    SYSTEM_METRICS_INTERVAL_S in a thread; None where psutil is missing or
    COBRA_SYSTEM_METRICS=0 (a run must never fail for want of them)."""
    if os.environ.get(SYSTEM_METRICS_ENV, "1") == "0":
        return None
    try:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        monitor = SystemMetricsMonitor(run_id, sampling_interval=SYSTEM_METRICS_INTERVAL_S,
                                       resume_logging=resumed, tracking_uri=uri)
        monitor.start()
        return monitor
    except Exception:  # psutil absent, or the monitor cannot start here
        return None


@functools.lru_cache(maxsize=1)
def source_tags() -> dict[str, str]:
    """Who ran it and from which commit: the tags MLflow's UI shows as User and Source. Read
    once per process (two git calls): a reused Ray worker starts many trials. Not mutated by
    callers, which unpack it."""
    import getpass
    import subprocess

    root = Path(__file__).resolve().parent.parent
    tags = {"mlflow.source.type": "LOCAL", "mlflow.source.name": "launch.py"}
    with contextlib.suppress(Exception):  # no login name (some containers)
        tags["mlflow.user"] = getpass.getuser()
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"],
                                capture_output=True, text=True, timeout=5)
        if commit.returncode == 0:
            tags["mlflow.source.git.commit"] = commit.stdout.strip()
            dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain",
                                    "--untracked-files=no"], capture_output=True, text=True,
                                   timeout=5)
            tags["cobra.source.dirty"] = str(bool(dirty.stdout.strip())).lower()
    except (OSError, subprocess.SubprocessError):  # no git here: a wheel install
        pass
    return tags


def log_dataset_inputs(uri: str, run_id: str, splits: Iterable[Mapping[str, Any]]) -> None:
    """Record the dataset splits a run read (MLflow's Datasets column): each mapping has
    name, context (train / validation / scored), source, digest and num_images."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    inputs = []
    for split in splits:
        profile = json.dumps({"num_images": split["num_images"]})
        dataset = Dataset(name=str(split["name"]), digest=str(split["digest"])[:36],
                          source_type="local", source=json.dumps({"uri": str(split["source"])}),
                          profile=profile)
        inputs.append(DatasetInput(dataset, tags=[InputTag("mlflow.data.context",
                                                           str(split["context"]))]))
    _client(uri).log_inputs(run_id, datasets=inputs)


def set_description(uri: str, run_id: str, markdown: str) -> None:
    """The run's description (MLflow renders markdown, links included)."""
    MlflowReporter(uri, run_id).set_tags({NOTE_TAG: markdown})


def run_link(uri: str, run_id: str, text: str | None = None) -> str:
    """A markdown link to a run that works inside the MLflow UI (a route of its app)."""
    run = _get_run(_client(uri), uri, run_id)
    label = text or run.info.run_name or run_id
    return f"[{label}](#/experiments/{run.info.experiment_id}/runs/{run_id})"


def log_torch_model(uri: str, run_id: str, model, artifact_path: str, registered_name: str,
                    pip_requirements: list[str]) -> str:
    """Save `model` as an MLflow PyTorch model (MLmodel + pickled module: loads with
    `mlflow.pytorch.load_model("models:/<name>/<version>")`), upload it to the run and register
    it. Returns what happened: `registered <name> v<N>`, or why it was not registered (a file
    store has no model registry; the model stays logged with the run)."""
    import mlflow.pytorch

    client = _client(uri)
    with tempfile.TemporaryDirectory(prefix="cobra-model-") as tmp:
        model_dir = Path(tmp) / artifact_path.rsplit("/", 1)[-1]
        # pickle: the models hold data-dependent control flow that a pt2 trace would freeze;
        # mlflow warns about pickle on every save, which says nothing new here
        quiet = logging.getLogger("mlflow.pytorch")
        level, quiet.level = quiet.level, logging.ERROR
        try:
            mlflow.pytorch.save_model(model, str(model_dir), serialization_format="pickle",
                                      pip_requirements=pip_requirements)
        finally:
            quiet.setLevel(level)
        client.log_artifacts(run_id, str(model_dir), artifact_path=artifact_path)
    try:
        try:
            client.create_registered_model(registered_name)
        except MlflowException as exc:
            if "RESOURCE_ALREADY_EXISTS" not in str(exc.error_code):
                raise
        version = client.create_model_version(registered_name, f"runs:/{run_id}/{artifact_path}",
                                              run_id=run_id)
        return f"registered {registered_name} v{version.version}"
    except Exception as exc:  # file stores: "Model Registry is not supported"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return f"not registered: this store has no model registry ({first[:200]})"


# ----------------------------------------------------------------------------------------------
# Reading sweeps back


@dataclass
class TrialRecord:
    """One run as read back from MLflow: params as strings, latest value of each metric."""

    run_id: str
    run_name: str
    params: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    status: str = ""
    tags: dict[str, str] = field(default_factory=dict)


def _record(run: Run) -> TrialRecord:
    return TrialRecord(run_id=run.info.run_id, run_name=run.info.run_name or run.info.run_id,
                       params=dict(run.data.params), metrics=dict(run.data.metrics),
                       status=run.info.status, tags=dict(run.data.tags))


def get_trial(uri: str, run_id: str) -> TrialRecord:
    """One run by id."""
    return _record(_get_run(_client(uri), uri, run_id))


def list_trials(uri: str, experiment: str,
                sweep_name: str | None) -> tuple[str, list[TrialRecord]]:
    """The sweep's parent run id (newest sweep when `sweep_name` is None) and its child runs."""
    client = _client(uri)
    exp_id = _experiment_id(client, uri, experiment)
    sweeps = _sweep_runs(client, exp_id)
    if not sweeps:
        raise TrackingError(f"experiment '{experiment}' holds no sweep; run `launch.py sweep` "
                            f"first or check --experiment")
    if sweep_name is None:
        parent = sweeps[0]
    else:
        named = [r for r in sweeps if r.data.tags.get(SWEEP_TAG) == sweep_name]
        if not named:
            names = sorted({r.data.tags.get(SWEEP_TAG, "?") for r in sweeps})
            raise TrackingError(f"sweep '{sweep_name}' not found in experiment '{experiment}' "
                                f"(available: {', '.join(names)}); check the sweep name")
        parent = named[0]
    return parent.info.run_id, [_record(r) for r in _children(client, parent)]


def trials_of(uri: str, parent_run_id: str) -> list[TrialRecord]:
    """The child runs of one sweep parent run, oldest first."""
    client = _client(uri)
    return [_record(r) for r in _children(client, _get_run(client, uri, parent_run_id))]


def best_trial(uri: str, experiment: str, sweep_name: str | None = None,
               run_id: str | None = None, metric: str | None = None,
               mode: str | None = None) -> TrialRecord:
    """The run `run_id`, or the sweep's best FINISHED trial by `metric` (default: the sweep's)."""
    if run_id:
        return get_trial(uri, run_id)
    parent_id, trials = list_trials(uri, experiment, sweep_name)
    parent = get_trial(uri, parent_id)
    metric = metric or parent.tags.get(METRIC_TAG)
    mode = mode or parent.tags.get(MODE_TAG, "max")
    if not metric:
        raise TrackingError(f"sweep run {parent_id} records no metric (tag {METRIC_TAG}); "
                            f"pass --metric")
    if mode not in ("max", "min"):
        raise TrackingError(f"mode '{mode}' is not 'max' or 'min'; pass --mode max|min")
    key = sanitize_key(metric)
    scored = [t for t in trials
              if t.status == "FINISHED" and _as_float(t.metrics.get(key)) is not None]
    if not scored:
        raise TrackingError(
            f"sweep '{parent.tags.get(SWEEP_TAG, parent.run_name)}' has no FINISHED trial with "
            f"metric '{metric}' ({len(trials)} trials in all); wait for a trial to finish or "
            f"pick one with --run")
    pick = max if mode == "max" else min
    return pick(scored, key=lambda t: t.metrics[key])


def download_trial(uri: str, run_id: str, dst: Path) -> Path:
    """Fetch a trial's config.yaml and checkpoints/last.pt into `dst` (a run directory)."""
    client = _client(uri)
    _get_run(client, uri, run_id)
    have_ckpt = any(Path(a.path).name == "last.pt"
                    for a in client.list_artifacts(run_id, "checkpoints"))
    if not have_ckpt:
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


def log_files(uri: str, run_id: str, paths: Iterable[Path], subdir: str | None = None) -> None:
    """Upload files to an existing run (e.g. a report to the sweep's parent run)."""
    reporter = MlflowReporter(uri, run_id)
    for path in paths:
        reporter.log_artifact(Path(path), subdir)
