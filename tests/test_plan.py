"""`launch.py sweep FILE --plan`: the trials named as their runs will be, what runs at once, the
time and CPU/GPU-hours from earlier trials in a real MLflow sqlite store (or a rough figure said
to be one), and nothing created anywhere."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from cobra.sweep.plan import (
    ROUGH_S_PER_IMAGE_EPOCH,
    Capacity,
    concurrent_trials,
    format_plan,
    plan_sweep,
    trial_names,
)
from cobra.sweep.spec import grid_points, load_sweep, trial_name
from cobra.sweep.tuner import TPE_STARTUP_TRIALS, _optuna_search
from tests.conftest import run_cli

GRID = "loss.k_sap_neg: [2, 8]\n  loss.k_cap_pos: [2, 8]"
SEARCHED = "loss.tau: {uniform: [0.05, 0.5]}\n  loss.k_sap_neg: [1, 2, 3]"


def _sweep(tmp_path: Path, space: str = GRID, search: str = "{algorithm: grid}",
           extra: str = "") -> Path:
    path = tmp_path / "planned.yaml"
    path.write_text(f"name: planned\nspace:\n  {space}\nsearch: {search}\n"
                    f"overrides: {{train.epochs: 3, data.synthetic.num_train: 200}}\n"
                    f"storage: {tmp_path / 'ray_results'}\nmlflow: {{experiment: plans}}\n"
                    f"{extra}")
    return path


def _state(folder: Path) -> dict[str, str]:
    """Every file under `folder` and a digest of its bytes."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _run(client: MlflowClient, exp: str, start_s: float, end_s: float, tags: dict,
         params: dict | None = None) -> str:
    run = client.create_run(exp, start_time=int(start_s * 1000), tags=tags)
    for key, value in (params or {}).items():
        client.log_param(run.info.run_id, key, value)
    client.set_terminated(run.info.run_id, "FINISHED", end_time=int(end_s * 1000))
    return run.info.run_id


def _earlier_sweep(uri: str, digest: str, durations: list[float], stages: str = "seeds") -> None:
    """A finished sweep in the store: a parent run on base config `digest`, one FINISHED
    child per duration."""
    client = MlflowClient(uri)
    exp = (client.get_experiment_by_name("plans") or client.get_experiment(
        client.create_experiment("plans"))).experiment_id
    parent = _run(client, exp, 0, 1e4, {"cobra.kind": "sweep", "cobra.base_config": digest},
                  {"stages": stages})
    for i, seconds in enumerate(durations):
        _run(client, exp, 100 * i, 100 * i + seconds,
             {"cobra.kind": "trial", "mlflow.parentRunId": parent})


def test_plan_names_the_grid_as_the_runs_and_changes_nothing(tmp_path, monkeypatch, capsys):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.chdir(tmp_path)
    path = _sweep(tmp_path)
    _earlier_sweep(uri, "another-base", [60.0])  # a store that already holds a sweep
    before = _state(tmp_path)

    code, plan, err = run_cli(["sweep", str(path), "--plan"], capsys)
    assert code == 0, err
    assert sorted(plan["trials"]) == sorted(trial_name(p) for p in grid_points(
        load_sweep(path)))
    assert "ksn2·kcp8" in err and "nothing was started" in err
    # no Ray storage, no Optuna database, no MLflow run: every file as it was, byte for byte
    assert _state(tmp_path) == before
    assert len(MlflowClient(uri).search_runs(
        [MlflowClient(uri).get_experiment_by_name("plans").experiment_id])) == 2


@pytest.mark.parametrize("search", ["{algorithm: random, seed: 3}", "{algorithm: tpe, seed: 3}"])
def test_plan_names_are_the_searchers_own_picks_as_trials_finish(tmp_path, search):
    spec = load_sweep(_sweep(tmp_path, SEARCHED, search.replace("}", ", num_trials: 12}")))
    names, known = trial_names(spec)
    # the sweep's searcher as Ray drives it: one trial suggested after another has finished
    searcher = _optuna_search(spec, None)
    ran = []
    for i in range(spec.num_trials):
        ran.append(trial_name(searcher.suggest(f"t{i}")))
        searcher.on_trial_complete(f"t{i}", {"seed_miou": float(i % 5), "training_iteration": 1})
    expected_known = TPE_STARTUP_TRIALS if "tpe" in search else 12
    assert known == expected_known
    assert names[:known] == ran[:known]
    assert len(set(ran)) == len(ran)  # the names tell the trials apart


def test_plan_times_trials_by_earlier_ones_of_the_same_base_config(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    spec = load_sweep(_sweep(tmp_path, extra="max_concurrent: 3\nresources: {cpu: 2}\n"))
    _earlier_sweep(uri, spec.base_digest(), [100.0, 300.0, 200.0])
    _earlier_sweep(uri, "another-base", [5000.0])  # other work: not counted
    _earlier_sweep(uri, spec.base_digest(), [9000.0], stages="seeds,ir_labels,irn,masks")

    plan = plan_sweep(spec, Capacity(cpus=5, gpus=0, where="a test cluster"))
    assert (plan["measured_trials"], plan["trial_s"]) == (3, 200.0)
    assert plan["concurrent"] == 2  # 5 CPUs hold two 2-CPU trials, under max_concurrent 3
    assert (plan["waves"], plan["wall_s"]) == (2, 400.0)
    assert plan["cpu_hours"] == round(4 * 200 * 2 / 3600, 3) and plan["gpu_hours"] == 0
    text = format_plan(plan, spec)
    assert "median of 3 earlier FINISHED trials" in text and "ESTIMATE" not in text


def test_without_earlier_trials_the_time_is_a_rough_figure_said_to_be_one(tmp_path,
                                                                         monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'absent' / 'mlflow.db'}")
    spec = load_sweep(_sweep(tmp_path))
    plan = plan_sweep(spec, Capacity(cpus=2, gpus=0, where="here"))
    per_image, size = ROUGH_S_PER_IMAGE_EPOCH["cpu"]
    expected = 200 * 3 * per_image * (spec.base.data.image_size / size) ** 2
    assert plan["measured_trials"] == 0 and plan["trial_s"] == round(expected, 1)
    assert plan["estimate_basis"].startswith("ESTIMATE, nothing measured: 200 images × 3 epochs")
    assert not (tmp_path / "absent").exists()  # the missing store was not created


def test_what_runs_at_once_is_capped_by_the_cluster_and_a_trial_too_big_is_said(tmp_path):
    spec = load_sweep(_sweep(tmp_path, extra="max_concurrent: 8\nresources: {cpu: 1, gpu: 0.5}\n"))
    assert concurrent_trials(spec, Capacity(cpus=16, gpus=1, where="x")) == 2  # two per card
    assert concurrent_trials(spec, Capacity(cpus=3, gpus=4, where="x")) == 3
    assert concurrent_trials(spec, Capacity(cpus=64, gpus=8, where="x")) == 4  # 4 trials in all
    assert concurrent_trials(spec, Capacity(cpus=64, gpus=0, where="x")) == 0
    plan = plan_sweep(spec, Capacity(cpus=64, gpus=0, where="a CPU box"))
    assert plan["wall_s"] is None
    assert "NO TRIAL FITS" in format_plan(plan, spec)
