"""A sweep's cells with their noise: mean ± std over replicate training seeds, how many runs,
on how many images, the bootstrap interval over images, the paper's published value, and
whether each cell's gap to the best is more than noise, counting both noises a score carries
(`cobra.noise`): which training seed was drawn, and which images were scored.

Plain TrialRecords in, plain data out: no MLflow here (`cobra.results` gathers each run's
per-image counts and the seed-noise estimate, and renders the cells)."""

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from cobra.noise import (
    ImageCounts,
    PairedTest,
    SeedNoise,
    paired_bootstrap,
    pooled_counts,
    pooled_seed_noise,
    shared_ids,
)
from cobra.paper import paper_value
from cobra.tracking import TrialRecord, sanitize_key

# Where a metric's image count and bootstrap interval over images are reported.
COMPANIONS = {"seed_miou": "seed", "mask_miou": "mask"}
# Other scores of the same stage a reader wants beside the metric: column title → metric.
# The `diag/*` columns are the mechanism's own health (cobra/diagnostics.py, last epoch): how
# precise L_cap's and L_sap's positives are on object anchors, and each loss's gradient on its
# branch as a multiple of L_cls's, so a k or λ cell that wins or loses says why.
SIDE_SCORES = {"seed_miou": {"heldout": "seed_miou_heldout", "A_obj": "seed_miou_aobj",
                             "CAP⁺ prec": "diag/cap_pos_precision_fg",
                             "SAP⁺ prec": "diag/sap_pos_precision_fg",
                             "CAP/cls grad": "diag/ratio_cnn_cap",
                             "SAP/cls grad": "diag/ratio_vit_sap"}}
# What a verdict of "unknown" asks for: enough seeds to measure the seed spread at all.
REPEATS_HINT = "add `repeats: 3` to the sweep file"


@dataclass(frozen=True)
class Verdict:
    """A cell against the best: a short label (`best`, `behind`, `within seed noise`, `within
    image noise`, `beyond seed noise`, `unknown`), the numbers behind it in a few words
    (`brief`), and a sentence that names each noise it counted (`detail`)."""

    label: str
    brief: str = ""
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.label}: {self.detail}" if self.detail else self.label

    def short(self) -> str:
        return f"{self.label} ({self.brief})" if self.brief else self.label


@dataclass
class Cell:
    """One point of the sweep (the swept values, replicate seeds pooled)."""

    point: dict[str, Any]
    values: list[float] = field(default_factory=list)
    run_ids: list[str] = field(default_factory=list)
    run_names: list[str] = field(default_factory=list)
    num_images: list[float] = field(default_factory=list)
    intervals: list[tuple[float, float]] = field(default_factory=list)
    side: dict[str, list[float]] = field(default_factory=dict)  # SIDE_SCORES' values per run
    thresholds: list[float] = field(default_factory=list)  # seed_threshold per run
    heldout_thresholds: list[tuple[float, float]] = field(default_factory=list)
    # each run's per-image counts (same order as run_ids); empty when a run logged none
    image_counts: list[ImageCounts] = field(default_factory=list)
    paper: float | None = None
    verdict: Verdict = field(default_factory=lambda: Verdict(""))

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
    def interval(self) -> tuple[float, float] | None:
        """The replicates' bootstrap 95 % intervals over images, averaged (None if absent)."""
        if not self.intervals:
            return None
        return (statistics.fmean(lo for lo, _ in self.intervals),
                statistics.fmean(hi for _, hi in self.intervals))

    @property
    def has_image_counts(self) -> bool:
        return bool(self.image_counts) and len(self.image_counts) == self.n

    def side_mean(self, title: str) -> float | None:
        values = self.side.get(title, [])
        return statistics.fmean(values) if values else None


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def parse_param(value: str) -> Any:
    """MLflow stores params as strings; give numbers back their order (2 < 10)."""
    for cast in (int, float):
        try:
            return cast(value)
        except (TypeError, ValueError):
            pass
    return value


def _add_run(cell: Cell, trial: TrialRecord, metric: str, value: float) -> None:
    cell.values.append(value)
    cell.run_ids.append(trial.run_id)
    cell.run_names.append(trial.run_name)
    m = trial.metrics
    prefix = COMPANIONS.get(metric)
    if prefix:
        images = m.get(f"{prefix}_num_images")
        lo, hi = (m.get(f"{metric}_ci_{end}") for end in ("lo", "hi"))
        if _finite(images):
            cell.num_images.append(images)
        if _finite(lo) and _finite(hi):
            cell.intervals.append((lo, hi))
    for title, key in SIDE_SCORES.get(metric, {}).items():
        if _finite(m.get(key)):
            cell.side.setdefault(title, []).append(m[key])
    if metric == "seed_miou" and _finite(m.get("seed_threshold")):
        cell.thresholds.append(m["seed_threshold"])
        folds = (m.get("seed_heldout_threshold_a"), m.get("seed_heldout_threshold_b"))
        if all(_finite(f) for f in folds):
            cell.heldout_thresholds.append(folds)


def group_cells(trials: Sequence[TrialRecord], metric: str, axes: Sequence[str],
                sweep: str | None = None) -> list[Cell]:
    """FINISHED trials with a finite `metric`, pooled by their values of `axes`."""
    key = sanitize_key(metric)
    cells: dict[tuple, Cell] = {}
    for trial in trials:
        value = trial.metrics.get(key)
        if trial.status != "FINISHED" or not _finite(value):
            continue
        point = tuple(trial.params.get(a, "None") for a in axes)
        cell = cells.setdefault(point, Cell({a: parse_param(v)
                                             for a, v in zip(axes, point, strict=True)}))
        _add_run(cell, trial, metric, float(value))
    for cell in cells.values():
        cell.paper = paper_value(sweep, metric, cell.point)
    return list(cells.values())


def attach_image_counts(cells: Sequence[Cell], counts: dict[str, ImageCounts]) -> None:
    """Give each cell its runs' per-image counts (`counts` by run id); a cell with a run
    missing from `counts` gets none (its image noise is then not tested)."""
    for cell in cells:
        if all(r in counts for r in cell.run_ids):
            cell.image_counts = [counts[r] for r in cell.run_ids]


def paired_test(best: Cell, cell: Cell) -> PairedTest | None:
    """Best − cell on the images both scored (every replicate's counts summed per image), or
    None when either lacks per-image counts or they share fewer than two images."""
    if not (best.has_image_counts and cell.has_image_counts):
        return None
    ids = shared_ids(best.image_counts, cell.image_counts)
    if len(ids) < 2:
        return None
    return paired_bootstrap(pooled_counts(best.image_counts, ids),
                            pooled_counts(cell.image_counts, ids))


def seed_noise_of(cells: Sequence[Cell]) -> SeedNoise | None:
    """The sweep's own seed noise: the cells' replicates pooled (None with one run per cell)."""
    return pooled_seed_noise([c.values for c in cells], "this sweep's replicates")


def _images_clause(test: PairedTest | None) -> str:
    if test is None:
        return "image noise not tested (no per-image counts logged)"
    side = "beyond" if test.significant else "within"
    return f"{side} image noise (paired bootstrap over {test.num_images} images, {test.p_text()})"


def verdict(best: Cell, cell: Cell, seed_noise: SeedNoise | None,
            test: PairedTest | None) -> Verdict:
    """Is `cell`'s gap to the best more than noise? It is only when it is beyond both the
    training-seed spread (`seed_noise`; None: unmeasured) and the images (`test`: the paired
    bootstrap; None: not testable). Either noise alone can make it "within"."""
    if cell is best:
        return Verdict("best")
    gap = abs(best.mean - cell.mean)
    images = _images_clause(test)
    p = f"images {test.p_text()}" if test else "images untested"
    if seed_noise is None:
        if test is not None and not test.significant:
            return Verdict("within image noise", f"gap {gap:.2f}; {p}",
                           f"{gap:.2f} behind, {images}; seed noise unmeasured")
        return Verdict("unknown", f"gap {gap:.2f}; seed noise unknown: add `repeats: 3`",
                       f"{gap:.2f} behind; seed noise unknown: {REPEATS_HINT}; {images}")
    limit = seed_noise.threshold(best.n, cell.n)
    seeds = f"{'≤' if gap <= limit else '>'} {limit:.2f} ({seed_noise.describe()})"
    if gap <= limit:
        return Verdict("within seed noise", f"gap {gap:.2f} ≤ {limit:.2f}",
                       f"{gap:.2f} behind {seeds}; {images}")
    if test is None:
        return Verdict("beyond seed noise", f"gap {gap:.2f} > {limit:.2f}; images untested",
                       f"{gap:.2f} behind {seeds}; {images}")
    if not test.significant:
        return Verdict("within image noise", f"gap {gap:.2f} > {limit:.2f}; {p}",
                       f"{gap:.2f} behind {seeds}, but {images}")
    return Verdict("behind", f"gap {gap:.2f} > {limit:.2f}; {p}",
                   f"behind by {gap:.2f} {seeds} and {images}")


def rank_cells(cells: list[Cell], mode: str = "max",
               seed_noise: SeedNoise | None = None) -> list[Cell]:
    """Best first, each with its verdict against the best. Seed noise: the cells' own
    replicates when they have any, else `seed_noise` (measured elsewhere), else unmeasured."""
    ordered = sorted(cells, key=lambda c: c.mean, reverse=(mode == "max"))
    noise = seed_noise_of(ordered) or seed_noise
    for cell in ordered:
        cell.verdict = verdict(ordered[0], cell, noise, None if cell is ordered[0]
                               else paired_test(ordered[0], cell))
    return ordered


def format_value(cell: Cell) -> str:
    """`56.70 ± 0.40` (or `56.70` for one run)."""
    return f"{cell.mean:.2f}" if cell.n < 2 else f"{cell.mean:.2f} ± {cell.std:.2f}"


def rows(cells: Sequence[Cell], axes: Sequence[str], metric: str,
         link=None) -> tuple[list[str], list[list[str]]]:
    """Header and body of the cells table as strings; `link(cell)` names the runs (markdown)."""
    has_paper = any(c.paper is not None for c in cells)
    replicated = any(c.n >= 2 for c in cells)
    sides = [t for t in SIDE_SCORES.get(metric, {}) if any(c.side.get(t) for c in cells)]
    header = [*(a.rsplit(".", 1)[-1] for a in axes),
              f"{metric} mean ± std" if replicated else metric, "n", "images", "95% CI (images)",
              *sides, *(["paper"] if has_paper else []), "vs best", *(["runs"] if link else [])]
    body = []
    for c in cells:
        images = sorted({int(i) for i in c.num_images})
        interval = c.interval
        body.append([*(str(c.point[a]) for a in axes), format_value(c), str(c.n),
                     "/".join(map(str, images)) or "?",
                     f"[{interval[0]:.2f}, {interval[1]:.2f}]" if interval else "—",
                     *(f"{v:.2f}" if v is not None else "—" for v in map(c.side_mean, sides)),
                     *([f"{c.paper:.1f}" if c.paper is not None else "—"] if has_paper else []),
                     c.verdict.short(), *([link(c)] if link else [])])
    return header, body
