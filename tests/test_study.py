"""The sweep's Optuna study in a real SQLite database: where it goes, its name, a resumed
sweep continuing it, a new sweep refused over an old one, and the report's plots.

The searcher is the sweep's own (`cobra.sweep.tuner._optuna_search`, Ray's OptunaSearch);
importing it does not start Ray. A resume is what Ray does with a searcher: `save` its state
with the experiment's, `restore` it in the next driver."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from cobra import study
from cobra.errors import ConfigError
from cobra.results import optuna_plots
from cobra.sweep.spec import grid_points, load_sweep
from cobra.sweep.tuner import _optuna_search
from cobra.tracking import TrialRecord
from cobra.tracking import tags as tag


def _spec(tmp_path: Path, search: str, space: str = "loss.tau: {uniform: [0.05, 0.5]}",
          extra: str = ""):
    path = tmp_path / "searched.yaml"
    path.write_text(f"name: tau_search\nspace:\n  {space}\n  loss.k_sap_neg: [1, 2, 3]\n"
                    f"search: {search}\n{extra}")
    return load_sweep(path)


def _finish(searcher, trial_id: str, value: float) -> dict:
    params = searcher.suggest(trial_id)
    searcher.on_trial_complete(trial_id, {"seed_miou": value, "training_iteration": 1})
    return params


def test_the_study_goes_beside_the_mlflow_store_unless_the_sweep_or_environment_say(
        tmp_path, monkeypatch):
    monkeypatch.delenv(study.STORAGE_ENV, raising=False)
    store = tmp_path / "stores" / "mlflow.db"
    assert (study.storage_url(None, f"sqlite:///{store}")
            == f"sqlite:///{tmp_path / 'stores' / 'optuna.db'}")
    monkeypatch.chdir(tmp_path)
    assert study.storage_url(None, "http://mlflow:5000") == f"sqlite:///{tmp_path / 'optuna.db'}"
    monkeypatch.setenv(study.STORAGE_ENV, "postgresql://optuna@db/optuna")
    assert study.storage_url(None, f"sqlite:///{store}") == "postgresql://optuna@db/optuna"
    assert study.storage_url("sqlite:////data/o.db", "x") == "sqlite:////data/o.db"
    spec = _spec(tmp_path, "{algorithm: tpe}", extra="optuna_storage: sqlite:////data/o.db\n")
    assert spec.optuna_storage == "sqlite:////data/o.db"


def test_a_tpe_study_is_named_after_the_sweep_and_a_resume_continues_it(tmp_path):
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    spec = _spec(tmp_path, "{algorithm: tpe, seed: 1, num_trials: 4}")
    searcher = _optuna_search(spec, study.open_storage(url))
    first = _finish(searcher, "t1", 50.0)
    searcher.suggest("t2")  # running when the driver dies
    # Ray saves the searcher's state with the experiment's; a resumed driver restores it into
    # a fresh searcher (built in memory here: the study must come back from the saved state)
    searcher.save(str(tmp_path / "searcher.pkl"))
    restored = _optuna_search(spec, None)
    restored.restore(str(tmp_path / "searcher.pkl"))
    restored.on_trial_complete("t2", {"seed_miou": 52.0, "training_iteration": 1})
    _finish(restored, "t3", 51.0)

    saved = optuna.load_study(study_name="tau_search", storage=url)
    complete = [t for t in saved.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert [t.value for t in complete] == [50.0, 52.0, 51.0]
    assert complete[0].params == first
    assert saved.best_value == 52.0 and saved.direction == optuna.study.StudyDirection.MAXIMIZE


def test_a_resume_from_a_snapshot_older_than_the_study_keeps_the_studys_result(tmp_path):
    """Ray snapshots the searcher now and then; the study in the database moves on at every
    result. A trial that finished after the last snapshot is reported again on resume."""
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    spec = _spec(tmp_path, "{algorithm: tpe, seed: 1, num_trials: 4}")
    searcher = _optuna_search(spec, study.open_storage(url))
    searcher.suggest("t1")
    searcher.save(str(tmp_path / "snapshot.pkl"))  # t1 still running here
    final = {"seed_miou": 50.0, "training_iteration": 3}
    searcher.on_trial_result("t1", final)
    searcher.on_trial_complete("t1", final)

    restored = _optuna_search(spec, None)
    restored.restore(str(tmp_path / "snapshot.pkl"))
    restored.on_trial_result("t1", final)  # the same result, handed back by the trial
    restored.on_trial_complete("t1", final)
    _finish(restored, "t2", 51.0)
    saved = optuna.load_study(study_name="tau_search", storage=url)
    assert [(t.state.name, t.value) for t in saved.trials] == [("COMPLETE", 50.0),
                                                                ("COMPLETE", 51.0)]


def test_a_new_sweep_is_refused_over_an_old_study_of_its_name_and_resume_accepts_it(tmp_path):
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    storage = study.open_storage(url)
    study.check_fresh(storage, url, "tau_search", resume=False)  # nothing there yet
    _finish(_optuna_search(_spec(tmp_path, "{algorithm: tpe}"), storage), "t1", 1.0)
    with pytest.raises(ConfigError, match="study 'tau_search' already exists .* --resume .* "
                                          "optuna delete-study"):
        study.check_fresh(storage, url, "tau_search", resume=False)
    study.check_fresh(storage, url, "tau_search", resume=True)
    study.check_fresh(storage, url, "another_sweep", resume=False)


def test_a_grid_sweep_in_the_database_still_visits_every_point_once(tmp_path):
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    spec = _spec(tmp_path, "{algorithm: grid}", space="loss.tau: [0.05, 0.1]")
    searcher = _optuna_search(spec, study.open_storage(url))
    visited = [_finish(searcher, f"t{i}", float(i)) for i in range(spec.num_trials)]
    expected = grid_points(spec)
    assert sorted(map(repr, visited)) == sorted(map(repr, expected))
    assert [list(p) for p in visited] == [list(expected[0])] * len(expected)  # key order kept


def test_report_draws_optuna_importance_and_slice_for_a_searched_sweep_only(tmp_path):
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    searcher = _optuna_search(_spec(tmp_path, "{algorithm: tpe, num_trials: 6}"),
                              study.open_storage(url))
    for i in range(6):
        _finish(searcher, f"t{i}", 40.0 + i)
    parent = TrialRecord("p", "tau_search", params={"search.algorithm": "tpe"},
                         tags={tag.OPTUNA_STORAGE: url, tag.OPTUNA_STUDY: "tau_search"})
    files, notes = optuna_plots(parent, tmp_path)
    assert [f.name for f in files] == ["optuna_importance.png", "optuna_slice.png"]
    assert all(f.stat().st_size > 10_000 for f in files) and notes == []

    grid = TrialRecord("g", "g", params={"search.algorithm": "grid"}, tags=parent.tags)
    assert optuna_plots(grid, tmp_path / "grid") == ([], [])
    missing = TrialRecord("m", "m", params={"search.algorithm": "tpe"},
                          tags={tag.OPTUNA_STORAGE: url, tag.OPTUNA_STUDY: "gone"})
    assert optuna_plots(missing, tmp_path) == ([], [f"Optuna plots skipped: no study 'gone' "
                                                    f"in {url}"])
