"""`MlflowReporter`: the training code's Reporter hooks logged to one MLflow run, by id.

It buffers what a store that is away (a restarting server) cannot take yet, so training goes on
through an outage, and it skips what a restarted trial logs a second time."""

import math
import numbers
import os
import posixpath
import re
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from cobra.errors import TrackingError
from cobra.reporting import Reporter
from cobra.tracking.mlflow_api import (
    MAX_METRICS_PER_BATCH,
    MAX_PARAM_VALUE,
    MAX_PARAMS_PER_BATCH,
    MAX_TAG_VALUE,
    Metric,
    MlflowException,
    Param,
    RunTag,
    system_metrics_monitor,
)
from cobra.tracking.store import Store

# Metric values keep this many decimals (mIoU in %, losses, mAP): what a reader can use.
METRIC_DECIMALS = 4
SYSTEM_METRICS_ENV = "COBRA_SYSTEM_METRICS"
SYSTEM_METRICS_INTERVAL_S = 10
# How long a finishing trial waits for an absent server to come back before it fails.
FLUSH_TIMEOUT_ENV = "COBRA_MLFLOW_FLUSH_TIMEOUT_S"

_BAD_KEY_CHARS = re.compile(r"[^A-Za-z0-9_\-. /]")


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


def as_float(value: Any) -> float | None:
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


def str_tags(tags: Mapping[str, Any] | None) -> dict[str, str]:
    """Tag values as MLflow stores them: strings, truncated to its limit."""
    return {str(k): str(v)[:MAX_TAG_VALUE] for k, v in (tags or {}).items()}


class MlflowReporter(Reporter):
    def __init__(self, store: Store, run_id: str, resumed: bool = False,
                 system_metrics: bool = False) -> None:
        self.store = store
        self.run_id = run_id
        self.client = store.client
        self._monitor = (_start_system_metrics(store.uri, run_id, resumed) if system_metrics
                         else None)
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
            number = as_float(value)
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
                    f"MLflow store {self.store.redacted} unreachable while {action}; "
                    f"{len(self._pending)} metric values of run {self.run_id} are only in the run "
                    "directory's metrics.jsonl - bring the server back and resume the sweep")
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
        self.log_metrics(metrics)  # without a step

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Set run tags (values stringified, truncated to MLflow's limit)."""
        entries = [RunTag(k, v) for k, v in str_tags(tags).items()]
        for batch in _chunks(entries, MAX_PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, tags=batch)

    def log_table(self, columns: Mapping[str, list], artifact_file: str) -> None:
        """A table artifact MLflow's UI renders (and compares across runs)."""
        import pandas as pd

        self._wait_for_store(f"uploading {artifact_file}")
        self.client.log_table(self.run_id, pd.DataFrame(dict(columns)), artifact_file)

    def log_text(self, text: str, artifact_file: str) -> None:
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
        return system_metrics_monitor(uri, run_id, SYSTEM_METRICS_INTERVAL_S, resumed)
    except Exception:  # psutil absent, or the monitor cannot start here
        return None
