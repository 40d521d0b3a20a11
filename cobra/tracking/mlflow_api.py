"""The whole MLflow surface CoBra uses: the one module of the project that imports mlflow.

The rest of `cobra.tracking` takes its client, entities and exception from here, so a reader (or
an MLflow upgrade) sees every MLflow name CoBra depends on in this file. The optional parts
(system metrics, PyTorch model flavour, dataset entities) are imported where they are used:
most processes never need them."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from mlflow.entities import Metric, Param, Run, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from cobra.tracking import tags

__all__ = ["MAX_METRICS_PER_BATCH", "MAX_PARAMS_PER_BATCH", "MAX_PARAM_VALUE", "MAX_TAG_VALUE",
           "Metric", "MlflowClient", "MlflowException", "Param", "Run", "RunTag", "dataset_input",
           "save_pytorch_model", "system_metrics_monitor"]

# MLflow's own limits (mlflow.utils.validation); exceeding them makes log_batch fail outright.
MAX_PARAMS_PER_BATCH = 100
MAX_METRICS_PER_BATCH = 1000
MAX_PARAM_VALUE = 6000
MAX_TAG_VALUE = 8000

# A fresh sqlite store announces its schema set-up on stderr; users need one line, not three.
for _noisy in ("mlflow.store.db.utils", "alembic.runtime.migration"):
    logging.getLogger(_noisy).setLevel(logging.WARNING)


def system_metrics_monitor(uri: str, run_id: str, interval_s: float, resumed: bool):
    """MLflow's CPU / memory / disk / network (and GPU) sampler for a run, started; raises where
    it cannot run here (psutil absent)."""
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    monitor = SystemMetricsMonitor(run_id, sampling_interval=interval_s,
                                   resume_logging=resumed, tracking_uri=uri)
    monitor.start()
    return monitor


def dataset_input(name: str, digest: str, source: str, num_images: int, context: str):
    """One entry of a run's Datasets column: a local dataset split and how the run used it."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    dataset = Dataset(name=name, digest=digest[:36], source_type="local",
                      source=json.dumps({"uri": source}),
                      profile=json.dumps({"num_images": num_images}))
    return DatasetInput(dataset, tags=[InputTag(tags.DATA_CONTEXT, context)])


def save_pytorch_model(model, model_dir: Path, pip_requirements: list[str]) -> None:
    """`model` as an MLflow PyTorch model directory (MLmodel + pickled module)."""
    import mlflow.pytorch

    # pickle: the models hold data-dependent control flow that a pt2 trace would freeze;
    # mlflow warns about pickle on every save, which says nothing new here
    quiet = logging.getLogger("mlflow.pytorch")
    level, quiet.level = quiet.level, logging.ERROR
    try:
        mlflow.pytorch.save_model(model, str(model_dir), serialization_format="pickle",
                                  pip_requirements=pip_requirements)
    finally:
        quiet.setLevel(level)
