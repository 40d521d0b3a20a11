"""The reporter interface: how training and stages tell the outside world what happened.

Training code calls these methods and knows nothing else. The file reporter ships here; the sweep
package plugs in Ray and MLflow reporters with the same methods, so training never imports either.
"""

import json
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


class Reporter:
    """Base reporter: every hook is a no-op, so a subclass overrides only what it cares about."""

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Flat dotted config keys and other run settings, once at the start."""

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Scalars (per step or per stage)."""

    def log_epoch(self, epoch: int, metrics: Mapping[str, float],
                  checkpoint: Path | None = None) -> None:
        """End of a training epoch: averages of the epoch's losses, validation metrics, and the
        checkpoint just written (a sweep scheduler may stop the trial or restore from it)."""
        self.log_metrics(metrics, step=epoch)

    def log_artifact(self, path: Path, subdir: str | None = None) -> None:
        """A file (picture, table, checkpoint) worth keeping with the run."""

    def log_summary(self, metrics: Mapping[str, Any]) -> None:
        """Headline metrics of a finished stage (`seed_miou`, `mask_miou`, ...)."""

    def log_table(self, columns: Mapping[str, list], artifact_file: str) -> None:
        """A small table (column name → values), e.g. per-class IoU: one artifact, not one
        metric chart per row."""

    def close(self, status: str = "FINISHED") -> None:
        """The run ended: FINISHED, FAILED or KILLED."""


class FileReporter(Reporter):
    """JSON lines in the run directory: `{"kind": ..., "time": ..., ...}` one per event."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def _write(self, kind: str, **payload: Any) -> None:
        record = {"kind": kind, "time": round(time.time(), 3), **payload}
        with self.path.open("a") as fh:
            fh.write(json.dumps(jsonable(record)) + "\n")

    def log_params(self, params: Mapping[str, Any]) -> None:
        self._write("params", params=dict(params))

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        self._write("metrics", step=step, metrics=dict(metrics))

    def log_epoch(self, epoch: int, metrics: Mapping[str, float],
                  checkpoint: Path | None = None) -> None:
        self._write("epoch", epoch=epoch, metrics=dict(metrics),
                    checkpoint=str(checkpoint) if checkpoint else None)

    def log_artifact(self, path: Path, subdir: str | None = None) -> None:
        self._write("artifact", path=str(path), subdir=subdir)

    def log_summary(self, metrics: Mapping[str, Any]) -> None:
        self._write("summary", metrics=dict(metrics))

    def log_table(self, columns: Mapping[str, list], artifact_file: str) -> None:
        self._write("table", artifact_file=artifact_file, columns=dict(columns))

    def close(self, status: str = "FINISHED") -> None:
        self._write("end", status=status)


class MultiReporter(Reporter):
    """Fan every call out to several reporters, in order."""

    def __init__(self, reporters: Sequence[Reporter]) -> None:
        self.reporters = list(reporters)

    def log_params(self, params: Mapping[str, Any]) -> None:
        for r in self.reporters:
            r.log_params(params)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        for r in self.reporters:
            r.log_metrics(metrics, step)

    def log_epoch(self, epoch: int, metrics: Mapping[str, float],
                  checkpoint: Path | None = None) -> None:
        for r in self.reporters:
            r.log_epoch(epoch, metrics, checkpoint)

    def log_artifact(self, path: Path, subdir: str | None = None) -> None:
        for r in self.reporters:
            r.log_artifact(path, subdir)

    def log_summary(self, metrics: Mapping[str, Any]) -> None:
        for r in self.reporters:
            r.log_summary(metrics)

    def log_table(self, columns: Mapping[str, list], artifact_file: str) -> None:
        for r in self.reporters:
            r.log_table(columns, artifact_file)

    def close(self, status: str = "FINISHED") -> None:
        for r in self.reporters:
            r.close(status)


def jsonable(obj: Any) -> Any:
    """NaN/inf become null (strict JSON), numpy scalars become Python numbers."""
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "ndim", 1) == 0:
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


class PrefixedReporter(Reporter):
    """Metric names prefixed (`final/seed_miou`): a run whose scores must not be read as another
    kind's (the final stage scores every image, a trial a sample) shows them under its own names.
    Params, artifacts and tables pass through unchanged."""

    def __init__(self, inner: Reporter, prefix: str) -> None:
        self.inner = inner
        self.prefix = prefix

    def _named(self, metrics: Mapping[str, Any]) -> dict[str, Any]:
        return {f"{self.prefix}{k}": v for k, v in metrics.items()}

    def log_params(self, params: Mapping[str, Any]) -> None:
        self.inner.log_params(params)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        self.inner.log_metrics(self._named(metrics), step)

    def log_epoch(self, epoch: int, metrics: Mapping[str, float],
                  checkpoint: Path | None = None) -> None:
        self.inner.log_epoch(epoch, self._named(metrics), checkpoint)

    def log_artifact(self, path: Path, subdir: str | None = None) -> None:
        self.inner.log_artifact(path, subdir)

    def log_summary(self, metrics: Mapping[str, Any]) -> None:
        self.inner.log_summary(self._named(metrics))

    def log_table(self, columns: Mapping[str, list], artifact_file: str) -> None:
        self.inner.log_table(columns, artifact_file)

    def close(self, status: str = "FINISHED") -> None:
        self.inner.close(status)
