"""Evaluation metrics: one confusion matrix over a whole set, mIoU from it, classification mAP.

mIoU follows the field's protocol (SPEC "Evaluation"): accumulate a single confusion matrix over
every pixel of every image (never an average of per-image scores), ignore label 255, include
background, and leave classes absent from both prediction and ground truth out of the mean."""

import warnings

import numpy as np


def confusion_matrix(pred: np.ndarray, gt: np.ndarray, num_classes: int,
                     ignore_index: int = 255) -> np.ndarray:
    """(K, K) int64 counts, rows = ground truth, columns = prediction.

    pred, gt: integer arrays of the same shape with values in [0, K) (gt may hold ignore_index).
    Works in the inputs' own dtype until the one int64 index bincount needs (a VOC-sized set
    costs about what bare bincount does; benchmarks/bench.py measures it)."""
    pred, gt = np.asarray(pred).reshape(-1), np.asarray(gt).reshape(-1)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction has {pred.size} pixels but ground truth has {gt.size}")
    keep = gt != ignore_index
    pred, gt = pred[keep], gt[keep]
    _check_range(pred, num_classes, "prediction values must lie in")
    _check_range(gt, num_classes, "ground-truth values must lie in", f" or be {ignore_index}")
    counts = np.bincount(gt.astype(np.int64) * num_classes + pred,
                         minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def _check_range(values: np.ndarray, num_classes: int, what: str, tail: str = "") -> None:
    if values.size and (values.min() < 0 or values.max() >= num_classes):
        raise ValueError(f"{what} [0, {num_classes}){tail}, got [{values.min()}, {values.max()}]")


def iou_per_class(confusion: np.ndarray) -> np.ndarray:
    """IoU in [0, 1] per class; NaN where the class is absent from prediction and ground truth."""
    confusion = np.asarray(confusion, dtype=np.float64)
    tp = np.diag(confusion)
    union = confusion.sum(0) + confusion.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / np.where(union > 0, union, 1.0), np.nan)


def mean_iou(confusion: np.ndarray) -> tuple[float, np.ndarray]:
    """(mIoU %, per-class IoU %) from a confusion matrix; absent classes are NaN and skipped."""
    iou = iou_per_class(confusion) * 100.0
    valid = ~np.isnan(iou)
    miou = float(iou[valid].mean()) if valid.any() else float("nan")
    return miou, iou


def average_precision(scores: np.ndarray, positives: np.ndarray) -> float:
    """Area under the precision-recall step curve for one class (ties share one threshold).

    scores: (N,) any real; positives: (N,) bool. NaN when there is no positive."""
    scores = np.asarray(scores, dtype=np.float64)
    positives = np.asarray(positives).astype(bool)
    n_pos = int(positives.sum())
    if n_pos == 0:
        return float("nan")
    order = np.argsort(-scores, kind="stable")
    scores, positives = scores[order], positives[order]
    tp = np.cumsum(positives)
    # Evaluate only at the last index of each run of equal scores, so tied items count together.
    last_of_tie = np.r_[np.flatnonzero(np.diff(scores)), scores.size - 1]
    tp = tp[last_of_tie]
    precision = tp / (last_of_tie + 1)
    recall = tp / n_pos
    recall_gain = np.diff(np.r_[0.0, recall])
    return float((recall_gain * precision).sum())


def mean_average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    """Classification mAP (%) over classes with at least one positive. scores, labels: (N, C)."""
    scores, labels = np.asarray(scores), np.asarray(labels)
    aps = [average_precision(scores[:, c], labels[:, c] > 0.5) for c in range(labels.shape[1])]
    aps = [ap for ap in aps if not np.isnan(ap)]
    return float(np.mean(aps) * 100.0) if aps else float("nan")


# ------------------------------------------------------------------------------------------------
# Uncertainty over images: mIoU is a ratio of pixel counts summed over the set, so resampling
# images needs each image's counts, not its own mIoU. Three (K,) vectors per image suffice:
# true positives, ground-truth pixels and predicted pixels per class (union = gt + pred − tp).


def iou_counts(confusion: np.ndarray) -> np.ndarray:
    """(3, K) int64: per class, true positives, ground-truth pixels, predicted pixels."""
    confusion = np.asarray(confusion, dtype=np.int64)
    return np.stack([np.diag(confusion), confusion.sum(1), confusion.sum(0)])


def miou_from_counts(counts: np.ndarray) -> np.ndarray:
    """mIoU % of (..., 3, K) summed counts, over the leading axes (NaN where no class occurs);
    the same protocol as `mean_iou` (classes absent from prediction and ground truth skipped)."""
    counts = np.asarray(counts, dtype=np.float64)
    tp, gt, pred = counts[..., 0, :], counts[..., 1, :], counts[..., 2, :]
    union = gt + pred - tp
    iou = np.where(union > 0, tp / np.where(union > 0, union, 1.0), np.nan) * 100.0
    with warnings.catch_warnings():  # an all-absent draw is NaN, not a warning
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(iou, axis=-1)


def bootstrap_draws(num_images: int, num_draws: int, seed: int = 0) -> np.ndarray:
    """(num_draws, num_images) image indices drawn with replacement (fixed seed: a run's
    interval does not change when it is re-scored)."""
    return np.random.default_rng(seed).integers(0, num_images, size=(num_draws, num_images))


def bootstrap_miou_ci(per_image: np.ndarray, num_draws: int = 1000, level: float = 0.95,
                      seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of mIoU % over images; per_image: (N, 3, K) `iou_counts`
    of each image. Each draw's counts are a weighted sum (weights = how often each image was
    drawn), so all draws cost one matrix product instead of N·draws additions."""
    per_image = np.asarray(per_image, dtype=np.float64)
    n = per_image.shape[0]
    if n == 0:
        return float("nan"), float("nan")
    draws = bootstrap_draws(n, num_draws, seed)
    weights = np.zeros((num_draws, n))
    np.add.at(weights, (np.arange(num_draws)[:, None], draws), 1.0)
    sums = (weights @ per_image.reshape(n, -1)).reshape(num_draws, *per_image.shape[1:])
    scores = miou_from_counts(sums)
    alpha = (1.0 - level) / 2
    lo, hi = np.nanquantile(scores, [alpha, 1.0 - alpha])
    return float(lo), float(hi)
