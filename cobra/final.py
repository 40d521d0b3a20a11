"""`launch.py final`: the best sweep trial (as recorded in MLflow, which outlives Ray's results
directory) continues through the post-training stages: seeds → IR labels → IRN → masks →
segmentation, logged as a `final` MLflow run linked to its source trial."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path
from typing import Any

from cobra import tracking
from cobra.config import flatten, load_config
from cobra.layout import new_run
from cobra.pipeline import run_stages
from cobra.reporting import FileReporter, MultiReporter
from cobra.stages import POST_TRAIN_STAGES


def available_stages() -> tuple[list[str], list[str]]:
    """(stages that exist, in order up to the first missing one; the missing ones)."""
    ready: list[str] = []
    for i, name in enumerate(POST_TRAIN_STAGES):
        if importlib.util.find_spec(f"cobra.stages.{name}") is None:
            return ready, list(POST_TRAIN_STAGES[i:])
        ready.append(name)
    return ready, []


def run_final(experiment: str, sweep: str | None, run_id: str | None, overrides: list[str],
              runs_dir: Path) -> dict[str, Any]:
    uri = tracking.resolve_tracking_uri()
    tracking.check_reachable(uri)
    source = tracking.best_trial(uri, experiment, sweep_name=sweep, run_id=run_id)
    layout = new_run(runs_dir, f"final-{source.run_name}-{source.run_id[:8]}")
    try:
        tracking.download_trial(uri, source.run_id, layout.root)
        # The final stage covers the whole seed split, whatever the sweep's trials sampled.
        cfg = load_config(layout.config, ["seeds.max_images=null", *overrides])
    except BaseException:
        shutil.rmtree(layout.root, ignore_errors=True)
        raise
    final_id = tracking.start_final_run(uri, experiment, source)
    mlflow_reporter = tracking.MlflowReporter(uri, final_id)
    reporter = MultiReporter([FileReporter(layout.metrics), mlflow_reporter])
    # backbone, initialisation and CRF settings of every stage travel with its results
    reporter.log_params(flatten(cfg))
    stages, missing = available_stages()
    try:
        metrics = run_stages(cfg, layout, reporter, stages=stages, force=True)
    except BaseException:
        reporter.close("FAILED")
        raise
    if missing:
        print(f"note: stage '{missing[0]}' is not part of this build yet; stopped after "
              f"'{stages[-1]}' (missing: {', '.join(missing)})", file=sys.stderr)
        mlflow_reporter.set_tags({"cobra.missing_stages": ",".join(missing)})
    reporter.close("FINISHED")
    return {**metrics, "source_run_id": source.run_id, "source_run_name": source.run_name,
            "final_run_id": final_id, "run_dir": str(layout.root),
            "missing_stages": missing}
