"""Stage `seeds`: multi-scale + flip CAMs of both branches, written per image, then scored.

Per image (SPEC "Seeds"): every scale and its flip go through the trained model; CAMs of the
image's positive classes are ReLU'd, upsampled to image size and summed; M_tran is taken as
ReLU(M_tran ⊗ A_obj); each class map is max-normalised. `RUN/seeds/<id>.npz` keeps M_cnn, M_tran
and A_obj apart so fusion modes and thresholds can be swept offline without the network.
Scoring reports both background-threshold protocols side by side (they are not comparable).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from cobra.checkpoint import check_model_matches, checkpoint_config, load_checkpoint
from cobra.config import Config, switch
from cobra.data import build_source, normalize_image
from cobra.errors import DataError, StageInputError
from cobra.layout import IMAGE_COUNTS_DIR, RunLayout, atomic_write_text
from cobra.metrics import bootstrap_miou_ci
from cobra.models import build_model
from cobra.models.cobra import CoBra
from cobra.noise import ImageCounts
from cobra.ops.cams import (
    ThresholdSweep,
    cams_to_label,
    max_normalize,
    normalize_attention,
    percentile_background,
)
from cobra.pictures import colorize, heatmap, save_strip
from cobra.reporting import Reporter, jsonable
from cobra.runtime import resolve_device
from cobra.stages.common import NUM_PICTURES, Stamp, file_signature, fingerprint, stage_ids
from cobra.stages.outputs import fuse_seed, load_seed, load_weights, read_seed_arrays

# Where `seed_threshold` (and so `seed_miou`) was chosen: said next to every score.
THRESHOLD_CHOSEN_ON = "scored images (best of seeds.threshold_grid on their ground truth)"
# The headline metrics this stage reports (`headline`): what a sweep can rank trials on.
METRICS = ("seed_miou", "seed_threshold", "seed_miou_default_bg", "seed_miou_aobj",
           "seed_percentile", "seed_miou_ci_lo", "seed_miou_ci_hi", "seed_miou_heldout",
           "seed_heldout_threshold_a", "seed_heldout_threshold_b", "seed_num_images")


# ------------------------------------------------------------------------------------------------
# Making seeds


def _to_image_size(maps: torch.Tensor, padded: tuple[int, int], scaled: tuple[int, int],
                   out: tuple[int, int]) -> torch.Tensor:
    """(B, K, Nh, Nw) grid maps → (B, K, H, W): the grid covers the padded input, so upsample to
    the padded size, crop the real (scaled) image, then resize to the original size."""
    maps = F.interpolate(maps, size=padded, mode="bilinear", align_corners=False)
    maps = maps[..., : scaled[0], : scaled[1]]
    return F.interpolate(maps, size=out, mode="bilinear", align_corners=False)


def _scale_weight(a_obj: torch.Tensor, weighting: str) -> torch.Tensor:
    """(B, N_h, N_w) A_obj of one forward pass → the weight M_tran is multiplied by.

    A_obj's raw mean falls like 1/tokens (each layer's class-token row sums to at most 1), so
    `raw` (the authors) lets small scales dominate the sum over scales; `normalized` divides
    each pass by its own maximum so that every scale counts alike; `none` keeps that A_obj for
    the percentile protocol but leaves M_tran unweighted.
    """
    if weighting == "raw":
        return a_obj
    if weighting in ("normalized", "none"):
        return a_obj / a_obj.flatten(1).amax(1).clamp_min(1e-8)[:, None, None]
    raise ValueError(f"aobj weighting must be 'normalized', 'raw' or 'none', got '{weighting}'")


@torch.no_grad()
def multiscale_cams(model: CoBra, image: np.ndarray, keys: np.ndarray, scales: list[float],
                    flip: bool, aobj_weighting: str = "normalized") -> dict[str, np.ndarray]:
    """CAMs of classes `keys` (1..C) for one (H, W, 3) uint8 image, summed over scales and flips.

    Returns float32 arrays: `cam_cnn`/`cam_tran` (K, H, W) max-normalised to [0, 1] (absent when
    the branch is off) and `a_obj` (H, W) normalised to [0, 1] (ViT only). `aobj_weighting`
    (`seeds.aobj_weighting`) says how each pass's A_obj enters both sums.
    """
    return multiscale_cams_batch(model, [image], [keys], scales, flip, aobj_weighting)[0]


@torch.no_grad()
def multiscale_cams_batch(model: CoBra, images: list[np.ndarray], keys: list[np.ndarray],
                          scales: list[float], flip: bool, aobj_weighting: str = "normalized"
                          ) -> list[dict[str, np.ndarray]]:
    """`multiscale_cams` of several images of one size at once: per scale, every image and its
    flip go through the network as one batch (the model is in eval mode, so an image's CAMs do
    not depend on its batch mates; tests/test_seeds.py checks it)."""
    device = next(model.parameters()).device
    h, w = images[0].shape[:2]
    if any(image.shape[:2] != (h, w) for image in images):
        raise ValueError("multiscale_cams_batch needs images of one size; group them by size")
    base = torch.stack([normalize_image(image) for image in images]).to(device)  # (N, 3, H, W)
    views = 2 if flip else 1
    sums: list[dict[str, torch.Tensor]] = [{} for _ in images]
    for scale in scales:
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
        x = F.interpolate(base, size=size, mode="bilinear", align_corners=False)
        if flip:  # (N·2, 3, h, w): each image followed by its flip
            x = torch.stack([x, x.flip(-1)], dim=1).flatten(0, 1)
        out = model(x, affinity=False)  # A_obj needs only the class token's attention row
        nh, nw = model.patch_grid(*size)
        padded = (nh * model.patch_size, nw * model.patch_size)
        weight = _scale_weight(out.a_obj, aobj_weighting) if out.cam_vit is not None else None
        for i, image_keys in enumerate(keys):
            views_of_i = slice(i * views, (i + 1) * views)
            maps: dict[str, torch.Tensor] = {}
            if out.cam_cnn is not None:
                maps["cam_cnn"] = F.relu(out.cam_cnn[views_of_i][:, image_keys])
            if weight is not None:
                a = weight[views_of_i]
                tran = out.cam_vit[views_of_i][:, image_keys]
                maps["cam_tran"] = F.relu(tran if aobj_weighting == "none" else tran * a[:, None])
                maps["a_obj"] = a[:, None]
            _accumulate(sums[i], maps, padded, size, (h, w), flip)
    return [_normalised(total) for total in sums]


def _accumulate(sums: dict[str, torch.Tensor], maps: dict[str, torch.Tensor],
                padded: tuple[int, int], size: tuple[int, int], out: tuple[int, int],
                flip: bool) -> None:
    """Add one scale's (views, K, Nh, Nw) maps of one image, brought to image size, to `sums`."""
    for name, m in maps.items():
        if m.shape[1] == 0:
            # an image with no foreground class: no maps to resize (interpolate refuses an
            # empty tensor); its seed is all background and is still scored
            sums[name] = m.new_zeros((0, *out))
            continue
        m = _to_image_size(m, padded, size, out)
        if flip:
            m = m[:1] + m[1:].flip(-1)
        sums[name] = sums.get(name, 0) + m[0]


def _normalised(sums: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    result = {}
    for name, total in sums.items():
        arr = total.float().cpu().numpy()
        if name == "a_obj":
            result[name] = normalize_attention(arr[0]).astype(np.float32)
        else:
            result[name] = max_normalize(arr).astype(np.float32)
    return result


def size_groups(ids: list[str], sizes: list[tuple[int, int]], batch: int) -> list[list[str]]:
    """Image ids in batches of at most `batch` images of one size (VOC has few distinct sizes,
    so most batches are full)."""
    by_size: dict[tuple[int, int], list[str]] = {}
    for image_id, size in zip(ids, sizes, strict=True):
        by_size.setdefault(size, []).append(image_id)
    return [group[i:i + batch] for group in by_size.values()
            for i in range(0, len(group), batch)]


def check_dataset_matches(state: dict, source, checkpoint: Path) -> None:
    """The checkpoint's CAM heads must have one channel per class of this dataset."""
    heads = [v for k, v in state["model"].items() if k.endswith("cam_head.weight")]
    trained = heads[0].shape[0] - 1 if heads else source.num_classes
    if trained != source.num_classes:
        raise StageInputError(f"checkpoint '{checkpoint}' was trained on {trained} classes but "
                              f"the dataset at data.root has {source.num_classes}; use the "
                              f"dataset the run was trained on")


def check_inputs(cfg: Config, source) -> None:
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
                            f"px, larger than seeds.max_side={cfg.seeds.max_side}; downscale "
                            f"it, drop the scale or raise seeds.max_side (memory grows with "
                            f"the area)")
        if source.has_masks and hasattr(source, "check_mask_size"):
            source.check_mask_size(image_id)
    if source.has_masks and not any((source.load_mask(i) != 255).any() for i in ids):
        # seeds are scored on labelled pixels: with none, every score is NaN after training
        raise DataError(f"every mask of split '{source.split}' is ignore (255) on every pixel, "
                        f"so its seeds cannot be scored; fix the masks or set data.seed_split "
                        f"to a split with labels")


def make(cfg: Config, layout: RunLayout, source, force: bool = False) -> list[str]:
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
    groups = size_groups(ids, [source.image_size(i) for i in ids], cfg.seeds.batch_images)
    bar = tqdm(total=len(ids), desc="seeds", disable=not cfg.train.progress, leave=False,
               unit="img")
    for group in groups:
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


# ------------------------------------------------------------------------------------------------
# Scoring


def _per_class(names: list[str], iou: np.ndarray) -> dict[str, float | None]:
    return {name: (None if np.isnan(v) else round(float(v), 3))
            for name, v in zip(names, iou, strict=True)}


def score_seeds(cfg: Config, layout: RunLayout, source, ids: list[str]
                ) -> tuple[dict, ImageCounts]:
    """Seed mIoU under both background protocols, over one confusion matrix per threshold.

    fixed: IRN's fixed background score, swept over `seeds.threshold_grid` (plus `fixed_bg`);
    aobj: the paper's per-image θ-th percentile of A_obj over `seeds.percentile_grid` (runs with
    a ViT branch only). Both thresholds are chosen on ground truth of the scored images, as
    the paper does; `miou_heldout` scores each image at a threshold chosen on the other images
    (two folds), and `ci95` is a bootstrap interval over images at the chosen threshold.
    Also returns each image's counts at the chosen threshold (a sweep's paired test of two
    trials over the images both scored).
    """
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
                        "threshold_chosen_on": THRESHOLD_CHOSEN_ON,
                        "ci95": [ci_lo, ci_hi],
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


def save_pictures(cfg: Config, layout: RunLayout, source, ids: list[str], threshold: float,
                  reporter: Reporter) -> None:
    """image | CNN CAM | ViT CAM | fused | seed | ground truth, for the first few images."""
    for image_id in ids[:NUM_PICTURES]:
        image = source.load_image(image_id)
        arrays = read_seed_arrays(layout.seed_file(image_id))
        seed = fuse_seed(arrays, cfg.seeds.fusion)
        panels, titles = [image], ["image"]
        for key, title in (("cam_cnn", "CNN CAM"), ("cam_tran", "ViT CAM x A_obj")):
            if key in arrays and arrays[key].shape[0]:
                panels.append(heatmap(arrays[key].max(0), image))
                titles.append(title)
        if seed["cam"].shape[0]:
            panels.append(heatmap(seed["cam"].max(0), image))
            titles.append(f"fused ({cfg.seeds.fusion})")
        label = cams_to_label(seed["cam"], seed["keys"], threshold)
        panels += [colorize(label), colorize(source.load_mask(image_id))]
        titles += [f"seed (bg {threshold:.2f})", "ground truth"]
        path = layout.pictures / f"seeds_{image_id}.png"
        save_strip(path, panels, titles)
        reporter.log_artifact(path, "pictures")


def per_class_table(per_class: dict[str, float | None]) -> dict[str, list]:
    """{"class": [...], "iou": [...]}: a table MLflow shows in the run's artifacts."""
    return {"class": list(per_class), "iou": list(per_class.values())}


def save_threshold_curve(fixed: dict, path: Path) -> None:
    """Seed mIoU against the background threshold, the chosen one marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    thresholds = sorted(fixed["curve"])
    fig, ax = plt.subplots(figsize=(5, 3.2))
    try:
        ax.plot(thresholds, [fixed["curve"][t] for t in thresholds], marker="o")
        ax.axvline(fixed["threshold"], color="grey", linestyle="--",
                   label=f"chosen {fixed['threshold']:.2f} (on the scored images)")
        ax.set_xlabel("background threshold")
        ax.set_ylabel("seed mIoU (%)")
        ax.legend(fontsize=8)
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)


def run(cfg: Config, layout: RunLayout, reporter: Reporter, force: bool = False
        ) -> dict[str, float]:
    """Make seeds for the seed split, score them, draw a few; returns the headline metrics."""
    source = build_source(cfg, cfg.data.seed_split)
    ids = make(cfg, layout, source, force=force)
    if not source.has_masks:
        return {}
    evaluation, image_counts = score_seeds(cfg, layout, source, ids)
    atomic_write_text(layout.seeds_eval, json.dumps(jsonable(evaluation), indent=2))
    image_counts.save(layout.seed_image_counts)
    save_pictures(cfg, layout, source, ids, evaluation["fixed"]["threshold"], reporter)
    metrics = headline(evaluation)
    # per-class IoU is in seeds/eval.json (and a table in MLflow), not one chart per class
    reporter.log_table(per_class_table(evaluation["fixed"]["per_class"]),
                       "seeds/per_class_iou.json")
    reporter.log_artifact(layout.seeds_eval, "seeds")
    reporter.log_artifact(layout.seed_image_counts, IMAGE_COUNTS_DIR)
    curve_png = layout.pictures / "seed_threshold_curve.png"
    save_threshold_curve(evaluation["fixed"], curve_png)
    reporter.log_artifact(curve_png, "seeds")
    reporter.log_summary(metrics)
    layout.update_summary(metrics)
    return metrics
