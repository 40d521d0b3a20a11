"""Sweeps end to end with a real local Ray, real Optuna and a real MLflow sqlite store: a small
grid, the best-trial hand-off to `final`, the report, crash retry, non-finite trials, resume after
an interrupt, and the bad-input contract."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from cobra.config import unflatten
from cobra.sweep.trainable import TrialContext, trial_run_dir
from tests.conftest import TINY_OVERRIDES, run_cli

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


@pytest.fixture
def sweep_env(tmp_path, tiny_data_root, monkeypatch):
    """A tracking store, a Ray storage dir and a base config, all under tmp_path."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    base = dict(o.split("=", 1) for o in TINY_OVERRIDES)
    base = {k: yaml.safe_load(v) for k, v in base.items()}
    base["data.root"] = str(tiny_data_root)
    yield {"uri": uri, "dir": tmp_path, "base": unflatten(base)}
    import ray

    ray.shutdown()


def write_sweep(env, name: str, space: dict, **extra) -> Path:
    sweep = {"name": name, "base": env["base"], "space": space,
             "search": {"algorithm": "grid", "seed": 0}, "resources": {"cpu": 1},
             "max_concurrent": 2, "storage": str(env["dir"] / "ray_results"),
             "mlflow": {"experiment": "tests"}, **extra}
    path = env["dir"] / f"{name}.yaml"
    path.write_text(yaml.safe_dump(sweep))
    return path


def children(client: MlflowClient, parent_id: str):
    exp = client.get_run(parent_id).info.experiment_id
    return client.search_runs([exp], f"tags.mlflow.parentRunId = '{parent_id}'")


def checkpoint_bytes_per_trial(storage: Path, client: MlflowClient, runs) -> list[float]:
    """Per trial: every checkpoint byte it left (Ray's, the run directory's, MLflow's) ÷ its
    model's fp32 weight bytes."""
    ratios = []
    for run in runs:
        trial_dir = next(storage.glob(f"*_{run.data.tags['ray_trial_id']}"))
        files = list(trial_dir.rglob("*.pt"))
        weights = torch.load(trial_dir / "run/checkpoints/last.pt", weights_only=True)["model"]
        fp32 = sum(v.numel() * 4 for v in weights.values() if v.is_floating_point())
        tracked = [a.file_size for a in client.list_artifacts(run.info.run_id, "checkpoints")]
        ratios.append((sum(f.stat().st_size for f in files) + sum(tracked)) / fp32)
    return ratios


def test_grid_sweep_records_every_trial_and_hands_the_best_to_final(sweep_env, capsys):
    # one trial at a time, so the second runs in the first one's worker process
    path = write_sweep(sweep_env, "grid", {"loss.k_cap_pos": [1, 3]}, max_concurrent=1)
    code, result, err = run_cli(["sweep", str(path)], capsys)
    assert code == 0, err
    assert result["trials"] == 2 and result["errored"] == 0
    # one checkpoint per trial: Ray keeps the last; staging (in the run directory, never the
    # system temp folder) is removed
    storage = sweep_env["dir"] / "ray_results" / "grid"
    assert len(list(storage.glob("*/checkpoint_*"))) == 2
    assert not list(storage.rglob(".ray-checkpoint-*"))

    client = MlflowClient(sweep_env["uri"])
    parent = client.get_run(result["parent_run_id"])
    assert parent.data.tags["cobra.kind"] == "sweep" and parent.info.status == "FINISHED"
    runs = children(client, parent.info.run_id)
    assert len(runs) == 2
    for run in runs:
        assert run.info.status == "FINISHED"
        assert run.data.params["loss.k_cap_pos"] in {"1", "3"}
        assert run.info.run_name in {"kcp1", "kcp3"}
        assert {"ray_trial_id", "ray_node_id"} <= set(run.data.tags)
        for key in ("loss_cls", "loss_cam", "loss_cap", "loss_sap", "cls_map_cnn",
                    "cls_map_vit", "seed_miou", "seed_threshold"):
            assert key in run.data.metrics, key
        # per-class IoU is one table artifact, not a chart per class
        assert not any(k.startswith("seed_iou/") for k in run.data.metrics)
        table = client.load_table(run.info.experiment_id, "seeds/per_class_iou.json",
                                  run_ids=[run.info.run_id])
        assert table["class"].iloc[0] == "background" and len(table) == 9  # 8 classes + bg
        assert run.data.metrics["seed_num_images"] == 4  # seeds.max_images of TINY_OVERRIDES
        assert (run.data.metrics["seed_miou_ci_lo"] <= run.data.metrics["seed_miou"]
                <= run.data.metrics["seed_miou_ci_hi"])
        # who ran it, from which commit, on which data
        assert run.data.tags["mlflow.user"] and len(run.data.tags["mlflow.source.git.commit"]) == 40
        contexts = {d.tags[0].value for d in run.inputs.dataset_inputs}
        # the trials ran seeds only: the seed split's context says so
        assert contexts == {"training", "validation (mAP)", "scored (seeds)"}
        # the sweep's metric is each trial's first (MLflow's Compare plots it first)
        assert list(run.data.metrics)[0] == "seed_miou"
        history = client.get_metric_history(run.info.run_id, "loss_cls")
        assert [m.step for m in history] == [0]
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"config.yaml", "checkpoints", "pictures"} <= artifacts
        assert {a.path for a in client.list_artifacts(run.info.run_id, "image_counts")} == {
            "image_counts/seeds.npz"}
        tracked = torch.load(client.download_artifacts(run.info.run_id, "checkpoints/last.pt",
                                                       str(sweep_env["dir"])), weights_only=True)
        assert tracked["optimizer"] is None  # MLflow keeps the weights alone
    assert max(checkpoint_bytes_per_trial(storage, client, runs)) <= 3.0
    # a finished trial's worker took the next trial (reuse_actors): torch, timm and MLflow are
    # imported once per worker, not once per trial
    assert len({r.data.tags["ray_worker_pid"] for r in runs}) == 1

    # the best trial by a direct MLflow query is the one the sweep and `final --best` pick
    best = max(runs, key=lambda r: r.data.metrics["seed_miou"])
    assert parent.data.tags["cobra.best_run_id"] == best.info.run_id == result["best_run_id"]

    code, report, err = run_cli(["report", "--sweep", "grid", "--experiment", "tests",
                             "--out", str(sweep_env["dir"] / "report")], capsys)
    assert code == 0, err
    assert "k_cap_pos" in err
    assert (sweep_env["dir"] / "report" / "report.md").exists()

    code, final, err = run_cli(["final", "--best", "--sweep", "grid", "--experiment", "tests",
                            "--runs-dir", str(sweep_env["dir"] / "runs"),
                            "--set", "seeds.max_images=2"], capsys)
    assert code == 0, err
    assert final["source_run_id"] == best.info.run_id
    assert "seed_miou" in final
    final_run = client.get_run(final["final_run_id"])
    assert final_run.data.tags["source_run_id"] == best.info.run_id
    # the final run's scores carry their own names: never in the trials' seed_miou column
    for key in ("seed_miou", "ir_label_precision", "mask_miou", "mask_miou_nocrf", "seg_miou"):
        assert key in final and f"final/{key}" in final_run.data.metrics, key
        assert key not in final_run.data.metrics, key
    # its description links to the source trial, inside the MLflow UI
    link = f"(#/experiments/{best.info.experiment_id}/runs/{best.info.run_id})"
    assert link in final_run.data.tags["mlflow.note.content"]
    # both networks are logged and registered (sqlite has a model registry)
    for name in ("cobra-segmentation", "cobra-irn"):
        [version] = client.search_model_versions(f"name = '{name}'")
        assert version.run_id == final_run.info.run_id, name
        assert final["models"][name] == f"registered {name} v{version.version}"


def test_crashed_trial_is_retried_from_its_checkpoint_and_nonfinite_fails_alone(
        sweep_env, capsys, monkeypatch):
    monkeypatch.setenv("COBRA_CRASH_ONCE_AFTER_EPOCH", "1")
    path = write_sweep(sweep_env, "faults", {"train.lr": [0.01, 1.0e12]},
                       overrides={"train.epochs": 2}, max_failures=1)
    code, result, err = run_cli(["sweep", str(path)], capsys)
    assert code == 0, err
    client = MlflowClient(sweep_env["uri"])
    runs = {r.data.params["train.lr"]: r for r in children(client, result["parent_run_id"])}
    assert len(runs) == 2  # a retried trial stays one MLflow run

    good = runs["0.01"]
    assert good.info.status == "FINISHED" and "seed_miou" in good.data.metrics
    history = client.get_metric_history(good.info.run_id, "loss_cls")
    assert sorted(m.step for m in history) == [0, 1]  # epoch 0 not trained twice

    bad = runs["1000000000000.0"]
    assert bad.info.status == "FAILED"
    assert "non-finite loss" in bad.data.tags["cobra.failure"]
    assert result["best_run_id"] == good.info.run_id


def test_interrupted_sweep_resumes_without_rerunning_finished_trials(sweep_env):
    path = write_sweep(sweep_env, "resumable", {"loss.k_cap_pos": [1, 2, 3]}, max_concurrent=1)
    env = {**os.environ, "MLFLOW_TRACKING_URI": sweep_env["uri"]}
    launch = [sys.executable, str(ROOT / "launch.py"), "sweep", str(path)]
    proc = subprocess.Popen(launch, cwd=sweep_env["dir"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    client = MlflowClient(sweep_env["uri"])
    deadline = time.time() + 300
    finished = []
    while time.time() < deadline and not finished:
        time.sleep(2)
        exp = client.get_experiment_by_name("tests")
        if exp is not None:
            finished = client.search_runs([exp.experiment_id],
                                          "tags.`cobra.kind` = 'trial' and "
                                          "attributes.status = 'FINISHED'")
    assert finished, "no trial finished in time"
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode == 130, out
    assert "--resume" in out

    proc = subprocess.run([*launch, "--resume"], cwd=sweep_env["dir"], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["trials"] == 3 and result["errored"] == 0
    runs = children(client, result["parent_run_id"])
    assert sorted(r.data.params["loss.k_cap_pos"] for r in runs) == ["1", "2", "3"]
    first = finished[0]
    assert len(client.get_metric_history(first.info.run_id, "loss_cls")) == 1

    # the Optuna study (optuna.db beside the sqlite MLflow store, named after the sweep) is the
    # one both drivers searched in: the resumed searcher reconnected to it
    import optuna

    url = f"sqlite:///{sweep_env['dir'] / 'optuna.db'}"
    study = optuna.load_study(study_name="resumable", storage=url)
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert sorted(t.params["loss.k_cap_pos"] for t in done) == [1, 2, 3]
    parent = client.get_run(result["parent_run_id"])
    assert parent.data.tags["cobra.optuna_storage"] == url
    assert parent.data.tags["cobra.optuna_study"] == "resumable"

    # the plan of the same sweep times its trials by these three, and starts nothing
    plan = subprocess.run([*launch, "--plan"], cwd=sweep_env["dir"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert plan.returncode == 0, plan.stderr[-3000:]
    planned = json.loads(plan.stdout.strip().splitlines()[-1])
    assert planned["measured_trials"] == 3 and "median of 3 earlier" in plan.stderr
    assert len(children(client, result["parent_run_id"])) == 3

    # a new sweep of that name, its Ray state gone, does not silently extend the old study
    shutil.rmtree(sweep_env["dir"] / "ray_results" / "resumable")
    again = subprocess.run(launch, cwd=sweep_env["dir"], env=env, capture_output=True,
                           text=True, timeout=300)
    assert again.returncode == 2, again.stderr[-3000:]
    assert "study 'resumable' already exists" in again.stderr
    assert "optuna delete-study" in again.stderr


def test_bad_sweeps_exit_2_before_any_trial(sweep_env, capsys, monkeypatch):
    cases = {
        "unknown key": ({"loss.k_cap_pos": [1]}, {"max_concurent": 2}, "max_concurrent"),
        "no such config key": ({"loss.k_cap_poss": [1]}, {}, "loss.k_cap_pos"),
        "empty space": ({}, {}, "empty search space"),
        "k beyond the grid": ({"loss.k_cap_pos": [1, 99]}, {}, "only 16 patches"),
        "no repeats": ({"loss.k_cap_pos": [1]}, {"repeats": 0}, "'repeats' must be >= 1"),
        "bogus stage": ({"loss.k_cap_pos": [1]}, {"stages": ["bogus"]},
                        "unknown stage 'bogus'; choose from seeds"),
    }
    for name, (space, extra, needle) in cases.items():
        path = write_sweep(sweep_env, name.replace(" ", "_"), space, **extra)
        code, result, err = run_cli(["sweep", str(path)], capsys)
        assert code == 2 and result is None, name
        assert len(err.strip().splitlines()) == 1 and needle in err, (name, err)

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://alice:s3cret@127.0.0.1:9")
    path = write_sweep(sweep_env, "unreachable", {"loss.k_cap_pos": [1]})
    started = time.time()
    code, _, err = run_cli(["sweep", str(path)], capsys)
    assert code == 2 and "unreachable" in err and time.time() - started < 30
    assert "s3cret" not in err and "alice:***@127.0.0.1" in err  # the password is never echoed
    assert not (sweep_env["dir"] / "ray_results" / "unreachable").exists()

    monkeypatch.setenv("MLFLOW_TRACKING_URI", sweep_env["uri"])
    code, _, err = run_cli(["final", "--best", "--sweep", "nothing-here", "--experiment", "tests"],
                       capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1

    # a trial that never wrote its checkpoint cannot feed the final stage
    from cobra import tracking

    parent = tracking.start_sweep_run(tracking.Store(sweep_env["uri"]), "tests", "stub", path, "seed_miou", "max")
    trial = tracking.start_trial_run(tracking.Store(sweep_env["uri"]), parent, "stub-trial", {})
    code, _, err = run_cli(["final", "--run", trial, "--experiment", "tests",
                        "--runs-dir", str(sweep_env["dir"] / "runs")], capsys)
    assert code == 2 and "no checkpoint" in err and len(err.strip().splitlines()) == 1
    assert not list((sweep_env["dir"] / "runs").glob("*"))


def test_a_trials_run_directory_is_in_local_storage_and_in_its_working_dir_for_a_uri(tmp_path,
                                                                                     monkeypatch):
    # Ray re-uploads its own trial directory at every snapshot: the run directory must not be in it
    ray_trial_dir = tmp_path / "ray-session" / "driver_artifacts" / "k=1_abc"

    def ctx(experiment_dir: str) -> TrialContext:
        return TrialContext(base_config={}, store=None, parent_run_id="p",
                            metric="seed_miou", experiment_dir=experiment_dir)

    local = trial_run_dir(ctx(str(tmp_path / "ray_results" / "demo")), ray_trial_dir)
    assert local == tmp_path / "ray_results" / "demo" / "k=1_abc" / "run"
    monkeypatch.chdir(tmp_path)
    remote = trial_run_dir(ctx("s3://bucket/ray_results/demo"), ray_trial_dir)
    assert remote == tmp_path / "run"



def test_replicated_sweep_with_the_masks_stage_ranks_on_mask_miou_and_reports_noise(sweep_env,
                                                                                     capsys):
    path = write_sweep(sweep_env, "replicated", {"loss.k_cap_pos": [1, 3]}, repeats=2,
                       stages=["seeds", "masks"], metric="mask_miou")
    code, result, err = run_cli(["sweep", str(path)], capsys)
    assert code == 0, err
    assert result["trials"] == 4 and result["errored"] == 0
    client = MlflowClient(sweep_env["uri"])
    runs = children(client, result["parent_run_id"])
    names = sorted(r.info.run_name for r in runs)
    assert names == ["kcp1·seed0", "kcp1·seed1", "kcp3·seed0", "kcp3·seed1"]
    for run in runs:  # every trial ran the masks stage and logged its score and noise
        m = run.data.metrics
        assert {"mask_miou", "mask_miou_ci_lo", "mask_miou_ci_hi", "ir_label_precision",
                "seed_miou"} <= set(m), sorted(m)
        assert m["mask_num_images"] == 4 and m["mask_miou_ci_lo"] <= m["mask_miou"]
        # each image's counts: the paired test over images the report runs
        assert {a.path for a in client.list_artifacts(run.info.run_id, "image_counts")} == {
            "image_counts/seeds.npz", "image_counts/masks.npz"}
    best = max(runs, key=lambda r: r.data.metrics["mask_miou"])
    assert result["best_trial_mask_miou"] == best.data.metrics["mask_miou"]

    parent = client.get_run(result["parent_run_id"])
    assert parent.data.params["metric"] == "mask_miou"
    assert parent.data.params["repeats"] == "2" and parent.data.params["num_trials"] == "4"
    assert parent.data.params["space.loss.k_cap_pos"] == "[1, 3]"
    note = parent.data.tags["mlflow.note.content"]
    # the description MLflow shows unfolded: the best cell, links to the full table and the
    # sweep's charts, and the best and runner-up cells
    assert note.startswith("**Best `mask_miou`: kcp") and len(note.splitlines()) == 6
    assert "results.md)" in note and "viewStateShareKey=" in note
    assert "mask_miou (mean ± std)" in note
    full = Path(client.download_artifacts(parent.info.run_id, "results.md",
                                          str(sweep_env["dir"]))).read_text()
    assert full.startswith("**Best `mask_miou`: kcp") and "mask_miou mean ± std" in full
    assert "Seed noise: seed std" in full and "this sweep's replicates" in full
    for run in runs:  # the full table links every trial
        assert f"(#/experiments/{run.info.experiment_id}/runs/{run.info.run_id})" in full
    experiment = client.get_experiment(parent.info.experiment_id)
    assert f"mlflow.sharedViewState.cobra-{parent.info.run_id}" in experiment.tags

    code, report, err = run_cli(["report", "--sweep", "replicated", "--experiment", "tests",
                                 "--out", str(sweep_env["dir"] / "report")], capsys)
    assert code == 0, err
    by_k = {c["point"]["loss.k_cap_pos"]: c for c in report["cells"]}
    for k in (1, 3):  # each cell: the two seeds' mean and sample std, n = 2
        values = [r.data.metrics["mask_miou"] for r in runs
                  if r.data.params["loss.k_cap_pos"] == str(k)]
        assert by_k[k]["n"] == 2
        assert by_k[k]["mean"] == pytest.approx(sum(values) / 2, abs=1e-4)
        assert by_k[k]["std"] == pytest.approx(abs(values[0] - values[1]) / 2 ** 0.5, abs=1e-4)
    # the parent's headline metric is the best cell's mean over its seeds, as in its description
    assert result["best_mask_miou"] == pytest.approx(report["cells"][0]["mean"], abs=1e-4)
    assert parent.data.metrics["best_mask_miou"] == pytest.approx(report["cells"][0]["mean"],
                                                                  abs=1e-4)
    labels = [c["verdict_label"] for c in report["cells"]]
    assert labels[0] == "best" and labels[1] in {"behind", "within seed noise",
                                                 "within image noise"}
    # the report and the description give the runner-up the same verdict
    runner_up = report["cells"][1]["verdict"].split(":")[0]
    assert runner_up in client.get_run(result["parent_run_id"]).data.tags["mlflow.note.content"]
    assert "± " in err and "vs best" in err
