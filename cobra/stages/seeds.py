"""Stage `seeds`: multi-scale + flip CAMs of both branches written per image (`seed_cams`), then
scored (`seed_scores`) and drawn (`seed_pictures`); `run` composes the three, as IRN keeps
`make_cam` and `eval_cam` apart. `RUN/seeds/<id>.npz` keeps M_cnn, M_tran and A_obj apart so
fusion modes and thresholds can be swept offline without the network."""

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from cobra.checkpoint import check_model_matches, checkpoint_config, load_checkpoint
from cobra.config import Config, switch
from cobra.data import Source, build_source
from cobra.errors import DataError, StageInputError
from cobra.layout import IMAGE_COUNTS_DIR, RunLayout, atomic_write_text
from cobra.models import build_model
from cobra.reporting import Reporter, jsonable
from cobra.runtime import resolve_device
from cobra.stages import seed_scores
from cobra.stages.common import Stamp, file_signature, fingerprint, stage_ids
from cobra.stages.outputs import load_weights
from cobra.stages.seed_cams import multiscale_cams_batch, size_groups
from cobra.stages.seed_pictures import save_pictures, save_threshold_curve

METRICS = seed_scores.METRICS  # what `run` returns and a sweep can rank on


def check_dataset_matches(state: dict, source: Source, checkpoint: Path) -> None:
    """The checkpoint's CAM heads must have one channel per class of this dataset."""
    heads = [v for k, v in state["model"].items() if k.endswith("cam_head.weight")]
    trained = heads[0].shape[0] - 1 if heads else source.num_classes
    if trained != source.num_classes:
        raise StageInputError(f"checkpoint '{checkpoint}' was trained on {trained} classes but "
                              f"the dataset at data.root has {source.num_classes}; use the "
                              f"dataset the run was trained on")


def check_inputs(cfg: Config, source: Source) -> None:
    """What would make this stage fail, found before training: an image too large for its
    multi-scale CAMs (side × largest scale), a mask not the size of its image (file headers),
    a split with no labelled pixel (masks read until one has one)."""
    ids = stage_ids(cfg, source)
    top_scale = max(cfg.seeds.scales)
    for image_id in ids:
        h, w = source.image_size(image_id)
        if max(h, w) * top_scale > cfg.seeds.max_side:
            # one pixel budget for image size and scale alike: the pass's memory follows both
            raise DataError(f"image '{source.image_path(image_id)}' is {w}x{h}; at seeds scale "
                            f"{top_scale:g} the seed pass runs at {round(max(h, w) * top_scale)} "
                            f"px, larger than seeds.max_side={cfg.seeds.max_side}; downscale it, "
                            "drop the scale or raise seeds.max_side (memory grows with the area)")
        if source.has_masks and hasattr(source, "check_mask_size"):
            source.check_mask_size(image_id)
    if source.has_masks and not any((source.load_mask(i) != 255).any() for i in ids):
        # seeds are scored on labelled pixels: with none, every score is NaN after training
        raise DataError(f"every mask of split '{source.split}' is ignore (255) on every pixel, "
                        f"so its seeds cannot be scored; fix the masks or set data.seed_split "
                        f"to a split with labels")


def make(cfg: Config, layout: RunLayout, source: Source, force: bool = False) -> list[str]:
    """Write `RUN/seeds/<id>.npz` for the seed split; returns the image ids."""
    ids = stage_ids(cfg, source)
    check_inputs(cfg, source)
    checkpoint = layout.last_checkpoint
    # complete only for the same checkpoint, seed settings and image list
    stamp = Stamp(layout.seeds, fingerprint(
        ckpt=file_signature(checkpoint) if checkpoint.exists() else None,
        scales=cfg.seeds.scales, flip=cfg.seeds.flip, aobj=switch(cfg, "seeds.aobj_weighting"),
        ids=ids))
    if (checkpoint.exists() and stamp.current() and not force
            and all(layout.seed_file(i).exists() for i in ids)):
        return ids

    state = load_checkpoint(checkpoint)
    trained = checkpoint_config(state)
    device = resolve_device(cfg.train.device)
    check_model_matches(cfg, trained, layout.last_checkpoint)
    check_dataset_matches(state, source, layout.last_checkpoint)
    # the checkpoint holds every weight: build without fetching pretrained ones
    model = build_model(replace(trained.model, pretrained=False), source.num_classes)
    load_weights(model, state["model"],
                 f"checkpoint '{layout.last_checkpoint}' does not match its model config "
                 f"({trained.model.cnn} / {trained.model.vit}); retrain with stage 'train'")
    model.to(device).eval()
    stamp.clear()
    layout.seeds.mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=len(ids), desc="seeds", disable=not cfg.train.progress, leave=False, unit="img")
    for group in size_groups(ids, [source.image_size(i) for i in ids], cfg.seeds.batch_images):
        keys = [np.flatnonzero(source.labels(image_id)) + 1 for image_id in group]
        cams = multiscale_cams_batch(model, [source.load_image(i) for i in group], keys,
                                     cfg.seeds.scales, cfg.seeds.flip,
                                     switch(cfg, "seeds.aobj_weighting"))
        for image_id, image_keys, image_cams in zip(group, keys, cams, strict=True):
            tmp = layout.seeds / f".{image_id}.tmp.npz"
            np.savez(tmp, keys=image_keys.astype(np.int64), **image_cams)
            tmp.replace(layout.seed_file(image_id))
        bar.update(len(group))
    bar.close()
    stamp.write()
    return ids


def run(cfg: Config, layout: RunLayout, reporter: Reporter, force: bool = False
        ) -> dict[str, float]:
    """Make seeds for the seed split, score them, draw a few; returns the headline metrics."""
    source = build_source(cfg, cfg.data.seed_split)
    ids = make(cfg, layout, source, force=force)
    if not source.has_masks:
        return {}
    evaluation, image_counts = seed_scores.score_seeds(cfg, layout, source, ids)
    atomic_write_text(layout.seeds_eval, json.dumps(jsonable(evaluation), indent=2))
    image_counts.save(layout.seed_image_counts)
    save_pictures(cfg, layout, source, ids, evaluation["fixed"]["threshold"], reporter)
    metrics = seed_scores.headline(evaluation)
    # per-class IoU is in seeds/eval.json (and a table in MLflow), not one chart per class
    per_class = evaluation["fixed"]["per_class"]
    reporter.log_table({"class": list(per_class), "iou": list(per_class.values())},
                       "seeds/per_class_iou.json")
    reporter.log_artifact(layout.seeds_eval, "seeds")
    reporter.log_artifact(layout.seed_image_counts, IMAGE_COUNTS_DIR)
    curve_png = layout.pictures / "seed_threshold_curve.png"
    save_threshold_curve(evaluation["fixed"], curve_png)
    reporter.log_artifact(curve_png, "seeds")
    reporter.log_summary(metrics)
    layout.update_summary(metrics)
    return metrics
