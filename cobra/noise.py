"""The two noises a sweep's score carries, measured: which images were scored (a paired bootstrap
over the images two cells share) and which training seed was drawn (the spread of replicates).

A corpus-level mIoU is a ratio of pixel counts summed over images, so resampling images needs
each image's counts (`cobra.metrics.iou_counts`), not its own mIoU. Two cells scored on the same
images are compared image by image: one draw of images is applied to both, and the difference
of their mIoUs is what is bootstrapped. Plain numpy in, plain data out: no MLflow here."""

from __future__ import annotations

import io
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cobra.layout import atomic_write_bytes
from cobra.metrics import bootstrap_draws, miou_from_counts

# Paired bootstrap draws: enough for p down to 1/2000; one matrix product each way.
PAIRED_DRAWS = 2000
# Two-sided level of every test here.
ALPHA = 0.05
# Student's t, 97.5 % quantile, by degrees of freedom (two-sided 95 %); 1.96 past 30.
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
         2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
         2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t_quantile(df: int) -> float:
    """Two-sided 95 % quantile of Student's t with `df` degrees of freedom (df >= 1)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    return _T975[df - 1] if df <= len(_T975) else 1.96


# ----------------------------------------------------------------------------------------------
# Image noise


@dataclass(frozen=True)
class ImageCounts:
    """One run's per-image counts: `counts[i]` (3, K) belongs to image `ids[i]`."""

    ids: tuple[str, ...]
    counts: np.ndarray  # (N, 3, K) int

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        np.savez_compressed(buffer, ids=np.array(self.ids, dtype=str),
                            counts=np.asarray(self.counts, dtype=np.int64))
        return buffer.getvalue()

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, self.to_bytes())

    @classmethod
    def from_bytes(cls, data: bytes) -> ImageCounts:
        with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
            return cls(tuple(str(i) for i in arrays["ids"]), arrays["counts"])

    def select(self, ids: Sequence[str]) -> np.ndarray:
        """(len(ids), 3, K) counts of `ids`, in that order."""
        index = {image_id: i for i, image_id in enumerate(self.ids)}
        return np.asarray(self.counts)[[index[i] for i in ids]]


def pooled_counts(runs: Sequence[ImageCounts], ids: Sequence[str]) -> np.ndarray:
    """(len(ids), 3, K) counts of `ids` summed over a cell's replicate runs: the cell's pooled
    score is one mIoU over every replicate's pixels."""
    return np.sum([run.select(ids) for run in runs], axis=0, dtype=np.int64)


def shared_ids(*cells: Sequence[ImageCounts]) -> list[str]:
    """The images every run of every cell scored, in the first run's order."""
    runs = [run for cell in cells for run in cell]
    if not runs:
        return []
    common = set(runs[0].ids).intersection(*(run.ids for run in runs[1:]))
    return [i for i in runs[0].ids if i in common]


@dataclass(frozen=True)
class PairedTest:
    """mIoU of cell a minus cell b on the images both scored, with its bootstrap over images."""

    diff: float  # on all shared images
    lo: float  # 95 % percentile interval of the difference
    hi: float
    p: float  # two-sided: twice the smaller share of draws on either side of 0
    num_images: int
    num_draws: int

    @property
    def significant(self) -> bool:
        return self.p < ALPHA

    def p_text(self) -> str:
        floor = 1.0 / self.num_draws
        return f"p<{floor:.2g}" if self.p <= floor else f"p={self.p:.2g}"


def paired_bootstrap(a: np.ndarray, b: np.ndarray, num_draws: int = PAIRED_DRAWS,
                     seed: int = 0) -> PairedTest:
    """Paired bootstrap of mIoU(a) − mIoU(b) %. a, b: (N, 3, K) counts of the same N images in
    the same order; every draw resamples images once and sums both cells' counts over it."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired counts differ in shape: {a.shape} vs {b.shape}")
    n = a.shape[0]
    diff = float(miou_from_counts(a.sum(0)) - miou_from_counts(b.sum(0)))
    if n == 0:
        return PairedTest(float("nan"), float("nan"), float("nan"), 1.0, 0, num_draws)
    weights = np.zeros((num_draws, n))
    np.add.at(weights, (np.arange(num_draws)[:, None], bootstrap_draws(n, num_draws, seed)), 1.0)
    draws = [miou_from_counts((weights @ x.reshape(n, -1)).reshape(num_draws, *x.shape[1:]))
             for x in (a, b)]
    deltas = draws[0] - draws[1]
    deltas = deltas[np.isfinite(deltas)]
    lo, hi = np.quantile(deltas, [ALPHA / 2, 1 - ALPHA / 2])
    # a difference of exactly 0 counts on both sides: it is no evidence either way
    tail = min(np.mean(deltas <= 0), np.mean(deltas >= 0))
    p = min(1.0, max(2.0 * float(tail), 1.0 / num_draws))
    return PairedTest(diff, float(lo), float(hi), p, n, num_draws)


# ----------------------------------------------------------------------------------------------
# Training-seed noise


@dataclass(frozen=True)
class SeedNoise:
    """The spread of a score over training seeds at a fixed config: the replicates' pooled
    sample std (each cell's deviations from its own mean), with its degrees of freedom."""

    std: float
    df: int  # Σ (n_cell − 1)
    runs: int
    cells: int
    source: str  # where it was measured: "this sweep" or "sweep <name> (same base config)"

    def describe(self) -> str:
        return (f"seed std {self.std:.2f} from {self.runs} runs in {self.cells} "
                f"{'cell' if self.cells == 1 else 'cells'}, {self.source}")

    def threshold(self, n_a: int, n_b: int) -> float:
        """The smallest gap between two cell means (n_a and n_b seeds each) that is more than
        seed noise: t(df) standard errors of the difference."""
        return t_quantile(self.df) * self.std * math.sqrt(1.0 / n_a + 1.0 / n_b)


def pooled_seed_noise(groups: Sequence[Sequence[float]], source: str) -> SeedNoise | None:
    """Seed noise from groups of replicate values (one group per cell; groups of one run carry
    no spread and are skipped); None when no group has two runs."""
    replicated = [list(g) for g in groups if len(g) >= 2]
    if not replicated:
        return None
    df = sum(len(g) - 1 for g in replicated)
    squares = sum((len(g) - 1) * statistics.variance(g) for g in replicated)
    return SeedNoise(math.sqrt(squares / df), df, sum(map(len, replicated)), len(replicated),
                     source)
