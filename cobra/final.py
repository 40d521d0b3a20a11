"""`launch.py final`: the best sweep trial (as recorded in MLflow, which outlives Ray's results
directory) continues through the post-training stages: seeds → IR labels → IRN → masks →
segmentation, logged as a `final` MLflow run linked to its source trial.

The final run scores every image of the seed split, a trial only `seeds.max_images` of them, so
its metrics are logged as `final/<name>` (`final/seed_miou`): in the MLflow run list they sit in
their own columns, never beside the trials' as if the final run had won the sweep."""

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


# Each stage's scores: the name prefix, the metric holding how many images they cover, and
# whether they are scored on the seed split (else on `segment.eval_split`).
SCORE_GROUPS = (("seed_", "seed_num_images", True), ("ir_label_", "ir_label_num_images", True),
                ("mask_", "mask_num_images", True), ("seg_", "seg_num_images", False))
# Companions of a score (its interval, its image count, the threshold it chose): not rows.
_COMPANION_SUFFIXES = ("_ci_lo", "_ci_hi", "_num_images", "_threshold", "_percentile",
                       "_threshold_a", "_threshold_b")


def score_rows(cfg: Config, metrics: dict[str, Any]) -> list[list[str]]:
    """One row per final score: name, value, 95 % interval over images (where the stage
    computes one), images, split."""
    rows = []
    for key, value in metrics.items():
        group = next((g for g in SCORE_GROUPS if key.startswith(g[0])), None)
        if (group is None or key.endswith(_COMPANION_SUFFIXES) or "threshold" in key
                or not isinstance(value, (int, float))):
            continue
        _, images_key, on_seed_split = group
        lo, hi = metrics.get(f"{key}_ci_lo"), metrics.get(f"{key}_ci_hi")
        images = metrics.get(images_key)
        split = cfg.data.seed_split if on_seed_split else cfg.segment.eval_split
        rows.append([f"`{FINAL_PREFIX}{key}`", f"{value:.2f}",
                     f"[{lo:.2f}, {hi:.2f}]" if lo is not None and hi is not None else "—",
                     str(int(images)) if images is not None else "?", split])
    return rows


def describe(source: tracking.TrialRecord, metrics: dict[str, Any],
             cfg: Config | None = None) -> str:
    """The final run's description: where it came from, and each score with its split, its
    images and its interval (a trial's scores cover a sample of the seed split)."""
    sweep = source.tags.get(tag.SWEEP, "?")
    trial_images = source.metrics.get("seed_num_images")
    trial_scope = f"{int(trial_images)} images" if trial_images else "a sample of images"
    head = (f"Final stage of trial {tracking.run_link(source.experiment_id, source.run_id, source.run_name)} (sweep `{sweep}`): "
            f"seeds → IR labels → IRN → masks → segmentation from its checkpoint.\n\n"
            f"Metrics are named `{FINAL_PREFIX}…`: each covers the images of its split below, "
            f"while the trial's `seed_miou` covers {trial_scope}; compare them with each "
            f"other, not with the sweep's trials.")
    rows = score_rows(cfg, metrics) if cfg is not None else []
    if not rows:
        return head
    table = ["| score | value | 95% CI (images) | images | split |", "|---|---|---|---|---|",
             *("| " + " | ".join(row) + " |" for row in rows)]
    return (head + "\n\n" + "\n".join(table) + "\n\n*95% CI*: bootstrap over images, for "
            "each stage's headline score (— : not computed). Seeds, IR labels and masks are "
            "scored on the seed split; segmentation on `segment.eval_split`.")


# What a logged network is shown taking: one normalized image, small enough to run at once.
EXAMPLE_SIZE = 64


def version_info(source: tracking.TrialRecord, metrics: dict[str, Any], cfg: Config,
                 final_id: str) -> tracking.ModelVersionInfo:
    """A model version's description and tags: its source trial and sweep, its final run,
    and every final score with the images and split it covers."""
    rows = score_rows(cfg, metrics)
    scores = "; ".join(f"{r[0].strip('`')} {r[1]} {r[2] if r[2] != '—' else ''} on {r[3]} "
                       f"{r[4]} images".replace("  ", " ") for r in rows)
    sweep = source.tags.get(tag.SWEEP, "?")
    description = (f"Trained by final run {final_id} from trial {source.run_name} "
                   f"({source.run_id}) of sweep {sweep}; the run's config.yaml is in the model. "
                   f"Scores: {scores}.")
    tags = {tag.SOURCE_RUN: source.run_id, "final_run_id": final_id, tag.SWEEP: sweep,
            **{r[0].strip("`"): r[1] for r in rows}}
    return tracking.ModelVersionInfo(description, tags)


def log_models(store: tracking.Store, run_id: str, cfg: Config, layout: RunLayout,
               version: tracking.ModelVersionInfo) -> dict[str, str]:
    """The segmentation network and the boundary network (IRN) as MLflow models, registered."""
    import numpy as np
    import torch

    from cobra.checkpoint import load_checkpoint
    from cobra.data import build_source
    from cobra.segmenter import build_segmenter
    from cobra.stages.outputs import load_boundary_net

    requirements = [f"torch=={torch.__version__.split('+')[0]}", "timm",
                    "segmentation-models-pytorch", "cobra-sweeps"]
    example = np.zeros((1, 3, EXAMPLE_SIZE, EXAMPLE_SIZE), dtype=np.float32)
    outcome = {}
    if layout.irn_checkpoint.exists():
        net = load_boundary_net(layout, torch.device("cpu"))
        outcome[IRN_MODEL] = tracking.log_torch_model(
            store, run_id, net, "irn", IRN_MODEL, example, requirements, [layout.config], version)
    if layout.segment_checkpoint.exists():
        num_classes = build_source(cfg, cfg.data.seed_split).num_classes
        model = build_segmenter(cfg.segment, num_classes)
        model.load_state_dict(load_checkpoint(layout.segment_checkpoint, "cpu")["model"])
        outcome[SEGMENTATION_MODEL] = tracking.log_torch_model(
            store, run_id, model.eval(), "segmentation", SEGMENTATION_MODEL, example,
            requirements, [layout.config], version)
    return outcome


def run_final(experiment: str, sweep: str | None, run_id: str | None, overrides: list[str],
              runs_dir: Path) -> dict[str, Any]:
    store = tracking.open_store()
    source = tracking.best_trial(store, experiment, sweep_name=sweep, run_id=run_id)
    # a directory of an earlier `final` of this trial (one that failed, say) is left alone: this
    # one gets the same name and a timestamp
    layout = new_run(runs_dir, f"final-{source.run_name}-{source.run_id[:8]}", stamp_if_taken=True)
    try:
        tracking.download_trial(store, source.run_id, layout.root)
        cfg = load_config(layout.config, final_overrides(overrides), saved=True)
    except BaseException:
        shutil.rmtree(layout.root, ignore_errors=True)
        raise
    final_id = tracking.start_final_run(store, experiment, source)
    mlflow_reporter = tracking.MlflowReporter(store, final_id, system_metrics=True)
    reporter = MultiReporter([FileReporter(layout.metrics),
                              PrefixedReporter(mlflow_reporter, FINAL_PREFIX)])
    tracking.set_description(store, final_id, describe(source, {}))
    # backbone, initialisation and CRF settings of every stage travel with its results
    reporter.log_params(flatten(cfg))
    tracking.log_dataset_inputs(store, final_id, dataset_splits(cfg, POST_TRAIN_STAGES))
    try:
        metrics = run_stages(cfg, layout, reporter, stages=POST_TRAIN_STAGES, force=True)
        mlflow_reporter.log_artifact(layout.config, None)
        models = log_models(store, final_id, cfg, layout,
                            version_info(source, metrics, cfg, final_id))
    except BaseException:
        reporter.close("FAILED")
        raise
    tracking.set_description(store, final_id, describe(source, metrics, cfg))
    mlflow_reporter.set_tags({f"{tag.MODEL_PREFIX}{name}": what for name, what in models.items()})
    reporter.close("FINISHED")
    return {**metrics, "source_run_id": source.run_id, "source_run_name": source.run_name,
            "final_run_id": final_id, "run_dir": str(layout.root), "models": models}
