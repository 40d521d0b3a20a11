"""Every MLflow tag name CoBra writes or reads, in one place: the run hierarchy (see
`cobra.tracking`), Ray's bookkeeping on a trial, and the MLflow tags its UI shows.

Tag names are the contract between the runs a sweep wrote and the code that reads them back
(`launch.py final`, `launch.py report`, a resumed sweep): renaming one orphans old runs."""

# What a run is, and which sweep it belongs to
KIND = "cobra.kind"  # sweep | trial | final
SWEEP = "cobra.sweep"  # the sweep's name, on its parent run, its trials and its final runs
METRIC = "cobra.metric"  # on the parent run: the metric the sweep ranks by...
MODE = "cobra.mode"  # ...and whether higher (max) or lower (min) is better
BEST_RUN = "cobra.best_run_id"  # on the parent run once the sweep ended
# on the parent run: a digest of the sweep's base config (what every trial shares before the
# searched values and its training seed): sweeps with the same one measure the same seed noise
BASE_CONFIG = "cobra.base_config"
# on the parent run: where the sweep's Optuna study is (its URL, password hidden) and its name
OPTUNA_STORAGE = "cobra.optuna_storage"
OPTUNA_STUDY = "cobra.optuna_study"
SOURCE_RUN = "source_run_id"  # on a final run: the trial it continued
MODEL_PREFIX = "cobra.model."  # on a final run: `cobra.model.<registered name>` = what happened

# A trial's Ray bookkeeping and how it ended
RAY_TRIAL_ID = "ray_trial_id"
RAY_NODE_ID = "ray_node_id"
RAY_NODE_HISTORY = "ray_node_history"  # every node an attempt of the trial ran on, in order
RAY_WORKER_PID = "ray_worker_pid"
SEARCHED = "cobra.searched"  # the dotted config keys the sweep searched, comma-separated
FAILURE = "cobra.failure"  # the verdict of a trial that failed for good (non-finite loss)
LAST_CRASH = "cobra.last_crash"  # the last crash of an attempt Ray may retry

# MLflow's own tags (its UI reads them)
PARENT = "mlflow.parentRunId"
NOTE = "mlflow.note.content"  # the run's description, markdown
EXPERIMENT_KIND = "mlflow.experimentKind"
# on the experiment: the metric its Chart view starts from (the latest sweep's)
PRIMARY_METRIC = "mlflow.experiment.primaryMetric.name"
PRIMARY_METRIC_GREATER = "mlflow.experiment.primaryMetric.greaterIsBetter"
# on the experiment: `<prefix><id>` holds a saved view of its runs page (columns, charts); the
# UI's Views menu lists them (see `cobra.tracking.views`)
SAVED_VIEW_PREFIX = "mlflow.sharedViewState."
USER = "mlflow.user"
SOURCE_TYPE = "mlflow.source.type"
SOURCE_NAME = "mlflow.source.name"
SOURCE_COMMIT = "mlflow.source.git.commit"
SOURCE_DIRTY = "cobra.source.dirty"  # whether the checkout had uncommitted changes
DATA_CONTEXT = "mlflow.data.context"  # on a dataset input: training, validation, scored
