"""`launch.py final`: the best sweep trial (as recorded in MLflow, which outlives Ray's results
directory) continues through the post-training stages: seeds → IR labels → IRN → masks →
segmentation, logged as a `final` MLflow run linked to its source trial.

The final run scores every image of the seed split, a trial only `seeds.max_images` of them, so
its metrics are logged as `final/<name>` (`final/seed_miou`): in the MLflow run list they sit in
their own columns, never beside the trials' as if the final run had won the sweep."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from cobra import tracking
from cobra.config import Config, flatten, load_config
from cobra.layout import RunLayout, new_run
from cobra.pipeline import run_stages
from cobra.provenance import dataset_splits
from cobra.reporting import FileReporter, MultiReporter, PrefixedReporter
from cobra.stages import POST_TRAIN_STAGES
from cobra.tracking import tags as tag

FINAL_PREFIX = "final/"
# Registered model names: a new version per `final` run.
SEGMENTATION_MODEL = "cobra-segmentation"
IRN_MODEL = "cobra-irn"


def final_overrides(overrides: list[str]) -> list[str]:
    """The trial's config for the final stage: the whole seed split, whatever the trial sampled,
    and progress bars on (a trial runs without them) unless the user says otherwise."""
    forced = ["seeds.max_images=null"]
    if not any(o.split("=", 1)[0].strip() == "train.progress" for o in overrides):
        forced.append("train.progress=true")
    return [*forced, *overrides]


def describe(uri: str, source: tracking.TrialRecord, metrics: dict[str, Any]) -> str:
    """The final run's description: where it came from, and why its numbers differ."""
    sweep = source.tags.get(tag.SWEEP, "?")
    trial_images = source.metrics.get("seed_num_images")
    trial_scope = f"{int(trial_images)} images" if trial_images else "a sample of images"
    final_images = metrics.get("seed_num_images")
    final_scope = f"{int(final_images)} images" if final_images else "the whole seed split"
    return (f"Final stage of trial {tracking.run_link(uri, source.run_id)} (sweep `{sweep}`): "
            f"seeds → IR labels → IRN → masks → segmentation from its checkpoint.\n\n"
            f"Metrics are named `{FINAL_PREFIX}…`: they cover {final_scope}, while the trial's "
            f"`seed_miou` covers {trial_scope}; compare them with each other, not with the "
            f"sweep's trials.")


def log_models(uri: str, run_id: str, cfg: Config, layout: RunLayout) -> dict[str, str]:
    """The segmentation network and the boundary network (IRN) as MLflow models, registered."""
    import torch

    from cobra.checkpoint import load_checkpoint
    from cobra.data import build_source
    from cobra.segmenter import build_segmenter
    from cobra.stages.outputs import load_boundary_net

    requirements = [f"torch=={torch.__version__.split('+')[0]}", "timm",
                    "segmentation-models-pytorch", "cobra-sweeps"]
    outcome = {}
    if layout.irn_checkpoint.exists():
        net = load_boundary_net(layout, torch.device("cpu"))
        outcome[IRN_MODEL] = tracking.log_torch_model(uri, run_id, net, "models/irn", IRN_MODEL,
                                                      requirements)
    if layout.segment_checkpoint.exists():
        num_classes = build_source(cfg, cfg.data.seed_split).num_classes
        model = build_segmenter(cfg.segment, num_classes)
        model.load_state_dict(load_checkpoint(layout.segment_checkpoint, "cpu")["model"])
        outcome[SEGMENTATION_MODEL] = tracking.log_torch_model(
            uri, run_id, model.eval(), "models/segmentation", SEGMENTATION_MODEL, requirements)
    return outcome


def run_final(experiment: str, sweep: str | None, run_id: str | None, overrides: list[str],
              runs_dir: Path) -> dict[str, Any]:
    uri = tracking.resolve_tracking_uri()
    tracking.check_reachable(uri)
    source = tracking.best_trial(uri, experiment, sweep_name=sweep, run_id=run_id)
    # a directory of an earlier `final` of this trial (one that failed, say) is left alone: this
    # one gets the same name and a timestamp
    layout = new_run(runs_dir, f"final-{source.run_name}-{source.run_id[:8]}",
                     stamp_if_taken=True)
    try:
        tracking.download_trial(uri, source.run_id, layout.root)
        cfg = load_config(layout.config, final_overrides(overrides), saved=True)
    except BaseException:
        shutil.rmtree(layout.root, ignore_errors=True)
        raise
    final_id = tracking.start_final_run(uri, experiment, source)
    mlflow_reporter = tracking.MlflowReporter(uri, final_id, system_metrics=True)
    reporter = MultiReporter([FileReporter(layout.metrics),
                              PrefixedReporter(mlflow_reporter, FINAL_PREFIX)])
    tracking.set_description(uri, final_id, describe(uri, source, {}))
    # backbone, initialisation and CRF settings of every stage travel with its results
    reporter.log_params(flatten(cfg))
    tracking.log_dataset_inputs(uri, final_id, dataset_splits(cfg))
    try:
        metrics = run_stages(cfg, layout, reporter, stages=POST_TRAIN_STAGES, force=True)
        mlflow_reporter.log_artifact(layout.config, None)
        models = log_models(uri, final_id, cfg, layout)
    except BaseException:
        reporter.close("FAILED")
        raise
    tracking.set_description(uri, final_id, describe(uri, source, metrics))
    mlflow_reporter.set_tags({f"{tag.MODEL_PREFIX}{name}": what
                             for name, what in models.items()})
    reporter.close("FINISHED")
    return {**metrics, "source_run_id": source.run_id, "source_run_name": source.run_name,
            "final_run_id": final_id, "run_dir": str(layout.root),
            "models": models}
