"""The Optuna study a sweep searches with, kept in a database rather than in the Ray searcher's
memory: it outlives the driver, `--resume` continues it, and Optuna's own tools open it
(`optuna-dashboard <storage>`, the importance and slice plots `launch.py report` draws).

Where: the sweep's `optuna_storage:` key, else `$COBRA_OPTUNA_STORAGE`, else `optuna.db`
(SQLite) beside the default MLflow store. The study is named after the sweep. Optuna is imported
inside the functions: `launch.py report` on a grid sweep never needs it."""

import importlib.util
import os
import warnings
from pathlib import Path
from typing import Any

from cobra.errors import ConfigError
from cobra.tracking.store import sqlite_path
from cobra.uris import redact

STORAGE_ENV = "COBRA_OPTUNA_STORAGE"
DEFAULT_FILE = "optuna.db"
# Searches whose study the report draws: a grid's trials are fixed points, not a search Optuna's
# importance or slice plots can say anything about beyond the ablation table.
PLOTTED_SEARCHES = ("tpe", "random")


def storage_url(sweep_key: str | None, tracking_uri: str) -> str:
    """The study's database URL: the sweep's key, else the environment, else `optuna.db` in the
    directory of a SQLite MLflow store (the working directory for an MLflow server)."""
    url = (sweep_key or os.environ.get(STORAGE_ENV, "")).strip()
    if url:
        return url
    db = sqlite_path(tracking_uri)
    folder = Path.cwd() if db is None else db.expanduser().resolve().parent
    return f"sqlite:///{folder / DEFAULT_FILE}"


def open_storage(url: str):
    """Optuna's RDB storage at `url` (tables created on first use)."""
    import optuna

    try:
        return optuna.storages.RDBStorage(url)
    except Exception as exc:  # bad URL, missing driver, unreachable server: all the user's to fix
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"Optuna storage '{public_url(url)}' cannot be opened ({first}); fix "
                          f"the sweep's 'optuna_storage:' or ${STORAGE_ENV}") from None


def study_exists(storage, name: str) -> bool:
    return any(s.study_name == name for s in storage.get_all_studies())


def check_fresh(storage, url: str, name: str, resume: bool) -> None:
    """A new sweep must not silently extend (or clobber) an old study of the same name: its
    TPE would start from another sweep's results. `--resume` continues it on purpose."""
    if resume or not study_exists(storage, name):
        return
    raise ConfigError(f"Optuna study '{name}' already exists in {public_url(url)} (an earlier "
                      f"sweep of that name); pass --resume to continue it, give the sweep "
                      f"another name, or delete it: optuna delete-study --storage "
                      f"'{public_url(url)}' --study-name '{name}'")


def public_url(url: str) -> str:
    """`url` as it may be written into a tag or printed: its secrets replaced by ***."""
    return redact(url, url)


def load_study(url: str, name: str):
    """The study `name` at `url`, or None when the storage has no such study."""
    import optuna

    storage = open_storage(url)
    if not study_exists(storage, name):
        return None
    return optuna.load_study(study_name=name, storage=storage)


def draw_plots(url: str, name: str, out_dir: Path) -> tuple[list[Path], list[str]]:
    """Optuna's parameter-importance and slice plots of study `name`, as PNG files in
    `out_dir`; returns the files written and a note for each plot that could not be drawn."""
    if importlib.util.find_spec("matplotlib") is None:
        return [], ["Optuna plots skipped: matplotlib is not installed"]
    if "***" in url:  # the tag hides the password: the environment may hold the full URL
        url = os.environ.get(STORAGE_ENV, "").strip()
        if not url:
            return [], [f"Optuna plots skipped: the study's storage URL hides its password; "
                        f"set ${STORAGE_ENV} to open it"]
    study = load_study(url, name)
    if study is None:
        return [], [f"Optuna plots skipped: no study '{name}' in {public_url(url)}"]
    import matplotlib

    matplotlib.use("Agg")  # headless: reports are made on servers without a display
    from optuna.visualization import matplotlib as optuna_plots

    files, notes = [], []
    for stem, plot in (("optuna_importance", optuna_plots.plot_param_importances),
                       ("optuna_slice", optuna_plots.plot_slice)):
        path = Path(out_dir) / f"{stem}.png"
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
                _save(plot(study), path)
        except (ValueError, RuntimeError) as exc:  # too few finished trials, one value per key
            notes.append(f"Optuna {stem.split('_')[1]} plot skipped: {exc}")
            continue
        files.append(path)
    return files, notes


def _save(axes: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    figure = (axes.flat[0] if hasattr(axes, "flat") else axes).figure
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tight_layout's complaints about long key names
        figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
