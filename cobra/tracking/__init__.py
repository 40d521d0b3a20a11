"""MLflow tracking for sweeps. MLflow itself is imported in one module, `mlflow_api`.

Every call takes one `Store` (a URI and its client, made once and passed down) and explicit
run ids, never mlflow's global "active run", so the same calls work from the driver and from
Ray worker processes. Run structure (tag names in `tags`):

    experiment
      <sweep_name>            cobra.kind=sweep, cobra.metric, cobra.mode, artifact: the sweep YAML
        <trial run name>      cobra.kind=trial, mlflow.parentRunId, ray_trial_id, params, metrics,
                              artifacts: config.yaml, checkpoints/last.pt, pictures/
      final-<trial run name>  cobra.kind=final, source_run_id

Modules, one concern each, importing one way: `tags` < `mlflow_api` < `store` < `reporter` <
`queries` (reading runs back) < `runs` (their lifecycle) < `views`."""

from cobra.tracking import tags
from cobra.tracking.queries import (
    SweepRecord,
    TrialRecord,
    artifact_bytes,
    artifact_size,
    best_trial,
    download_trial,
    finished_trial_seconds,
    get_sweep,
    get_trial,
    list_trials,
    pick_best,
    scored_trials,
    sweeps_with_base,
    trials_of,
)
from cobra.tracking.reporter import MlflowReporter, sanitize_key
from cobra.tracking.runs import (
    ModelVersionInfo,
    artifact_link,
    find_sweep_run,
    find_trial_run,
    finish_sweep,
    get_or_create_experiment,
    log_dataset_inputs,
    log_files,
    log_torch_model,
    reopen_run,
    run_link,
    set_description,
    start_final_run,
    start_sweep_run,
    start_trial_run,
)
from cobra.tracking.store import Store, check_reachable, open_store, redact, resolve_tracking_uri
from cobra.tracking.views import save_sweep_view

__all__ = [
    "MlflowReporter", "ModelVersionInfo", "Store", "SweepRecord", "TrialRecord", "artifact_bytes",
    "artifact_link", "artifact_size", "best_trial", "check_reachable", "download_trial",
    "find_sweep_run", "finished_trial_seconds", "find_trial_run", "finish_sweep",
    "get_or_create_experiment", "get_sweep", "get_trial", "list_trials", "log_dataset_inputs",
    "log_files", "log_torch_model", "open_store", "pick_best", "redact", "reopen_run",
    "resolve_tracking_uri", "run_link", "sanitize_key", "save_sweep_view", "scored_trials",
    "set_description", "start_final_run", "start_sweep_run", "start_trial_run", "sweeps_with_base",
    "tags", "trials_of",
]
