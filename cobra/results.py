"""The results of a sweep for `launch.py report` and the sweep's parent run: ablation tables
(a metric pivoted by one or two swept config keys) and the cells with their noise.

MLflow is reached only through `cobra.tracking`, which keeps this module importable (and
testable) with plain TrialRecords.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from cobra import cells as cells_mod
from cobra.errors import ConfigError, TrackingError
from cobra.paper import paper_table
from cobra.tracking import (
    TrialRecord,
    get_trial,
    list_trials,
    log_files,
    run_link,
    sanitize_key,
    scored_trials,
)
from cobra.tracking import tags as tag

# Params that differ between trials without being an ablation axis: seeds are replicates (their
# cells are averaged), run names and directories are bookkeeping.
_BOOKKEEPING = {"run.dir", "run.name"}
# Cells listed in a sweep's parent-run description (best first; the rest in `report`).
MAX_NOTE_CELLS = 16


def _is_replicate(key: str) -> bool:
    return key.rsplit(".", 1)[-1] == "seed"


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
    replicate seeds (averaged over) and bookkeeping. Given ones must be swept and leave no
    swept key out: trials that differ in a key the table does not show would be averaged as if
    they were replicates of one setting."""
    varying = varying_params(done)
    swept = ", ".join(varying) or "(none)"
    given = [(name, key) for name, key in (("--rows", rows), ("--cols", cols)) if key is not None]
    for name, key in given:
        if key not in varying:
            known = {k for t in done for k in t.params}
            what = "was not swept (every trial has one value)" if key in known else \
                "is not a param of this sweep"
            raise ConfigError(f"{name} '{key}' {what}; the swept params are: {swept}")
    if given:
        shown = {key for _, key in given}
        left_out = [k for k in varying
                    if k not in shown and not _is_replicate(k) and k not in _BOOKKEEPING]
        if left_out:
            raise ConfigError(f"--rows/--cols leave out the swept param '{left_out[0]}': trials "
                              f"that differ in it would be averaged as replicates; lay the table "
                              f"out by it too, or leave --rows/--cols out")
        return [key for _, key in given]
    axes = [k for k in varying if not _is_replicate(k) and k not in _BOOKKEEPING]
    return axes or [k for k in varying if k not in _BOOKKEEPING]


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
        table = frame.pivot_table(index=axes[0], columns=axes[1], values=metric,
                                  aggfunc="mean")
        table = table.loc[sorted(table.index, key=_sort_key),
                          sorted(table.columns, key=_sort_key)]
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


def render_terminal(df: pd.DataFrame, title: str) -> str:
    """The table as aligned plain text under `title`."""
    header, body = _cells(df)
    return render_rows(header, body, title)


def render_rows(header: list[str], body: list[list[str]], title: str) -> str:
    """Rows of strings as aligned plain text under `title`."""
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    line = lambda r: "  ".join(c.rjust(w) if i else c.ljust(w)  # noqa: E731
                               for i, (c, w) in enumerate(zip(r, widths, strict=True)))
    rule = "-" * len(line(header))
    return "\n".join([title, rule, line(header), rule, *(line(r) for r in body)])


def write_markdown(df: pd.DataFrame, path: Path) -> None:
    """The table as a GitHub-flavoured markdown table (no tabulate dependency)."""
    header, body = _cells(df)
    esc = lambda s: s.replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(esc(c) for c in header) + " |",
             "|" + "|".join([" --- "] + [" ---: "] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in body]
    metric = df.attrs.get("metric")
    preface = f"Mean `{metric}` per cell.\n\n" if metric else ""
    Path(path).write_text(preface + "\n".join(lines) + "\n")


def write_csv(df: pd.DataFrame, path: Path) -> None:
    """The table as CSV (index kept unless the table is flat)."""
    # %.6g: means like 0.35000000000000003 are float noise, not precision.
    df.to_csv(path, index=df.attrs.get("kind") != "flat", float_format="%.6g")


def _heat_matrix(df: pd.DataFrame) -> tuple[pd.DataFrame, str, str]:
    """The table as a numeric matrix plus axis labels; 1-D tables become a single row."""
    kind = df.attrs.get("kind")
    metric = str(df.attrs.get("metric", ""))
    if kind == "grid":
        return df.astype(float), str(df.index.name or ""), str(df.columns.name or "")
    if kind == "flat":
        axes = df.attrs.get("axes", [])
        # Column by column: iterrows would upcast int params to float (k=5 -> 5.0).
        labels = [", ".join(f"{a}={df[a].iloc[i]}" for a in axes) for i in range(len(df))]
        row = pd.DataFrame([df[metric].to_numpy(dtype=float)], columns=labels, index=[metric])
        return row, "", "trial group"
    row = df.T.astype(float)
    return row, "", str(df.index.name or "")


def write_heatmap(df: pd.DataFrame, path: Path, title: str) -> None:
    """An annotated heatmap PNG of the table."""
    import matplotlib

    matplotlib.use("Agg")  # headless: sweeps run on servers without a display
    import matplotlib.pyplot as plt

    mat, ylabel, xlabel = _heat_matrix(df)
    values = mat.to_numpy(dtype=float)
    n_rows, n_cols = values.shape
    # Wide enough for the cells and for the title, which is often longer than the grid.
    width = max(4.0, 1.1 * n_cols + 2.5, 0.085 * len(title) + 1.0)
    fig, ax = plt.subplots(figsize=(width, max(2.0, 0.6 * n_rows + 1.6)))
    try:
        image = ax.imshow(values, cmap="viridis", aspect="auto")
        ax.set_xticks(range(n_cols), [str(c) for c in mat.columns],
                      rotation=30 if n_cols > 4 else 0, ha="right" if n_cols > 4 else "center")
        ax.set_yticks(range(n_rows), [str(i) for i in mat.index])
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        finite = values[~pd.isna(values)]
        mid = (finite.min() + finite.max()) / 2 if finite.size else 0.0
        for i in range(n_rows):
            for j in range(n_cols):
                v = values[i, j]
                if not math.isnan(v):
                    # Dark text on the bright end of viridis, light text on the dark end.
                    ax.text(j, i, f"{v:.3f}", ha="center", va="center",
                            color="black" if v > mid else "white", fontsize=9)
        fig.colorbar(image, ax=ax, label=str(df.attrs.get("metric", "")))
        fig.tight_layout()
        fig.savefig(path, dpi=120)
    finally:
        plt.close(fig)


def threshold_note(metric: str) -> str:
    """Where a metric's threshold was chosen: said under every table that shows it."""
    if metric.startswith("seed_miou") and metric != "seed_miou_heldout":
        return (f"`{metric}`: background threshold chosen on the scored images' ground truth "
                f"(the paper's protocol); `seed_miou_heldout` scores each image at a threshold "
                f"chosen on the other images.")
    return ""


def cells_markdown(cells: list[cells_mod.Cell], axes: list[str], metric: str,
                   link=None) -> str:
    header, body = cells_mod.rows(cells, axes, metric, link)
    esc = lambda s: s.replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(esc(c) for c in header) + " |",
             "|" + "|".join([" --- "] * len(header)) + "|"]
    return "\n".join(lines + ["| " + " | ".join(esc(c) for c in row) + " |" for row in body])


def sweep_cells(trials: list[TrialRecord], metric: str, mode: str, sweep: str | None,
                rows: str | None = None, cols: str | None = None
                ) -> tuple[list[cells_mod.Cell], list[str]]:
    """The sweep's cells, best first, each with its verdict against the best."""
    done = _finished(trials, metric)
    axes = table_axes(done, rows, cols)
    return cells_mod.rank_cells(cells_mod.group_cells(done, metric, axes, sweep), mode), axes


def results_markdown(uri: str, trials: list[TrialRecord], metric: str, mode: str,
                     sweep: str | None) -> str:
    """The parent run's results section: every cell, best first, linked to its runs."""
    try:
        cells, axes = sweep_cells(trials, metric, mode, sweep)
    except TrackingError:
        return "No trial finished with a score."
    link = lambda c: ", ".join(run_link(uri, r, n) for r, n in zip(  # noqa: E731
        c.run_ids, c.run_names, strict=True))
    paper = paper_table(sweep)
    shown = cells[:MAX_NOTE_CELLS]  # a run description holds 8,000 characters
    more = (f"{len(cells) - len(shown)} more cells: `launch.py report`."
            if len(cells) > len(shown) else "")
    notes = [f"Best first by `{metric}` ({mode}); n = runs per cell (training seeds), "
             f"images = images each score covers. *Within noise*: the gap to the best is under "
             f"two standard errors of the replicates' means, or (one run per cell) the 95% "
             f"bootstrap intervals over images overlap.",
             threshold_note(metric),
             f"*paper*: the published value ({paper})." if paper else "", more]
    return (headline(cells, axes, metric) + "\n\n" + cells_markdown(shown, axes, metric, link)
            + "\n\n" + "\n".join(n for n in notes if n))


def headline(cells: list[cells_mod.Cell], axes: list[str], metric: str) -> str:
    """One line a collapsed description still shows: the best cell, and each other cell's
    value and verdict (up to three)."""
    def name(cell: cells_mod.Cell) -> str:
        return ",".join(f"{a.rsplit('.', 1)[-1]}={cell.point[a]}" for a in axes) or "all"

    best = cells[0]
    others = "; ".join(f"{name(c)} {cells_mod.format_value(c)} ({c.verdict.split(' (')[0]})"
                       for c in cells[1:4])
    return (f"**Best `{metric}`: {name(best)} = {cells_mod.format_value(best)} "
            f"(n={best.n}).** {others}")


def make_report(uri: str, experiment: str, sweep_name: str | None, out_dir: Path,
                rows: str | None = None, cols: str | None = None) -> dict:
    """Build a sweep's ablation table and its cells with noise, write report.md/.csv/.png, and
    log them to the sweep."""
    parent_id, trials = list_trials(uri, experiment, sweep_name)
    parent = get_trial(uri, parent_id)
    name = parent.tags.get(tag.SWEEP, parent.run_name)
    metric = parent.tags.get(tag.METRIC)
    if not metric:
        raise TrackingError(f"sweep run {parent_id} records no metric (tag {tag.METRIC}); "
                            f"it was not started by `launch.py sweep`")
    mode = parent.tags.get(tag.MODE, "max")
    table = ablation_table(trials, metric, rows, cols, mode=mode)
    cells, axes = sweep_cells(trials, metric, mode, name, rows, cols)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    title = f"sweep {name}: mean {metric} ({mode}) over FINISHED trials"
    files = [out_dir / "report.md", out_dir / "report.csv", out_dir / "report.png"]
    write_markdown(table, files[0])
    notes = [threshold_note(metric), f"paper: {paper_table(name)}" if paper_table(name) else ""]
    with files[0].open("a") as fh:
        fh.write("\n## Cells, best first, with their noise\n\n"
                 + cells_markdown(cells, axes, metric) + "\n\n"
                 + "\n".join(n for n in notes if n) + "\n")
    write_csv(table, files[1])
    write_heatmap(table, files[2], title)
    log_files(uri, parent_id, files, subdir="report")
    header, body = cells_mod.rows(cells, axes, metric)
    cells_text = render_rows(header, body, "cells, best first (mean ± std over training "
                                           "seeds; vs best: is the gap more than noise?)")
    text = "\n\n".join(t for t in (render_terminal(table, title), cells_text,
                                    "\n".join(n for n in notes if n)) if t)
    return {"table": text, "files": [str(f) for f in files], "sweep": name,
            "parent_run_id": parent_id,
            "cells": [{"point": c.point, "mean": round(c.mean, 4),
                       "std": None if c.n < 2 else round(c.std, 4), "n": c.n,
                       "paper": c.paper, "verdict": c.verdict} for c in cells]}
