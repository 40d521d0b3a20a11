"""Seed math (paper §3.4): normalisation, fusion of M_cnn and M_tran, background thresholds.

Everything here works on one image's class maps `cam: (K, H, W)` for its K positive classes
`keys` (1..C) and is shared by the `seeds` stage, its evaluation and the IR-label stage.
Two background protocols are kept side by side because they are not comparable (SPEC "Seeds"):
a fixed background score swept over a grid (IRN), and a per-image score taken as the θ-th
percentile of the normalised A_obj (the paper's)."""

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from cobra.metrics import confusion_matrix, iou_counts, mean_iou, miou_from_counts

FUSION_MODES = ("cnn", "tran", "avg", "max", "fuse", "fuse_code")


def _maximum(a, b):
    return torch.maximum(a, b) if isinstance(a, torch.Tensor) else np.maximum(a, b)


def fuse(m_cnn, m_tran, mode: str = "fuse"):
    """Combine the two branches' class maps (numpy arrays or tensors of one shape; Table 5).

    `fuse` is the paper's M_fuse = max((M_cnn + M_tran) / 2, M_tran); `fuse_code` evaluates the
    authors' written form (max(M_cnn, M_tran) + M_tran) / 2, which is the same function."""
    if mode == "cnn":
        return m_cnn
    if mode == "tran":
        return m_tran
    if mode == "avg":
        return (m_cnn + m_tran) / 2
    if mode == "max":
        return _maximum(m_cnn, m_tran)
    if mode == "fuse":
        return _maximum((m_cnn + m_tran) / 2, m_tran)
    if mode == "fuse_code":
        return (_maximum(m_cnn, m_tran) + m_tran) / 2
    raise ValueError(f"unknown fusion mode '{mode}'; choose one of {', '.join(FUSION_MODES)}")


def max_normalize(cam: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    """(K, H, W) non-negative maps → each class divided by its own maximum, in [0, 1]."""
    peak = cam.reshape(cam.shape[0], -1).max(axis=1) if cam.shape[0] else np.zeros(0)
    return cam / (peak[:, None, None] + eps)


def normalize_attention(a_obj: np.ndarray) -> np.ndarray:
    """(H, W) A_obj → min-max scaled to [0, 1], so percentiles do not depend on its raw scale
    (which grows with scales, flips and token count)."""
    lo, hi = float(a_obj.min()), float(a_obj.max())
    return (a_obj - lo) / (hi - lo) if hi > lo else np.zeros_like(a_obj)


def cams_to_label(cam: np.ndarray, keys: np.ndarray, bg_score: float) -> np.ndarray:
    """(K, H, W) maps + a background score → (H, W) int64 class ids (0 = background).

    A pixel takes the class with the highest map unless no map beats `bg_score` (a tie goes to
    background, as argmax over [bg, maps] does)."""
    peak, label = _best_class(cam, keys)
    return np.where(peak > bg_score, label, 0)


def _best_class(cam: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(H, W) highest map value and (H, W) int64 class id of that map (0 when K = 0)."""
    if cam.shape[0] == 0:
        zeros = np.zeros(cam.shape[1:], dtype=np.int64)
        return zeros.astype(cam.dtype), zeros
    return cam.max(axis=0), np.asarray(keys, dtype=np.int64)[cam.argmax(axis=0)]


def percentile_background(a_obj: np.ndarray, theta: float) -> float:
    """The paper's per-image background score: θ-th percentile of the normalised A_obj."""
    return float(np.percentile(a_obj, theta))


@dataclass
class ThresholdSweep:
    """One confusion matrix per candidate threshold, accumulated over a whole set of images."""

    num_classes: int  # K = C + 1, background included
    thresholds: Sequence[float]
    confusions: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        k = self.num_classes
        self.confusions = np.zeros((len(self.thresholds), k, k), dtype=np.int64)
        # per image and threshold: (3, K) `iou_counts`, for intervals over images and for
        # choosing the threshold on other images than those scored (int32: pixel counts)
        self.image_counts: list[np.ndarray] = []

    def add(self, cam: np.ndarray, keys: np.ndarray, gt: np.ndarray,
            bg_scores: Sequence[float]) -> None:
        """Score one image at every threshold; bg_scores[i] is the background score that
        thresholds[i] means for this image (the threshold itself, or a percentile of A_obj)."""
        peak, label = _best_class(cam, keys)  # once per image, not once per threshold
        counts = np.zeros((len(bg_scores), 3, self.num_classes), dtype=np.int32)
        for i, bg in enumerate(bg_scores):
            pred = np.where(peak > bg, label, 0)
            confusion = confusion_matrix(pred, gt, self.num_classes)
            self.confusions[i] += confusion
            counts[i] = iou_counts(confusion)
        self.image_counts.append(counts)

    def counts_at(self, threshold: float) -> np.ndarray:
        """(N, 3, K) per-image counts at one of the thresholds."""
        i = list(self.thresholds).index(threshold)
        return np.stack([c[i] for c in self.image_counts]) if self.image_counts else np.zeros(
            (0, 3, self.num_classes), dtype=np.int32)

    def cross_fitted(self) -> tuple[float, list[float]]:
        """mIoU % with each image scored at the threshold chosen on the *other* images: the
        set is split into two folds (even / odd positions), each fold's best threshold is
        picked on the other fold, and the two folds' counts are summed. Returns (mIoU, the two
        thresholds). An honest score: no image helps pick its own threshold."""
        counts = np.stack(self.image_counts)  # (N, T, 3, K)
        folds = [np.arange(len(counts))[f::2] for f in (0, 1)]
        total = np.zeros(counts.shape[2:], dtype=np.int64)
        chosen = []
        for fold, other in ((folds[0], folds[1]), (folds[1], folds[0])):
            scores = miou_from_counts(counts[other].sum(0, dtype=np.int64))
            i = int(np.nanargmax(scores)) if np.isfinite(scores).any() else 0
            chosen.append(float(self.thresholds[i]))
            total += counts[fold, i].sum(0, dtype=np.int64)
        return float(miou_from_counts(total)), chosen

    def best(self) -> tuple[float, float, np.ndarray]:
        """(threshold, mIoU %, per-class IoU %) of the threshold with the highest mIoU."""
        scores = [mean_iou(c)[0] for c in self.confusions]
        i = int(np.nanargmax(scores))
        miou, per_class = mean_iou(self.confusions[i])
        return float(self.thresholds[i]), miou, per_class

    def curve(self) -> dict[float, float]:
        """mIoU % at every threshold (for plots and the eval file)."""
        return {float(t): mean_iou(c)[0]
                for t, c in zip(self.thresholds, self.confusions, strict=True)}
