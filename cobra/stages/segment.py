"""Stage `segment`: a segmentation network (DeepLabV3+ or SegFormer, segmentation-models-pytorch)
trained on the masks of the seed split, scored on `segment.eval_split` with multi-scale + flip
inference and optional denseCRF; VOC-server PNGs for `segment.test_split`."""

import torch

from cobra import pretrain
from cobra.checkpoint import load_checkpoint, save_checkpoint
from cobra.config import Config
from cobra.data import build_source
from cobra.layout import IMAGE_COUNTS_DIR, RunLayout
from cobra.metrics import bootstrap_miou_ci
from cobra.noise import ImageCounts
from cobra.ops.crf import crf_probs
from cobra.reporting import Reporter
from cobra.runtime import resolve_device
from cobra.segmenter import MaskDataset, build_segmenter, predict_and_score, train_segmenter
from cobra.segmenter.model import BUILTIN, builtin_encoder_name, load_builtin_encoder
from cobra.stages.common import (
    Stamp,
    fingerprint,
    mask_crf_args,
    require_files,
    skip_if_current,
    stage_ids,
    stamp_of,
)

# Settings that change only how the trained network is scored: changing one re-scores the saved
# network; a change to anything else it was trained from (the masks, the seed, the training
# settings) trains a new one.
SCORING_ONLY = frozenset({"eval_split", "test_split", "scales", "flip", "crf", "max_images"})
# What this stage reports (`_scores`).
METRICS = ("seg_miou", "seg_miou_ci_lo", "seg_miou_ci_hi", "seg_num_images")


def _trained_from(cfg: Config, layout: RunLayout) -> str:
    """The fingerprint of what the network is trained from, kept in its checkpoint."""
    settings = {k: v for k, v in vars(cfg.segment).items() if k not in SCORING_ONLY}
    return fingerprint(masks=stamp_of(layout.masks), seed=cfg.train.seed, segment=settings)


def _crf_fn(cfg: Config):
    """Test-time denseCRF with the masks' second-CRF settings, or None when off."""
    if not cfg.segment.crf:
        return None
    args = mask_crf_args(cfg)
    return lambda image, probs: crf_probs(image, probs, **args)


def _network(cfg: Config, layout: RunLayout, train_source, ids: list[str], reporter: Reporter,
             device: torch.device, force: bool) -> torch.nn.Module:
    """The saved network when it was trained from the current masks and settings (and no
    --force), else a newly trained one, saved with what it was trained from."""
    s = cfg.segment
    trained_from = _trained_from(cfg, layout)
    torch.manual_seed(cfg.train.seed)
    model = build_segmenter(s, train_source.num_classes)
    if layout.segment_checkpoint.exists() and not force:
        state = load_checkpoint(layout.segment_checkpoint, device)
        if state["extra"].get("trained_from") == trained_from:
            model.load_state_dict(state["model"])
            return model.to(device)
    if s.encoder_weights == BUILTIN:
        name = builtin_encoder_name(s)
        folder, _ = pretrain.ensure(cfg.pretrain, [("cnn", name)], progress=cfg.train.progress,
                                    device=cfg.train.device)
        load_builtin_encoder(model, folder / f"{name}.safetensors")
    model = model.to(device)
    dataset = MaskDataset(train_source, layout.mask_file, ids, s.crop, tuple(s.resize_long))
    train_segmenter(model, dataset, s, device, progress=cfg.train.progress,
                    on_epoch=lambda epoch, m: reporter.log_metrics(m, step=epoch))
    save_checkpoint(layout.segment_checkpoint, model=model, cfg=cfg, epoch=s.epochs - 1,
                    extra={"trained_from": trained_from})
    return model


def run(cfg: Config, layout: RunLayout, reporter: Reporter, force: bool = False
        ) -> dict[str, float]:
    s = cfg.segment
    train_source = build_source(cfg, cfg.data.seed_split)
    ids = stage_ids(cfg, train_source, cfg.masks.max_images)
    require_files({i: layout.mask_file(i) for i in ids}, "masks", "masks")
    current = Stamp(layout.segment, fingerprint(masks=stamp_of(layout.masks), seed=cfg.train.seed,
                                                segment=vars(s)))
    if (recorded := skip_if_current(current, layout, "seg_", force)) is not None:
        return recorded
    device = resolve_device(cfg.train.device)
    model = _network(cfg, layout, train_source, ids, reporter, device, force)
    model.eval()
    eval_source = build_source(cfg, s.eval_split)
    eval_ids = list(eval_source.ids)[: s.max_images] if s.max_images else list(eval_source.ids)
    result = predict_and_score(model, eval_source, eval_ids, s, layout.segment / "pred",
                               _crf_fn(cfg), progress=cfg.train.progress)
    metrics = _scores(result, eval_ids, layout) if eval_source.has_masks else {}
    if s.test_split:
        test_source = build_source(cfg, s.test_split)
        predict_and_score(model, test_source, list(test_source.ids), s,
                          layout.segment / f"{s.test_split}_png", _crf_fn(cfg),
                          progress=cfg.train.progress)
    current.write()
    if metrics:
        reporter.log_artifact(layout.seg_image_counts, IMAGE_COUNTS_DIR)
    reporter.log_summary(metrics)
    layout.update_summary(metrics)
    return metrics


def _scores(result: dict, ids: list[str], layout: RunLayout) -> dict[str, float]:
    """seg_miou with the images it covers and its bootstrap interval over them; each image's
    counts are kept (`image_counts/segment.npz`) for a paired comparison of two runs."""
    counts = ImageCounts(tuple(ids[:len(result["image_counts"])]), result["image_counts"])
    counts.save(layout.seg_image_counts)
    lo, hi = bootstrap_miou_ci(counts.counts)
    return {"seg_miou": round(float(result["seg_miou"]), 4), "seg_miou_ci_lo": round(lo, 4),
            "seg_miou_ci_hi": round(hi, 4), "seg_num_images": result["num_images"]}
