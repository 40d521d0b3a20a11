"""A sweep's cells with their noise: mean ± std over replicate training seeds, how many runs,
on how many images, the bootstrap interval over images, the paper's published value, and
whether each cell's difference from the best is more than noise.

Plain TrialRecords in, plain data out: no MLflow here (`cobra.results` and the sweep's parent
run render it)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from cobra.paper import paper_value
from cobra.tracking import TrialRecord, sanitize_key

# Two standard errors of the difference of two means: about a 95 % two-sided test when the
# replicate spread is roughly normal; a difference below it is not evidence of a real effect.
NOISE_SE_MULTIPLE = 2.0
# Where a metric's image count and bootstrap interval over images are reported.
COMPANIONS = {"seed_miou": "seed", "mask_miou": "mask"}


@dataclass
class Cell:
    """One point of the sweep (the swept values, replicate seeds pooled)."""

    point: dict[str, Any]
    values: list[float] = field(default_factory=list)
    run_ids: list[str] = field(default_factory=list)
    run_names: list[str] = field(default_factory=list)
    num_images: list[float] = field(default_factory=list)
    intervals: list[tuple[float, float]] = field(default_factory=list)
    paper: float | None = None
    verdict: str = ""

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def std(self) -> float:
        """Sample standard deviation over replicates (n − 1); NaN for a single run."""
        return statistics.stdev(self.values) if self.n >= 2 else float("nan")

    @property
    def standard_error(self) -> float:
        return self.std / math.sqrt(self.n) if self.n >= 2 else float("nan")

    @property
    def interval(self) -> tuple[float, float] | None:
        """The replicates' bootstrap 95 % intervals over images, averaged (None if absent)."""
        if not self.intervals:
            return None
        return (statistics.fmean(lo for lo, _ in self.intervals),
                statistics.fmean(hi for _, hi in self.intervals))


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _point(trial: TrialRecord, axes: Sequence[str]) -> tuple:
    return tuple(trial.params.get(a, "None") for a in axes)


def parse_param(value: str) -> Any:
    """MLflow stores params as strings; give numbers back their order (2 < 10)."""
    for cast in (int, float):
        try:
            return cast(value)
        except (TypeError, ValueError):
            pass
    return value


def group_cells(trials: Sequence[TrialRecord], metric: str, axes: Sequence[str],
                sweep: str | None = None) -> list[Cell]:
    """FINISHED trials with a finite `metric`, pooled by their values of `axes`."""
    key = sanitize_key(metric)
    prefix = COMPANIONS.get(metric)
    cells: dict[tuple, Cell] = {}
    for trial in trials:
        value = trial.metrics.get(key)
        if trial.status != "FINISHED" or not _finite(value):
            continue
        point = _point(trial, axes)
        cell = cells.setdefault(point, Cell({a: parse_param(v) for a, v in zip(axes, point,
                                                                           strict=True)}))
        cell.values.append(float(value))
        cell.run_ids.append(trial.run_id)
        cell.run_names.append(trial.run_name)
        if prefix:
            images = trial.metrics.get(f"{prefix}_num_images")
            lo, hi = (trial.metrics.get(f"{metric}_ci_{end}") for end in ("lo", "hi"))
            if _finite(images):
                cell.num_images.append(images)
            if _finite(lo) and _finite(hi):
                cell.intervals.append((lo, hi))
    for cell in cells.values():
        cell.paper = paper_value(sweep, metric, cell.point)
    return list(cells.values())


def verdict(best: Cell, cell: Cell) -> str:
    """Is `cell`'s gap to the best more than noise? Training-seed spread when both cells have
    replicates; otherwise whether their bootstrap intervals over images overlap."""
    if cell is best:
        return "best"
    gap = abs(best.mean - cell.mean)
    if best.n >= 2 and cell.n >= 2:
        noise = NOISE_SE_MULTIPLE * math.hypot(best.standard_error, cell.standard_error)
        side = "within noise" if gap <= noise else "beyond noise"
        return f"{side} (gap {gap:.2f} vs 2·SE {noise:.2f}, seeds)"
    if best.interval and cell.interval:
        overlap = cell.interval[0] <= best.interval[1] and best.interval[0] <= cell.interval[1]
        side = "within noise" if overlap else "beyond noise"
        return f"{side} (gap {gap:.2f}; 95% CIs over images {'overlap' if overlap else 'apart'})"
    return f"unknown (gap {gap:.2f}; one run, no interval: add repeats)"


def rank_cells(cells: list[Cell], mode: str = "max") -> list[Cell]:
    """Best first, each with its verdict against the best."""
    ordered = sorted(cells, key=lambda c: c.mean, reverse=(mode == "max"))
    for cell in ordered:
        cell.verdict = verdict(ordered[0], cell)
    return ordered


def format_value(cell: Cell) -> str:
    """`56.70 ± 0.40` (or `56.70` for one run)."""
    return f"{cell.mean:.2f}" if cell.n < 2 else f"{cell.mean:.2f} ± {cell.std:.2f}"


def rows(cells: Sequence[Cell], axes: Sequence[str], metric: str,
         link=None) -> tuple[list[str], list[list[str]]]:
    """Header and body of the cells table as strings; `link(cell)` names the runs (markdown)."""
    has_paper = any(c.paper is not None for c in cells)
    header = [*(a.rsplit(".", 1)[-1] for a in axes), f"{metric} (mean ± std)", "n", "images",
              "95% CI (images)", *(["paper"] if has_paper else []), "vs best",
              *(["runs"] if link else [])]
    body = []
    for c in cells:
        images = sorted({int(i) for i in c.num_images})
        interval = c.interval
        body.append([*(str(c.point[a]) for a in axes), format_value(c), str(c.n),
                     "/".join(map(str, images)) or "?",
                     f"[{interval[0]:.2f}, {interval[1]:.2f}]" if interval else "—",
                     *([f"{c.paper:.1f}" if c.paper is not None else "—"] if has_paper else []),
                     c.verdict, *([link(c)] if link else [])])
    return header, body
