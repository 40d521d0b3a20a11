"""Scoring the seed stage's seeds against ground truth, under both background-threshold
protocols side by side (they are not comparable), and the headline metrics a sweep ranks on."""

import numpy as np

from cobra.config import Config
from cobra.data.source import Source
from cobra.layout import RunLayout
from cobra.metrics import bootstrap_miou_ci
from cobra.noise import ImageCounts
from cobra.ops.cams import ThresholdSweep, percentile_background
from cobra.stages.outputs import load_seed

# Where `seed_threshold` (and so `seed_miou`) was chosen: said next to every score.
THRESHOLD_CHOSEN_ON = "scored images (best of seeds.threshold_grid on their ground truth)"
# The headline metrics (`headline`): what a sweep can rank trials on.
METRICS = ("seed_miou", "seed_threshold", "seed_miou_default_bg", "seed_miou_aobj",
           "seed_percentile", "seed_miou_ci_lo", "seed_miou_ci_hi", "seed_miou_heldout",
           "seed_heldout_threshold_a", "seed_heldout_threshold_b", "seed_num_images")


def _per_class(names: list[str], iou: np.ndarray) -> dict[str, float | None]:
    return {name: (None if np.isnan(v) else round(float(v), 3))
            for name, v in zip(names, iou, strict=True)}


def score_seeds(cfg: Config, layout: RunLayout, source: Source, ids: list[str]
                ) -> tuple[dict, ImageCounts]:
    """Seed mIoU under both background protocols, over one confusion matrix per threshold.

    fixed: IRN's fixed background score, swept over `seeds.threshold_grid` (plus `fixed_bg`);
    aobj: the paper's per-image θ-th percentile of A_obj over `seeds.percentile_grid` (runs with
    a ViT branch only). Both thresholds are chosen on ground truth of the scored images, as
    the paper does; `miou_heldout` scores each image at a threshold chosen on the other images
    (two folds), and `ci95` is a bootstrap interval over images at the chosen threshold.
    Also returns each image's counts at the chosen threshold (a sweep's paired test of two
    trials over the images both scored)."""
    num_classes = source.num_classes + 1
    thresholds = sorted({*cfg.seeds.threshold_grid, cfg.seeds.fixed_bg})
    fixed = ThresholdSweep(num_classes, thresholds)
    aobj = ThresholdSweep(num_classes, cfg.seeds.percentile_grid)
    has_aobj = True
    for image_id in ids:
        seed = load_seed(layout.seed_file(image_id), cfg.seeds.fusion)
        gt = source.load_mask(image_id)
        fixed.add(seed["cam"], seed["keys"], gt, thresholds)
        if seed["a_obj"] is None:
            has_aobj = False
            continue
        bgs = [percentile_background(seed["a_obj"], t) for t in aobj.thresholds]
        aobj.add(seed["cam"], seed["keys"], gt, bgs)

    names = list(source.class_names)
    threshold, miou, per_class = fixed.best()
    curve = fixed.curve()
    ci_lo, ci_hi = bootstrap_miou_ci(fixed.counts_at(threshold))
    heldout, heldout_thresholds = fixed.cross_fitted() if ids else (float("nan"), [])
    result = {"fusion": cfg.seeds.fusion, "num_images": len(ids),
              "fixed": {"threshold": threshold, "miou": miou,
                        "threshold_chosen_on": THRESHOLD_CHOSEN_ON, "ci95": [ci_lo, ci_hi],
                        "miou_heldout": heldout, "heldout_thresholds": heldout_thresholds,
                        "miou_at_default": curve[cfg.seeds.fixed_bg],
                        "default_threshold": cfg.seeds.fixed_bg,
                        "per_class": _per_class(names, per_class), "curve": curve},
              "aobj": None}
    if has_aobj:
        theta, miou_a, per_class_a = aobj.best()
        result["aobj"] = {"percentile": theta, "miou": miou_a,
                          "per_class": _per_class(names, per_class_a), "curve": aobj.curve()}
    return result, ImageCounts(tuple(ids), fixed.counts_at(threshold))


def headline(evaluation: dict) -> dict[str, float]:
    """The flat metrics a sweep ranks on; `seed_miou` is the fixed-threshold protocol because
    it is defined for every branch setup (the A_obj protocol needs the ViT)."""
    fixed, aobj = evaluation["fixed"], evaluation["aobj"]
    lo, hi = fixed.get("ci95", [float("nan")] * 2)
    # the two halves' thresholds say why `seed_miou_heldout` may equal `seed_miou`: both
    # halves chose the threshold the whole set chose
    folds = [*fixed.get("heldout_thresholds", []), float("nan"), float("nan")][:2]
    metrics = {"seed_miou": fixed["miou"], "seed_threshold": fixed["threshold"],
               "seed_miou_ci_lo": lo, "seed_miou_ci_hi": hi,
               "seed_miou_heldout": fixed.get("miou_heldout", float("nan")),
               "seed_heldout_threshold_a": folds[0], "seed_heldout_threshold_b": folds[1],
               "seed_num_images": evaluation.get("num_images", float("nan")),
               "seed_miou_default_bg": fixed["miou_at_default"],
               "seed_miou_aobj": aobj["miou"] if aobj else float("nan"),
               "seed_percentile": aobj["percentile"] if aobj else float("nan")}
    return {k: round(float(v), 4) for k, v in metrics.items()}
