"""The whole MLflow surface CoBra uses: the one module of the project that imports mlflow.

The rest of `cobra.tracking` takes its client, entities and exception from here, so a reader (or
an MLflow upgrade) sees every MLflow name CoBra depends on in this file. The optional parts
(system metrics, PyTorch model flavour, dataset entities) are imported where they are used:
most processes never need them."""

import contextlib
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from mlflow.entities import Metric, Param, Run, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from cobra.tracking import tags

__all__ = ["MAX_METRICS_PER_BATCH", "MAX_PARAMS_PER_BATCH", "MAX_PARAM_VALUE", "MAX_TAG_VALUE",
           "Metric", "MlflowClient", "MlflowException", "Param", "Run", "RunTag", "dataset_input",
           "log_pytorch_model", "process_tracking_uri", "system_metrics_monitor"]

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


@contextlib.contextmanager
def process_tracking_uri(uri: str) -> Iterator[None]:
    """mlflow's model logging and registry resolve `models:/` URIs through the process-wide
    tracking URI, not a client's: inside this block it is `uri` (CoBra passes URIs explicitly,
    and a default `./mlflow.db` must never appear in the caller's directory)."""
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    # mlflow mirrors the URI into MLFLOW_TRACKING_URI and unsets it afterwards: the user's own
    # setting comes back
    user_setting = os.environ.get("MLFLOW_TRACKING_URI")
    try:
        with _use_tracking_uri(uri):
            yield
    finally:
        if user_setting is not None:
            os.environ["MLFLOW_TRACKING_URI"] = user_setting


def log_pytorch_model(client: MlflowClient, experiment_id: str, run_id: str, model, name: str,
                      input_example, pip_requirements: list[str], extra_files: list[Path],
                      tags: dict[str, str]) -> tuple[str, str]:
    """`model` logged as an MLflow PyTorch model of run `run_id` (a LoggedModel of its
    experiment: the Models tab lists it) with the signature of `input_example` (a numpy array
    the model takes) and its output. Call inside `process_tracking_uri`. Returns (model URI,
    model id)."""
    import mlflow.pytorch
    import torch
    from mlflow.models import infer_signature

    with torch.no_grad():
        output = model(torch.from_numpy(input_example)).cpu().numpy()
    # made here, not by log_model: it would file the model under the process's default
    # experiment, not the run's
    logged = client.create_logged_model(experiment_id, name=name, source_run_id=run_id,
                                        tags=tags, model_type="pytorch")
    # pickle: the models hold data-dependent control flow that a pt2 trace would freeze;
    # mlflow warns about pickle on every save, which says nothing new here
    quiet = logging.getLogger("mlflow.pytorch")
    level, quiet.level = quiet.level, logging.ERROR
    try:
        info = mlflow.pytorch.log_model(
            model, name=name, run_id=run_id, model_id=logged.model_id,
            serialization_format="pickle", signature=infer_signature(input_example, output),
            input_example=input_example, pip_requirements=pip_requirements,
            extra_files=[str(f) for f in extra_files])
    finally:
        quiet.setLevel(level)
    return info.model_uri, info.model_id
