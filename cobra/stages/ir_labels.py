"""Stage `ir_labels`: confident foreground / background / unknown (255) labels from the fused
seeds, each side refined with denseCRF (IRN's `cam_to_ir_label`, SPEC "Masks").

Thresholds are fixed (`masks.ir_labels.conf_fg` / `conf_bg`, IRN) or per image from A_obj
(`masks.ir_labels.threshold_source=aobj`, the paper's idea in the authors' rule). Scored against
ground truth as precision (confident pixels that are right) and coverage (pixels that are
confident)."""

from typing import Any

import numpy as np

from cobra.config import Config, resolved, switch
from cobra.data import build_source
from cobra.layout import RunLayout
from cobra.ops.confidence import aobj_thresholds, ir_label, ir_label_quality
from cobra.pictures import save_label_png
from cobra.reporting import Reporter
from cobra.stages.common import (
    Stamp,
    crf_kernels,
    fingerprint,
    parallel_map,
    require_files,
    skip_if_current,
    stage_ids,
    stamp_of,
)
from cobra.stages.outputs import load_seed

_WORKER: dict[str, Any] = {}

# What this stage reports.
METRICS = ("ir_label_precision", "ir_label_coverage", "ir_label_num_images")


def crf_args(cfg: Config) -> dict[str, float]:
    """`masks.ir_labels.crf` as the arguments of `cobra.ops.crf`."""
    crf = cfg.masks.ir_labels.crf
    return {"gt_prob": crf.gt_prob, **crf_kernels(crf, crf.iters)}


def thresholds(cfg: Config, a_obj: np.ndarray | None) -> tuple[float, float]:
    """(conf_fg, conf_bg) for one image."""
    m = cfg.masks.ir_labels
    if switch(cfg, "masks.ir_labels.threshold_source") == "aobj" and a_obj is not None:
        return aobj_thresholds(a_obj, m.aobj_percentile, m.aobj_round, m.aobj_gap)
    return m.conf_fg, m.conf_bg


def _init_worker(cfg: Config, layout: RunLayout) -> None:
    _WORKER.update(cfg=cfg, layout=layout, source=build_source(cfg, cfg.data.seed_split))


def _make_one(image_id: str) -> tuple[int, int, int]:
    cfg, layout, source = _WORKER["cfg"], _WORKER["layout"], _WORKER["source"]
    seed = load_seed(layout.seed_file(image_id), cfg.seeds.fusion)
    image = source.load_image(image_id)
    conf_fg, conf_bg = thresholds(cfg, seed["a_obj"])
    label = ir_label(image, seed["cam"], seed["keys"], conf_fg, conf_bg, crf_args(cfg))
    save_label_png(layout.ir_label_file(image_id), label)
    if not source.has_masks:
        return 0, 0, 0
    return ir_label_quality(label, source.load_mask(image_id))


def stamp(cfg: Config, layout: RunLayout, ids: list[str]) -> Stamp:
    """Current for the same seeds (their fingerprint), fusion, IR-label settings and images."""
    return Stamp(layout.ir_labels, fingerprint(
        seeds=stamp_of(layout.seeds), fusion=cfg.seeds.fusion,
        settings=resolved(cfg, "masks.ir_labels"), ids=ids))


def run(cfg: Config, layout: RunLayout, reporter: Reporter, force: bool = False
        ) -> dict[str, float]:
    source = build_source(cfg, cfg.data.seed_split)
    ids = stage_ids(cfg, source, cfg.masks.max_images)
    require_files({i: layout.seed_file(i) for i in ids}, "seeds", "seeds")
    current = stamp(cfg, layout, ids)
    if (recorded := skip_if_current(current, layout, "ir_label", force)) is not None:
        return recorded
    layout.ir_labels.mkdir(parents=True, exist_ok=True)
    counts = np.zeros(3, dtype=np.int64)
    for result in parallel_map(_make_one, ids, cfg.masks.workers, "ir labels",
                               cfg.train.progress, _init_worker, (cfg, layout)):
        counts += result
    current.write()
    confident, correct, total = counts
    metrics = {} if total == 0 else {
        "ir_label_precision": round(100.0 * correct / max(confident, 1), 4),
        "ir_label_coverage": round(100.0 * confident / total, 4),
        "ir_label_num_images": len(ids)}
    reporter.log_summary(metrics)
    layout.update_summary(metrics)
    return metrics
