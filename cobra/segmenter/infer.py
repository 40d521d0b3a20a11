"""Multi-scale (+ flip) inference of the segmentation network and mIoU on a split."""

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from cobra.config import SegmentConfig
from cobra.data.source import Source
from cobra.data.transforms import normalize_image, resize
from cobra.errors import DataError
from cobra.metrics import confusion_matrix, iou_counts, mean_iou
from cobra.pictures import save_label_png


def _device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


@torch.no_grad()
def predict(model: nn.Module, image: np.ndarray, scales: list[float] | tuple[float, ...],
            flip: bool) -> np.ndarray:
    """(H, W, 3) uint8 -> (C+1, H, W) float32 softmax averaged over scales (and h-flips)."""
    if not scales:
        raise ValueError("predict needs at least one scale")
    model.eval()
    h, w = image.shape[:2]
    x = normalize_image(image).to(_device(model))
    total: torch.Tensor | None = None
    for scale in scales:
        xs = resize(x, max(1, round(h * scale)), max(1, round(w * scale)))
        batch = torch.stack([xs, xs.flip(-1)]) if flip else xs[None]
        probs = model(batch).float().softmax(1)
        if flip:
            probs = (probs[0] + probs[1].flip(-1))[None] / 2
        # Bilinear weights are convex, so resized probabilities still sum to 1 per pixel.
        probs = F.interpolate(probs, size=(h, w), mode="bilinear", align_corners=False)[0]
        total = probs if total is None else total + probs
    assert total is not None
    return (total / len(scales)).cpu().numpy().astype(np.float32)


def predict_and_score(model: nn.Module, source: Source, ids: list[str], cfg: SegmentConfig,
                      out_dir: Path | None,
                      crf_fn: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
                      progress: bool = True) -> dict:
    """Predict every id (cfg.scales, cfg.flip, then `crf_fn(image, probs)` when given), argmax.

    Writes `out_dir/<id>.png` palette PNGs when out_dir is set; scores one confusion matrix over
    all pixels when the source has masks. Returns {"seg_miou": % or None, "per_class":
    {name: IoU % or None (class absent)}, "num_images": n, "image_counts": (n, 3, K) each
    image's `iou_counts` (for an interval over images)}; without masks the scores are empty."""
    ids = list(ids)
    if cfg.max_images is not None:
        ids = ids[:cfg.max_images]
    num_labels = source.num_classes + 1
    scored = bool(getattr(source, "has_masks", False))
    confusion = np.zeros((num_labels, num_labels), dtype=np.int64)
    image_counts = []
    for image_id in tqdm(ids, desc="segment eval", disable=not progress, leave=False):
        image = source.load_image(image_id)
        probs = predict(model, image, cfg.scales, cfg.flip)
        if crf_fn is not None:
            probs = crf_fn(image, probs)
        label = probs.argmax(0).astype(np.uint8)
        if out_dir is not None:
            save_label_png(Path(out_dir) / f"{image_id}.png", label)
        if scored:
            gt = source.load_mask(image_id)
            if gt.shape != label.shape:
                raise DataError(f"ground-truth mask of '{image_id}' is {gt.shape[1]}x"
                                f"{gt.shape[0]} but its image is {label.shape[1]}x"
                                f"{label.shape[0]}; fix the dataset")
            image_confusion = confusion_matrix(label, gt, num_labels)
            confusion += image_confusion
            image_counts.append(iou_counts(image_confusion))
    if not scored:
        return {"seg_miou": None, "per_class": {}, "num_images": len(ids), "image_counts": None}
    miou, per_class = mean_iou(confusion)
    return {"seg_miou": None if np.isnan(miou) else miou,
            "per_class": {name: None if np.isnan(v) else float(v)
                          for name, v in zip(source.class_names, per_class, strict=True)},
            "num_images": len(ids),
            "image_counts": np.stack(image_counts) if image_counts else np.zeros(
                (0, 3, num_labels), dtype=np.int64)}
