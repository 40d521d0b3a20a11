"""Ablation tables of a finished sweep: a metric pivoted by one or two swept config keys.

MLflow is reached only through `cobra.tracking`, which keeps this module importable (and
testable) with plain TrialRecords.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from cobra.errors import ConfigError, TrackingError
from cobra.tracking import TrialRecord, get_trial, list_trials, log_files, sanitize_key

# Params that differ between trials without being an ablation axis: seeds are replicates (their
# cells are averaged), run names and directories are bookkeeping.
_BOOKKEEPING = {"run.dir", "run.name"}


def _is_replicate(key: str) -> bool:
    return key.rsplit(".", 1)[-1] == "seed"


def _parse(value: str) -> Any:
    """MLflow stores params as strings; give numbers back their order (2 < 10)."""
    for cast in (int, float):
        try:
            return cast(value)
        except (TypeError, ValueError):
            pass
    return value


def _sort_key(value: Any) -> tuple[int, Any]:
    # Numbers before strings, each in natural order, so mixed columns still sort.
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (0, value)
    return (1, str(value))


def varying_params(trials: Sequence[TrialRecord]) -> list[str]:
    """Param keys whose value differs between trials, in sorted order."""
    keys = sorted({k for t in trials for k in t.params})
    return [k for k in keys if len({t.params.get(k) for t in trials}) > 1]


def ablation_table(trials: list[TrialRecord], metric: str, rows: str | None = None,
                   cols: str | None = None, mode: str = "max") -> pd.DataFrame:
    """Mean of `metric` over FINISHED trials, pivoted by `rows` × `cols` (chosen when None)."""
    key = sanitize_key(metric)
    done = [t for t in trials if t.status == "FINISHED" and _finite(t.metrics.get(key))]
    if not done:
        raise TrackingError(f"no FINISHED trial has metric '{metric}' ({len(trials)} trials); "
                            f"wait for trials to finish or pass another --metric")
    known = sorted({k for t in done for k in t.params})
    for name, given in (("--rows", rows), ("--cols", cols)):
        if given is not None and given not in known:
            raise ConfigError(f"{name} '{given}' is not a param of this sweep; the swept params "
                              f"are: {', '.join(varying_params(done)) or '(none)'}")
    if rows is None and cols is None:
        varying = varying_params(done)
        axes = [k for k in varying if not _is_replicate(k) and k not in _BOOKKEEPING]
        if not axes:
            axes = [k for k in varying if k not in _BOOKKEEPING]
    else:
        axes = [k for k in (rows, cols) if k is not None]

    frame = pd.DataFrame([{**{a: _parse(t.params.get(a, "None")) for a in axes},
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


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


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


def make_report(uri: str, experiment: str, sweep_name: str | None, out_dir: Path,
                rows: str | None = None, cols: str | None = None) -> dict:
    """Build a sweep's ablation table, write report.md/.csv/.png, and log them to the sweep."""
    parent_id, trials = list_trials(uri, experiment, sweep_name)
    parent = get_trial(uri, parent_id)
    name = parent.tags.get("cobra.sweep", parent.run_name)
    metric = parent.tags.get("cobra.metric")
    if not metric:
        raise TrackingError(f"sweep run {parent_id} records no metric (tag cobra.metric); "
                            f"it was not started by `launch.py sweep`")
    mode = parent.tags.get("cobra.mode", "max")
    table = ablation_table(trials, metric, rows, cols, mode=mode)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    title = f"sweep {name}: mean {metric} ({mode}) over FINISHED trials"
    files = [out_dir / "report.md", out_dir / "report.csv", out_dir / "report.png"]
    write_markdown(table, files[0])
    write_csv(table, files[1])
    write_heatmap(table, files[2], title)
    log_files(uri, parent_id, files, subdir="report")
    return {"table": render_terminal(table, title), "files": [str(f) for f in files],
            "sweep": name, "parent_run_id": parent_id}
