"""The results of a sweep for `launch.py report` and the sweep's parent run: ablation tables
(a metric pivoted by one or two swept config keys) and the cells with their noise.

MLflow is reached only through `cobra.tracking`, which keeps this module importable (and
testable) with plain TrialRecords."""

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cobra import cells as cells_mod
from cobra import naming, study
from cobra.config import REPLICATE_KEY
from cobra.errors import ConfigError, TrackingError
from cobra.layout import IMAGE_COUNTS
from cobra.noise import ImageCounts, SeedNoise, pooled_seed_noise
from cobra.paper import paper_table
from cobra.tracking import (
    Store,
    TrialRecord,
    artifact_bytes,
    get_sweep,
    log_files,
    run_link,
    sanitize_key,
    scored_trials,
    sweeps_with_base,
)
from cobra.tracking import tags as tag

# Params that differ between trials without being an ablation axis: seeds are replicates (their
# cells are averaged), run names and directories are bookkeeping.
_BOOKKEEPING = {"run.dir", "run.name"}
# Cells listed in a sweep's parent-run description (best first; the rest in `report`).
MAX_NOTE_CELLS = 16


def _is_replicate(key: str) -> bool:
    # only the training seed: `data.synthetic.seed` draws another dataset, a real axis
    return key == REPLICATE_KEY


def _sort_key(value: Any) -> tuple[int, Any]:
    # Numbers before strings, each in natural order, so mixed columns still sort.
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (0, value)
    return (1, str(value))


def varying_params(trials: Sequence[TrialRecord]) -> list[str]:
    """Param keys whose value differs between trials, in sorted order."""
    keys = sorted({k for t in trials for k in t.params})
    return [k for k in keys if len({t.params.get(k) for t in trials}) > 1]


def _finished(trials: list[TrialRecord], metric: str) -> list[TrialRecord]:
    """The trials that count (the ones the best trial is picked from); TrackingError if none."""
    done = scored_trials(trials, metric)
    if not done:
        # the metric is the sweep's own (its parent run's tag): `report` has no --metric
        raise TrackingError(f"no FINISHED trial has metric '{metric}' ({len(trials)} trials); "
                            f"wait for trials to finish")
    return done


def table_axes(done: list[TrialRecord], rows: str | None, cols: str | None) -> list[str]:
    """The swept keys a table is laid out by: the given ones, else every varying param except
    replicate seeds (averaged over) and bookkeeping. A given one must be swept: laid out by a
    key every trial shares, one setting would show as a cell of several "replicates"."""
    varying = varying_params(done)
    given = [(name, key) for name, key in (("--rows", rows), ("--cols", cols)) if key is not None]
    for name, key in given:
        if key not in varying:
            known = {k for t in done for k in t.params}
            what = "was not swept (every trial has one value)" if key in known else \
                "is not a param of this sweep"
            raise ConfigError(f"{name} '{key}' {what}; the swept params are: "
                              f"{', '.join(varying) or '(none)'}")
    if given:
        return [key for _, key in given]
    varying = searched_first(varying, done)
    axes = [k for k in varying if not _is_replicate(k) and k not in _BOOKKEEPING]
    return axes or [k for k in varying if k not in _BOOKKEEPING]


def check_cells_are_replicates(done: list[TrialRecord], axes: list[str]) -> None:
    """A cell's trials must differ only in their replicate seed: axes that leave out a swept
    key would group trials of different settings and call them replicates (ablation_table's
    marginal means are another matter: they do not claim replicates)."""
    left_out = [k for k in varying_params(done)
                if k not in axes and not _is_replicate(k) and k not in _BOOKKEEPING]
    if left_out:
        raise ConfigError(f"--rows/--cols leave out the swept param '{left_out[0]}': trials "
                          f"that differ in it would be counted as replicates of one cell; lay "
                          f"the table out by it too, or leave --rows/--cols out")


def searched_first(keys: list[str], trials: Sequence[TrialRecord]) -> list[str]:
    """`keys` in the order the sweep file searched them (tag SEARCHED: the order of the
    trials' names), then the rest in sorted order."""
    order: list[str] = []
    for trial in trials:
        order += [k for k in trial.tags.get(tag.SEARCHED, "").split(",") if k and k not in order]
    rank = {k: i for i, k in enumerate(order)}
    return sorted(keys, key=lambda k: (rank.get(k, len(rank)), k))


def ablation_table(trials: list[TrialRecord], metric: str, rows: str | None = None,
                   cols: str | None = None, mode: str = "max") -> pd.DataFrame:
    """Mean of `metric` over FINISHED trials, pivoted by `rows` × `cols` (chosen when None)."""
    key = sanitize_key(metric)
    done = _finished(trials, metric)
    axes = table_axes(done, rows, cols)

    frame = pd.DataFrame([{**{a: cells_mod.parse_param(t.params.get(a, "None")) for a in axes},
                           metric: t.metrics[key]} for t in done])
    if not axes:  # nothing varies: one cell, the mean over all trials
        table = pd.DataFrame({metric: [frame[metric].mean()]}, index=pd.Index(["all"]))
        kind = "column"
    elif len(axes) == 1:
        table = frame.groupby(axes[0])[metric].mean().to_frame()
        table = table.loc[sorted(table.index, key=_sort_key)]
        kind = "column"
    elif len(axes) == 2:
        table = frame.pivot_table(index=axes[0], columns=axes[1], values=metric, aggfunc="mean")
        table = table.loc[sorted(table.index, key=_sort_key), sorted(table.columns, key=_sort_key)]
        kind = "grid"
    else:
        grouped = frame.groupby(axes, dropna=False)[metric]
        table = pd.concat([grouped.mean(), grouped.size().rename("trials")], axis=1)
        table = table.sort_values(metric, ascending=(mode == "min")).reset_index()
        kind = "flat"
    table.attrs.update(kind=kind, metric=metric, axes=axes)
    return table


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "—" if math.isnan(value) else f"{value:.4f}"
    return str(value)


def _cells(df: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    """Header and body of the table as strings, the index as first column (flat: no index)."""
    if df.attrs.get("kind") == "flat":
        return [str(c) for c in df.columns], [[_fmt(v) for v in row] for row in df.itertuples(
            index=False)]
    corner = df.index.name or ""
    if df.columns.name:
        corner = f"{corner} \\ {df.columns.name}" if corner else str(df.columns.name)
    header = [corner] + [str(c) for c in df.columns]
    body = [[str(idx)] + [_fmt(v) for v in row] for idx, row in zip(
        df.index, df.itertuples(index=False), strict=True)]
    return header, body


def render_rows(header: list[str], body: list[list[str]], title: str) -> str:
    """Rows of strings as aligned plain text under `title`."""
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    line = lambda r: "  ".join(c.rjust(w) if i else c.ljust(w)  # noqa: E731
                               for i, (c, w) in enumerate(zip(r, widths, strict=True)))
    rule = "-" * len(line(header))
    return "\n".join([title, rule, line(header), rule, *(line(r) for r in body)])


def markdown_table(header: list[str], body: list[list[str]], numeric: bool = False,
                   padded: bool = False) -> str:
    """Rows of strings as a GitHub-flavoured markdown table (no tabulate dependency); `numeric`:
    every column after the first right-aligned; `padded`: cells padded for MLflow (`_pad`)."""
    def line(row: list[str]) -> str:
        cells = (c.replace("|", "\\|") for c in row)
        return "| " + " | ".join(_pad(c) if padded else c for c in cells) + " |"

    rule = "|" + "|".join([" --- "] + [" ---: " if numeric else " --- "] * (len(header) - 1))
    return "\n".join([line(header), rule + "|", *(line(row) for row in body)])


def write_markdown(df: pd.DataFrame, path: Path) -> None:
    metric = df.attrs.get("metric")
    preface = f"Mean `{metric}` per cell.\n\n" if metric else ""
    Path(path).write_text(preface + markdown_table(*_cells(df), numeric=True) + "\n")


def _heat_matrix(df: pd.DataFrame) -> tuple[pd.DataFrame, str, str, list[list[tuple]]]:
    """The table as a numeric matrix, its axis labels, and each position's cell key (the
    swept values, in the table's axes order); 1-D tables become a single row."""
    kind = df.attrs.get("kind")
    metric = str(df.attrs.get("metric", ""))
    if kind == "grid":
        keys = [[(r, c) for c in df.columns] for r in df.index]
        return df.astype(float), str(df.index.name or ""), str(df.columns.name or ""), keys
    if kind == "flat":
        axes = df.attrs.get("axes", [])
        # Column by column: iterrows would upcast int params to float (k=5 -> 5.0).
        points = [tuple(df[a].iloc[i] for a in axes) for i in range(len(df))]
        labels = [", ".join(f"{a.rsplit('.', 1)[-1]}={v}" for a, v in zip(axes, p, strict=True))
                  for p in points]
        row = pd.DataFrame([df[metric].to_numpy(dtype=float)], columns=labels, index=[metric])
        return row, "", "cell", [points]
    row = df.T.astype(float)
    keys = [[(c,) for c in df.index]] if df.attrs.get("axes") else [[()]]
    return row, "", str(df.index.name or ""), keys


# What a heatmap cell says under its value, by verdict label.
_MARKS = {"best": "best", "behind": "behind", "within seed noise": "≈ seeds",
          "within image noise": "≈ images", "beyond seed noise": "> seeds, images ?",
          "unknown": "seed noise ?"}


def noise_band(cells: list[cells_mod.Cell], seed_noise: SeedNoise | None) -> tuple[float, str]:
    """The gap to the best a heatmap's colours should not dramatise, and what it is: the
    seed-noise limit for two cells of the best's size when seed noise is known, else the
    half-width of the best's 95 % interval over images (a lower bound of the noise)."""
    best = cells[0]
    if seed_noise is not None:
        return seed_noise.threshold(best.n, best.n), "seed-noise limit"
    if best.interval:
        return (best.interval[1] - best.interval[0]) / 2, "image-noise half-width (seeds unknown)"
    return 0.0, "no noise estimate"


def colour_range(values: np.ndarray, band: float, mode_max: bool) -> tuple[float, float]:
    """(vmin, vmax) of a heatmap's colours: from the best value over the observed spread or
    twice the noise band, whichever is wider, so cells within noise of the best stay close to
    its colour instead of spanning the whole scale."""
    best = float(values.max() if mode_max else values.min())
    reach = max(float(values.max() - values.min()), 2 * band, 1e-6)
    return (best - reach, best) if mode_max else (best, best + reach)


def write_heatmap(df: pd.DataFrame, path: Path, title: str,
                  cells: list[cells_mod.Cell] | None = None,
                  seed_noise: SeedNoise | None = None) -> None:
    """An annotated heatmap PNG of the table: each cell's value and verdict; the colour range
    spans at least twice the noise band below the best, so a spread inside noise stays pale."""
    import textwrap

    import matplotlib

    matplotlib.use("Agg")  # headless: sweeps run on servers without a display
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    mat, ylabel, xlabel, keys = _heat_matrix(df)
    values = mat.to_numpy(dtype=float)
    n_rows, n_cols = values.shape
    axes = df.attrs.get("axes", [])
    by_key = {tuple(c.point[a] for a in axes): c for c in cells or []}
    mode_max = not cells or len(cells) < 2 or cells[0].mean >= cells[-1].mean
    finite = values[~pd.isna(values)]
    band, band_what = noise_band(cells, seed_noise) if cells else (0.0, "")
    best = finite.max() if mode_max else finite.min()
    spread = float(finite.max() - finite.min()) if finite.size else 0.0
    vmin, vmax = colour_range(finite, band, mode_max)
    reach = vmax - vmin
    cmap = "viridis" if mode_max else "viridis_r"
    caption = (f"colours span {reach:.2f}: max(spread {spread:.2f}, 2 x {band_what} "
               f"{band:.2f}); hatched on the colour bar: that band below the best; dashed: within "
               f"noise of the best" if cells else "")
    # wrapped, not clipped: a sweep's title is often wider than its grid
    title_lines, lines = textwrap.wrap(title, 48), textwrap.wrap(caption, 80)
    width = max(5.0, 1.3 * n_cols + 2.8)
    height = max(2.6, 0.8 * n_rows + 1.2 + 0.25 * (len(lines) + len(title_lines)))
    fig, ax = plt.subplots(figsize=(width, height))
    try:
        image = ax.imshow(values, cmap=cmap, aspect="auto", vmin=vmin, vmax=vmax)
        _label_axes(ax, mat, xlabel, ylabel, "\n".join(title_lines))
        for i in range(n_rows):
            for j in range(n_cols):
                _annotate(ax, i, j, values[i, j], by_key.get(keys[i][j]), vmin, vmax, Rectangle)
        bar = fig.colorbar(image, ax=ax, label=str(df.attrs.get("metric", "")))
        if band > 0:
            lo, hi = (best - band, best) if mode_max else (best, best + band)
            bar.ax.axhspan(lo, hi, facecolor="none", edgecolor="black", hatch="//")
        fig.text(0.01, 0.01, "\n".join(lines), fontsize=8, va="bottom")
        fig.tight_layout(rect=(0, 0.03 * len(lines) + 0.02, 1, 1))
        fig.savefig(path, dpi=120)
    finally:
        plt.close(fig)


def _label_axes(ax, mat: pd.DataFrame, xlabel: str, ylabel: str, title: str) -> None:
    n_cols = len(mat.columns)
    ax.set_xticks(range(n_cols), [str(c) for c in mat.columns],
                  rotation=30 if n_cols > 4 else 0, ha="right" if n_cols > 4 else "center")
    ax.set_yticks(range(len(mat.index)), [str(i) for i in mat.index])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)


def _annotate(ax, i: int, j: int, value: float, cell: cells_mod.Cell | None, vmin: float,
              vmax: float, rectangle) -> None:
    """Value (± seed std where n >= 2) and verdict in heatmap position (i, j); within-noise
    cells get a dashed outline."""
    if math.isnan(value):
        return
    bright = (value - vmin) / max(vmax - vmin, 1e-9) > 0.5
    colour = "black" if bright else "white"
    text = f"{value:.2f}"
    if cell is not None:
        if cell.n >= 2:
            text += f" ± {cell.std:.2f}"
        text += f"\n{_MARKS.get(cell.verdict.label, cell.verdict.label)}"
        if cell.verdict.label.startswith("within") or cell.verdict.label == "best":
            ax.add_patch(rectangle((j - 0.47, i - 0.47), 0.94, 0.94, fill=False,
                                   edgecolor=colour, linestyle="--", linewidth=1.2))
    ax.text(j, i, text, ha="center", va="center", color=colour, fontsize=9)


def threshold_note(metric: str) -> str:
    """Where a metric's threshold was chosen: said under every table that shows it."""
    if metric.startswith("seed_miou") and metric != "seed_miou_heldout":
        return (f"`{metric}`: background threshold chosen on the scored images' ground truth "
                f"(the paper's protocol); *heldout* (`seed_miou_heldout`) scores each half of "
                f"the images at the threshold chosen on the other half, so it equals "
                f"`{metric}` when both halves chose the same threshold as the whole set.")
    return ""


def heldout_note(cells: list[cells_mod.Cell]) -> str:
    """Why a cell's heldout score equals its score, where it does: the thresholds chosen."""
    same = [c for c in cells if c.heldout_thresholds and c.thresholds
            and all(a == b == t for (a, b), t in zip(c.heldout_thresholds, c.thresholds,
                                                    strict=False))]
    if not same:
        return ""
    chosen = sorted({t for c in same for t in c.thresholds})
    return (f"*heldout* = score in {len(same)} of {len(cells)} cells: there both halves chose "
            f"threshold {', '.join(f'{t:g}' for t in chosen)}, the same as the whole set.")


def heldout_sentence(metrics: dict[str, Any]) -> str:
    """What `seed_miou_heldout` is, and why it equals `seed_miou` when it does: the threshold
    each half of the images chose for the other."""
    heldout, score = metrics.get("seed_miou_heldout"), metrics.get("seed_miou")
    folds = (metrics.get("seed_heldout_threshold_a"), metrics.get("seed_heldout_threshold_b"))
    if heldout is None or score is None:
        return ""
    text = (f"`seed_miou_heldout` {heldout:.2f}: each half of the images scored at the "
            f"threshold chosen on the other half")
    if None not in folds:
        text += f" ({folds[0]:g} and {folds[1]:g})"
    if heldout == score and None not in folds and folds[0] == folds[1] == metrics.get(
            "seed_threshold"):
        text += (f"; equal to `seed_miou` because both halves chose {folds[0]:g}, the "
                 f"threshold the whole set chose")
    return text + "."


def trial_note(metrics: dict[str, Any]) -> str:
    """A trial run's description: each headline score with the images it covers, its interval
    over them, and where its threshold was chosen."""
    lines = []
    for metric, prefix in cells_mod.COMPANIONS.items():
        if metrics.get(metric) is None:
            continue
        line = f"`{metric}` {metrics[metric]:.2f}"
        if metrics.get(f"{prefix}_num_images") is not None:
            line += f" on {int(metrics[f'{prefix}_num_images'])} images"
        lo, hi = metrics.get(f"{metric}_ci_lo"), metrics.get(f"{metric}_ci_hi")
        if lo is not None and hi is not None:
            line += f" (95% CI over images [{lo:.2f}, {hi:.2f}])"
        if metric == "seed_miou" and metrics.get("seed_threshold") is not None:
            line += (f", background threshold {metrics['seed_threshold']:g} chosen on these "
                     f"images' ground truth (the paper's protocol)")
        lines.append(line + ".")
    lines.append(heldout_sentence(metrics))
    return "\n\n".join(line for line in lines if line)


def _pad(text: str) -> str:
    # MLflow's description renders tables without cell padding: "1" and "200" in adjacent
    # columns read "1 200", and headers run together; non-breaking spaces keep them apart.
    return f"&nbsp;{text}&nbsp;" if text else text


@dataclass
class SweepNoise:
    """What a sweep's verdicts count besides the values: each run's per-image counts (by run
    id) and a seed-noise estimate measured outside the sweep (None: none found)."""

    image_counts: dict[str, ImageCounts] = field(default_factory=dict)
    earlier_seed_noise: SeedNoise | None = None


def gather_noise(store: Store, parent_run_id: str, trials: list[TrialRecord],
                 metric: str) -> SweepNoise:
    """Read from MLflow what the verdicts need: the trials' per-image counts of `metric`
    (artifact IMAGE_COUNTS[metric]) and the replicates of earlier sweeps on the same base
    config (tag BASE_CONFIG of the parent run)."""
    noise = SweepNoise()
    path = IMAGE_COUNTS.get(metric)
    for trial in scored_trials(trials, metric) if path else []:
        data = artifact_bytes(store, trial.run_id, path)
        if data is not None:
            noise.image_counts[trial.run_id] = ImageCounts.from_bytes(data)
    noise.earlier_seed_noise = earlier_seed_noise(sweeps_with_base(store, parent_run_id), metric)
    return noise


def earlier_seed_noise(sweeps: list[tuple[TrialRecord, list[TrialRecord]]],
                       metric: str) -> SeedNoise | None:
    """Seed noise pooled over the replicate cells of other sweeps on the same base config:
    each sweep's trials grouped by its searched keys, the training seed left out."""
    groups, names = [], []
    for parent, trials in sweeps:
        done = scored_trials(trials, metric)
        searched = {k for t in done for k in t.tags.get(tag.SEARCHED, "").split(",") if k}
        # trials logged before the tag existed: every param that varies is an axis
        axes = sorted(k for k in searched or varying_params(done)
                      if not _is_replicate(k) and k not in _BOOKKEEPING)
        replicated = [c.values for c in cells_mod.group_cells(done, metric, axes) if c.n >= 2]
        if replicated:
            groups += replicated
            names.append(parent.tags.get(tag.SWEEP, parent.run_name))
    if not groups:
        return None
    return pooled_seed_noise(groups, f"sweep {', '.join(names)} (same base config)")


def sweep_cells(trials: list[TrialRecord], metric: str, mode: str, sweep: str | None,
                rows: str | None = None, cols: str | None = None,
                noise: SweepNoise | None = None) -> tuple[list[cells_mod.Cell], list[str]]:
    """The sweep's cells, best first, each with its verdict against the best."""
    noise = noise or SweepNoise()
    done = _finished(trials, metric)
    axes = table_axes(done, rows, cols)
    check_cells_are_replicates(done, axes)
    cells = cells_mod.group_cells(done, metric, axes, sweep)
    cells_mod.attach_image_counts(cells, noise.image_counts)
    return cells_mod.rank_cells(cells, mode, noise.earlier_seed_noise), axes


def _seed_noise_used(cells: list[cells_mod.Cell], noise: SweepNoise) -> SeedNoise | None:
    """The seed noise the verdicts counted (the sweep's own replicates first)."""
    return cells_mod.seed_noise_of(cells) or noise.earlier_seed_noise


def noise_notes(cells: list[cells_mod.Cell], noise: SweepNoise, metric: str,
                axes: list[str], paper: str) -> list[str]:
    """How to read the names, the table's n and *vs best*, which noise each verdict counted,
    where the threshold was chosen and the published value (`paper`, "" for none)."""
    seeds = _seed_noise_used(cells, noise)
    seed_line = (f"Seed noise: {seeds.describe()}; a gap is beyond it when larger than "
                 f"t(df={seeds.df}) x std x sqrt(1/n_best + 1/n)." if seeds else
                 f"Seed noise: unmeasured (one run per cell and no earlier sweep on this base "
                 f"config with replicates): {cells_mod.REPEATS_HINT} to measure it.")
    tested = sum(c.has_image_counts for c in cells)
    image_line = (f"Image noise: paired bootstrap of the mIoU difference over the images both "
                  f"cells scored (per-image counts, {tested} of {len(cells)} cells)."
                  if tested else f"Image noise: not tested (the trials logged no per-image "
                                 f"counts of `{metric}`).")
    return [f"Names: {naming.legend(axes)}.",
            "*n*: training seeds (runs) per cell; `± std` over them where n >= 2. *images*: "
            "images each score covers; *95% CI (images)*: bootstrap over images. *vs best*: "
            "`behind` only when the gap is beyond both noises.", seed_line, image_line,
            threshold_note(metric), heldout_note(cells), paper]


def point_label(cell: cells_mod.Cell, axes: list[str]) -> str:
    """`ksn2·kcp8`: a cell named as its trials are, by the swept keys' short names."""
    return naming.point_name({a: cell.point[a] for a in axes})


def _best_line(cells: list[cells_mod.Cell], axes: list[str], metric: str) -> str:
    best = cells[0]
    return (f"**Best `{metric}`: {point_label(best, axes)} = {cells_mod.format_value(best)}** "
            f"({best.n} seed{'s' if best.n != 1 else ''})")


def headline(cells: list[cells_mod.Cell], axes: list[str], metric: str) -> str:
    """One line a collapsed description still shows: the best cell and its standing against
    the runner-up (the verdict that says whether "best" means anything)."""
    line = _best_line(cells, axes, metric)
    if len(cells) < 2:
        return line + "; the only cell."
    runner = cells[1]
    beyond = sum(c.verdict.label == "behind" for c in cells[1:])
    return (f"{line}; runner-up {point_label(runner, axes)} {cells_mod.format_value(runner)}: "
            f"{runner.verdict.short()}. {beyond} of {len(cells) - 1} other cells behind beyond "
            f"noise.")


@dataclass
class SweepResults:
    """A finished sweep's results for its parent run: `note`, the description MLflow shows
    without "Show more" (its UI folds a description taller than 100 px, about a line and a
    three-row table); `full`, every cell with its noise notes (the RESULTS_FILE artifact); and
    the best cell's mean over its training seeds (None: no trial finished with a score)."""

    note: str
    full: str
    best_mean: float | None


# The parent run's artifact with the full results table (MLflow's artifact view renders it).
RESULTS_FILE = "results.md"
# Rows of the description's table: the best cell and the runner-up its headline compares.
NOTE_ROWS = 2


def sweep_results(store: Store, parent_run_id: str, trials: list[TrialRecord], metric: str,
                  mode: str, sweep: str | None, links: Sequence[str] = ()) -> SweepResults:
    """The parent run's short description (headline, `links`, best and runner-up) and its
    full results section, from one reading of the trials' noise."""
    try:
        noise = gather_noise(store, parent_run_id, trials, metric)
        cells, axes = sweep_cells(trials, metric, mode, sweep, noise=noise)
    except TrackingError:
        return SweepResults("No trial finished with a score.", "No trial finished with a score.",
                            None)
    # every trial of a sweep lives in its parent's experiment: one id for every link
    exp_id = next((t.experiment_id for t in trials if t.experiment_id), "")
    link = lambda c: ", ".join(run_link(exp_id, r, n) for r, n in zip(  # noqa: E731
        c.run_ids, c.run_names, strict=True))
    paper = paper_table(sweep)
    shown = cells[:MAX_NOTE_CELLS]  # a run description holds 8,000 characters
    more = (f"{len(cells) - len(shown)} more cells: `launch.py report`."
            if len(cells) > len(shown) else "")
    notes = [*noise_notes(cells, noise, metric, axes,
                          f"*paper*: the published value ({paper})." if paper else ""), more]
    full = (headline(cells, axes, metric) + "\n\n"
            + markdown_table(*cells_mod.rows(shown, axes, metric, link), padded=True)
            + "\n\n" + "\n\n".join(n for n in notes if n))
    return SweepResults(short_note(cells, axes, metric, links), full, cells[0].mean)


def short_note(cells: list[cells_mod.Cell], axes: list[str], metric: str,
               links: Sequence[str] = ()) -> str:
    """The best cell in one line, then a table of the best and the runner-up with the
    runner-up's verdict: short enough that MLflow shows it whole, without "Show more"."""
    line = " · ".join([_best_line(cells, axes, metric), *links])
    value = f"{metric} (mean ± std)" if any(c.n >= 2 for c in cells) else metric
    rows = ["| " + " | ".join(_pad(c) for c in ("cell", value, "n", "vs best")) + " |",
            "|" + " --- |" * 4]
    rows += ["| " + " | ".join(_pad(c.replace("|", "\\|")) for c in (
        point_label(cell, axes), cells_mod.format_value(cell), str(cell.n),
        cell.verdict.short())) + " |" for cell in cells[:NOTE_ROWS]]
    return line + "\n\n" + "\n".join(rows)


def optuna_plots(parent: TrialRecord, out_dir: Path) -> tuple[list[Path], list[str]]:
    """Optuna's importance and slice plots of a searched (tpe, random) sweep's study, where
    its parent run names one (sweeps since the study is persisted), as PNGs in `out_dir`."""
    url = parent.tags.get(tag.OPTUNA_STORAGE)
    if not url or parent.params.get("search.algorithm") not in study.PLOTTED_SEARCHES:
        return [], []
    return study.draw_plots(url, parent.tags.get(tag.OPTUNA_STUDY, parent.run_name), out_dir)


def make_report(store: Store, experiment: str, sweep_name: str | None, out_dir: Path,
                rows: str | None = None, cols: str | None = None) -> dict:
    """Build a sweep's ablation table and its cells with noise, write report.md/.csv/.png, and
    log them to the sweep."""
    sweep = get_sweep(store, experiment, sweep_name)
    parent, trials, name = sweep.parent, sweep.trials, sweep.name
    parent_id, metric, mode = parent.run_id, sweep.metric, sweep.mode
    table = ablation_table(trials, metric, rows, cols, mode=mode)
    noise = gather_noise(store, parent_id, trials, metric)
    cells, axes = sweep_cells(trials, metric, mode, name, rows, cols, noise)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    title = f"sweep {name}: mean {metric} ({mode}) over FINISHED trials"
    files = [out_dir / "report.md", out_dir / "report.csv", out_dir / "report.png"]
    write_markdown(table, files[0])
    notes = noise_notes(cells, noise, metric, axes,
                        f"paper: {paper_table(name)}" if paper_table(name) else "")
    plots, plot_notes = optuna_plots(parent, out_dir)
    notes = [n for n in (*notes, *plot_notes) if n]
    with files[0].open("a") as fh:
        fh.write("\n## Cells, best first, with their noise\n\n"
                 + headline(cells, axes, metric) + "\n\n"
                 + markdown_table(*cells_mod.rows(cells, axes, metric)) + "\n\n"
                 + "\n\n".join(notes) + "\n")
    # %.6g: means like 0.35000000000000003 are float noise, not precision
    table.to_csv(files[1], index=table.attrs.get("kind") != "flat", float_format="%.6g")
    write_heatmap(table, files[2], title, cells, _seed_noise_used(cells, noise))
    files += plots
    log_files(store, parent_id, files, subdir="report")
    cells_text = render_rows(*cells_mod.rows(cells, axes, metric),
                             "cells, best first (vs best: is the gap more than noise?)")
    text = "\n\n".join(t for t in (render_rows(*_cells(table), title),
                                    headline(cells, axes, metric).replace("**", ""),
                                    cells_text, "\n".join(notes)) if t)
    return {"table": text, "files": [str(f) for f in files], "sweep": name,
            "parent_run_id": parent_id,
            "cells": [{"point": c.point, "mean": round(c.mean, 4),
                       "std": None if c.n < 2 else round(c.std, 4), "n": c.n, "paper": c.paper,
                       "verdict": str(c.verdict), "verdict_label": c.verdict.label} for c in cells]}
