"""Stage `masks`: random walk of the seeds over the boundary network's affinities → masks.

Per image: the boundary map at stride 4 (image and its flip); the seed CAMs (`masks.walk.source`:
the fused seed, or the ViT-side M_tran as the authors walk) brought to that grid, multiplied by
(1 − boundary) (IRN) and propagated for 2^`masks.walk.exp_times` steps with affinities
(1 − boundary on the path)^β. The walk's maps are stored once (`masks/rw/<id>.npz`) so thresholds
can be swept offline. Two mask rules are made and scored: `irn` (background score
`masks.rule.sem_seg_bg`, then the soft second CRF) and `relative` (the authors' per-class
θ·max_c + min_c, then a hard-label CRF); `masks.rule.name` picks the one written and reported as
mask_miou, with and without its CRF (`masks.rule.crf`)."""

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from cobra.config import Config, resolved, switch
from cobra.data import Source, build_source, normalize_image
from cobra.layout import IMAGE_COUNTS_DIR, RunLayout
from cobra.metrics import bootstrap_miou_ci, confusion_matrix, iou_counts, mean_iou
from cobra.noise import ImageCounts
from cobra.ops.cams import cams_to_label
from cobra.ops.crf import crf_label, crf_probs
from cobra.ops.random_walk import masks_from_rw, random_walk, relative_labels
from cobra.pictures import colorize, save_label_png, save_strip
from cobra.reporting import Reporter
from cobra.runtime import resolve_device
from cobra.stages.common import (
    NUM_PICTURES,
    Stamp,
    fingerprint,
    mask_crf_args,
    parallel_map,
    require_files,
    skip_if_current,
    stage_ids,
    stamp_of,
)
from cobra.stages.outputs import fuse_seed, load_boundary_net, read_ir_label, read_seed_arrays

MASK_RULES = ("irn", "relative")
# What this stage reports (`_metrics` and the interval over images).
METRICS = ("mask_miou", "mask_miou_nocrf", *(f"mask_miou_{rule}" for rule in MASK_RULES),
           "mask_miou_ci_lo", "mask_miou_ci_hi", "mask_num_images")
_WORKER: dict[str, Any] = {}


@torch.no_grad()
def boundary_map(net, image: np.ndarray, device: torch.device, scale: float = 1.0
                 ) -> torch.Tensor:
    """(h4, w4) boundary probability of the image resized by `scale` (`masks.walk.scale`),
    averaged with the horizontal flip."""
    x = normalize_image(image).to(device)[None]
    if scale != 1.0:
        size = (round(x.shape[-2] * scale), round(x.shape[-1] * scale))
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    b = net(torch.cat([x, x.flip(-1)]))
    return (b[0] + b[1].flip(-1)) / 2


def load_walk_seed(cfg: Config, layout: RunLayout, image_id: str) -> dict[str, np.ndarray]:
    """`keys`, `cam` (the fused seed) and `walk`, the maps the walk propagates: the fused seed,
    or with `masks.walk.source=tran` the ViT-side M_tran (a CNN-only run has only the fused)."""
    arrays = read_seed_arrays(layout.seed_file(image_id))
    seed = fuse_seed(arrays, cfg.seeds.fusion)
    tran = switch(cfg, "masks.walk.source") == "tran" and "cam_tran" in arrays
    return {**seed, "walk": arrays["cam_tran"] if tran else seed["cam"]}


def walk(cfg: Config, boundary: torch.Tensor, cam: np.ndarray) -> np.ndarray:
    """Seed CAMs (K, H, W) → random-walk maps (K, h4, w4) on the boundary grid."""
    if cam.shape[0] == 0:
        return np.zeros((0, *boundary.shape), dtype=np.float32)
    small = F.interpolate(torch.from_numpy(cam)[None].to(boundary), size=boundary.shape,
                          mode="bilinear", align_corners=False)[0]
    w = cfg.masks.walk
    return random_walk(small, boundary, w.radius, w.beta, 2 ** w.exp_times,
                       damp_boundary=w.boundary_damp).float().cpu().numpy()


def to_image_size(rw: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if rw.shape[0] == 0:
        return np.zeros((0, *size), dtype=np.float32)
    return F.interpolate(torch.from_numpy(rw)[None], size=size, mode="bilinear",
                         align_corners=False)[0].numpy()


def crf_mask(cfg: Config, image: np.ndarray, rw_up: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """The soft second CRF: over [background score, normalised walk maps] as probabilities."""
    scores = rw_up / max(float(rw_up.max()), 1e-8) if rw_up.size else rw_up
    bg = np.full((1, *image.shape[:2]), cfg.masks.rule.sem_seg_bg, np.float32)
    planes = np.concatenate([bg, scores])
    probs = planes / np.clip(planes.sum(0, keepdims=True), 1e-8, None)
    refined = crf_probs(image, probs, **mask_crf_args(cfg))
    return np.concatenate([[0], keys])[refined.argmax(0)].astype(np.uint8)


def rule_masks(cfg: Config, rule: str, image: np.ndarray, rw_up: np.ndarray, keys: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray]:
    """(mask without CRF, mask with CRF, or the same when masks.rule.crf.enabled is off) by
    `rule`: `irn` = background score + soft CRF, `relative` = the authors' relative threshold +
    a hard-label CRF with label confidence `masks.rule.crf.gt_prob`."""
    m = cfg.masks.rule
    ids = np.concatenate([[0], keys]).astype(np.int64)
    if rule == "irn":
        plain = masks_from_rw(rw_up, keys, m.sem_seg_bg)
        return plain, crf_mask(cfg, image, rw_up, keys) if m.crf.enabled else plain
    if rule == "relative":
        labels = relative_labels(rw_up, m.relative_theta)
        plain = ids[labels].astype(np.uint8)
        if not m.crf.enabled:
            return plain, plain
        refined = crf_label(image, labels, len(ids), gt_prob=m.crf.gt_prob, **mask_crf_args(cfg))
        return plain, ids[refined].astype(np.uint8)
    raise ValueError(f"unknown mask rule '{rule}'; choose one of {', '.join(MASK_RULES)}")


def stamp(cfg: Config, layout: RunLayout, ids: list[str]) -> Stamp:
    """Current for the same boundary network and seeds (their fingerprints), fusion, walk and
    mask-rule settings and images. The mask CRF runs the IR-label CRF's iterations, so they key
    the masks too."""
    return Stamp(layout.masks, fingerprint(
        irn=stamp_of(layout.irn), fusion=cfg.seeds.fusion, seeds=stamp_of(layout.seeds),
        walk=resolved(cfg, "masks.walk"), rule=resolved(cfg, "masks.rule"),
        crf_iters=cfg.masks.ir_labels.crf.iters, ids=ids))


def _metrics(cfg: Config, conf: dict[tuple[str, bool], np.ndarray]) -> dict[str, float]:
    """mask_miou_<rule> for each rule (with its CRF when masks.rule.crf.enabled), and the chosen
    rule's as mask_miou and mask_miou_nocrf."""
    chosen = switch(cfg, "masks.rule.name")
    metrics = {f"mask_miou_{rule}": round(mean_iou(conf[rule, True])[0], 4)
               for rule in MASK_RULES}
    metrics["mask_miou"] = metrics[f"mask_miou_{chosen}"]
    metrics["mask_miou_nocrf"] = round(mean_iou(conf[chosen, False])[0], 4)
    return metrics


def _init_worker(cfg: Config, layout: RunLayout) -> None:
    # each worker is one of `masks.workers` processes: one thread each, or they fight for cores
    torch.set_num_threads(1)
    _WORKER.update(cfg=cfg, layout=layout, source=build_source(cfg, cfg.data.seed_split))


def mask_one(job: tuple[str, np.ndarray, bool]) -> dict:
    """One image in a worker: walk its seed over the boundary map, write the walk and the chosen
    rule's mask, score every rule. job: (image id, (h4, w4) boundary, keep the mask for a
    picture). Returns the image id, confusions keyed (rule, crf) and the chosen mask when
    asked."""
    image_id, boundary, keep = job
    cfg, layout, source = _WORKER["cfg"], _WORKER["layout"], _WORKER["source"]
    chosen = switch(cfg, "masks.rule.name")
    k = source.num_classes + 1
    seed = load_walk_seed(cfg, layout, image_id)
    image = source.load_image(image_id)
    rw = walk(cfg, torch.from_numpy(boundary), seed["walk"])
    layout.rw_file(image_id).parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(layout.rw_file(image_id), keys=seed["keys"], rw=rw.astype(np.float16))
    rw_up = to_image_size(rw, image.shape[:2])
    gt = source.load_mask(image_id) if source.has_masks else None
    result: dict = {"image_id": image_id, "confusions": {}, "mask": None}
    # only the chosen rule's mask is written; the other is scored when there is ground truth
    for rule in MASK_RULES if gt is not None else (chosen,):
        plain, mask = rule_masks(cfg, rule, image, rw_up, seed["keys"])
        if rule == chosen:
            save_label_png(layout.mask_file(image_id), mask)
            result["mask"] = mask if keep else None
        if gt is not None:
            result["confusions"][rule, False] = confusion_matrix(plain, gt, k)
            result["confusions"][rule, True] = confusion_matrix(mask, gt, k)
    return result


def _boundary_jobs(net, source: Source, ids: list[str], device: torch.device, scale: float
                   ) -> Iterator[tuple[str, np.ndarray, bool]]:
    """Boundary maps on the stage's device (GPU when present), one job per image, made as the
    pool asks for them; the first NUM_PICTURES images keep their masks for pictures."""
    for n, image_id in enumerate(ids):
        boundary = boundary_map(net, source.load_image(image_id), device, scale)
        yield image_id, boundary.float().cpu().numpy(), n < NUM_PICTURES


def run(cfg: Config, layout: RunLayout, reporter: Reporter, force: bool = False
        ) -> dict[str, float]:
    source = build_source(cfg, cfg.data.seed_split)
    ids = stage_ids(cfg, source, cfg.masks.max_images)
    require_files({i: layout.seed_file(i) for i in ids}, "seeds", "seeds")
    require_files({"the boundary network": layout.irn_checkpoint}, "checkpoint", "irn")
    current = stamp(cfg, layout, ids)
    if (recorded := skip_if_current(current, layout, "mask_", force)) is not None:
        return recorded
    device = resolve_device(cfg.train.device)
    net = load_boundary_net(layout, device)
    chosen = switch(cfg, "masks.rule.name")
    k = source.num_classes + 1
    conf = {(rule, crf): np.zeros((k, k), np.int64) for rule in MASK_RULES for crf in (False, True)}
    # the written masks' per-image counts: a bootstrap interval over images, and a sweep's
    # paired test of two trials over the images both scored
    image_counts: dict[str, np.ndarray] = {}
    # The walk and the CRFs (most of the time) run on `masks.workers` processes; the boundary
    # network stays here, on the device, and makes each image's map as the pool takes it in.
    jobs = _boundary_jobs(net, source, ids, device, cfg.masks.walk.scale)
    for result in parallel_map(mask_one, jobs, cfg.masks.workers, "masks", cfg.train.progress,
                               _init_worker, (cfg, layout), total=len(ids)):
        for key, counts in result["confusions"].items():
            conf[key] += counts
        if (chosen, True) in result["confusions"]:
            image_counts[result["image_id"]] = iou_counts(result["confusions"][chosen, True])
        if result["mask"] is not None and source.has_masks:
            image_id = result["image_id"]
            _picture(layout, reporter, image_id, source.load_image(image_id),
                     load_walk_seed(cfg, layout, image_id), result["mask"],
                     source.load_mask(image_id))
    current.write()
    if not source.has_masks:
        return {}
    metrics = _scores(cfg, layout, reporter, source, conf, image_counts, len(ids))
    reporter.log_summary(metrics)
    layout.update_summary(metrics)
    return metrics


def _scores(cfg: Config, layout: RunLayout, reporter: Reporter, source: Source,
            conf: dict[tuple[str, bool], np.ndarray], image_counts: dict[str, np.ndarray],
            num_images: int) -> dict[str, float]:
    """The metrics with the written masks' interval over images; their per-image counts and
    per-class IoU logged."""
    metrics = _metrics(cfg, conf)
    scored = ImageCounts(tuple(image_counts), np.stack(list(image_counts.values())))
    scored.save(layout.mask_image_counts)
    lo, hi = bootstrap_miou_ci(scored.counts)
    metrics.update(mask_miou_ci_lo=round(lo, 4), mask_miou_ci_hi=round(hi, 4),
                   mask_num_images=num_images)
    per_class = mean_iou(conf[switch(cfg, "masks.rule.name"), True])[1]
    iou = [None if np.isnan(v) else round(float(v), 3) for v in per_class]
    # one table artifact, not one metric chart per class
    reporter.log_table({"class": list(source.class_names), "iou": iou}, "masks/per_class_iou.json")
    reporter.log_artifact(layout.mask_image_counts, IMAGE_COUNTS_DIR)
    return metrics


def _picture(layout: RunLayout, reporter: Reporter, image_id: str, image: np.ndarray,
             seed: dict, mask: np.ndarray, gt: np.ndarray) -> None:
    """image | seed | IR label | mask | ground truth."""
    seed_label = cams_to_label(seed["cam"], seed["keys"], 0.15)  # IRN's fixed seed threshold
    panels = [image, colorize(seed_label), colorize(read_ir_label(layout, image_id)),
              colorize(mask), colorize(gt)]
    path = layout.pictures / f"masks_{image_id}.png"
    save_strip(path, panels, ["image", "seed", "IR label", "mask", "ground truth"])
    reporter.log_artifact(path, "pictures")
