"""cobra.tracking and cobra.results against a real MLflow sqlite store (no mocks)."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from cobra.errors import TrackingError
from cobra.results import ablation_table, make_report
from cobra.tracking import (
    MlflowReporter,
    best_trial,
    check_reachable,
    download_trial,
    find_sweep_run,
    find_trial_run,
    finish_sweep,
    list_trials,
    redact,
    start_final_run,
    start_sweep_run,
    start_trial_run,
)
from cobra.tracking import Store as TrackingStore
from cobra.tracking.views import save_sweep_view, sweep_view_state

EXP = "cobra-test"
SWEEP = "ksap"
# (ray trial id, k_sap_pos, seed_miou, final status)
TRIALS = [("t0", 10, 0.41, "FINISHED"), ("t1", 20, 0.57, "FINISHED"), ("t2", 30, 0.90, "FAILED")]
EPOCHS = 3


@dataclass
class Logged:
    uri: str
    db: TrackingStore
    root: Path
    parent: str
    children: dict[str, str]  # ray trial id -> run id


def _trial_params(k: int) -> dict:
    return {"loss.k_sap_pos": k, "train.lr": 0.01, "data.root": None, "model.cnn": "resnet18"}


def _write_run_files(root: Path, k: int) -> tuple[Path, Path]:
    root.mkdir(parents=True, exist_ok=True)
    (root / "checkpoints").mkdir(exist_ok=True)
    config = root / "config.yaml"
    config.write_text(f"loss:\n  k_sap_pos: {k}\n")
    ckpt = root / "checkpoints" / "last.pt"
    ckpt.write_bytes(bytes([k]) * 64)
    return config, ckpt


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Logged:
    """A sweep parent with three trials logged through MlflowReporter; t2 ends FAILED."""
    root = tmp_path_factory.mktemp("mlflow")
    db = TrackingStore(f"sqlite:///{root}/mlflow.db")
    sweep_file = root / "sweep.yaml"
    sweep_file.write_text("name: ksap\nsearch:\n  loss.k_sap_pos: [10, 20, 30]\n")
    parent = start_sweep_run(db, EXP, SWEEP, sweep_file, "seed_miou", "max")
    children = {}
    for trial_id, k, miou, status in TRIALS:
        run_id = start_trial_run(db, parent, f"trial-{trial_id}",
                                 {"ray_trial_id": trial_id, "ray_node_id": "node-a"})
        rep = MlflowReporter(db, run_id)
        rep.log_params(_trial_params(k))
        rep.log_params(_trial_params(k))  # a retried trial logs the same params again
        for epoch in range(EPOCHS):
            rep.log_epoch(epoch, {"loss": 1.0 / (epoch + 1), "val/miou": miou * epoch,
                                  "nan_metric": float("nan")}, checkpoint=None)
        config, ckpt = _write_run_files(root / "runs" / trial_id, k)
        rep.log_artifact(config)
        if status == "FINISHED":
            rep.log_artifact(ckpt, "checkpoints")
        else:
            rep.set_tags({"cobra.failure": "NonFiniteLossError: loss is nan"})
            rep.log_text("Traceback ...\nNonFiniteLossError", "failure.txt")
        rep.log_summary({"seed_miou": miou})
        rep.close(status)
        children[trial_id] = run_id
    return Logged(uri=db.uri, db=db, root=root, parent=parent, children=children)


def test_parent_child_structure(store: Logged) -> None:
    client = MlflowClient(store.uri)
    exp = client.get_experiment_by_name(EXP)
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("cobra.kind") == "sweep"]
    assert [r.info.run_id for r in parents] == [store.parent]
    assert parents[0].info.run_name == SWEEP
    assert parents[0].data.tags["cobra.metric"] == "seed_miou"
    assert parents[0].data.tags["cobra.mode"] == "max"
    assert [a.path for a in client.list_artifacts(store.parent)] == ["sweep.yaml"]

    kids = client.search_runs([exp.experiment_id],
                              f"tags.`mlflow.parentRunId` = '{store.parent}'")
    assert {r.info.run_id for r in kids} == set(store.children.values())
    for r in kids:
        assert r.data.tags["cobra.kind"] == "trial"
        assert r.data.tags["cobra.sweep"] == SWEEP
        assert r.data.tags["ray_node_id"] == "node-a"
        assert r.data.params["data.root"] == "None"
        assert r.data.params["loss.k_sap_pos"] == str(
            dict((t[0], t[1]) for t in TRIALS)[r.data.tags["ray_trial_id"]])
        assert "nan_metric" not in r.data.metrics
    statuses = {r.data.tags["ray_trial_id"]: r.info.status for r in kids}
    assert statuses == {t[0]: t[3] for t in TRIALS}
    failed = client.get_run(store.children["t2"])
    assert failed.data.tags["cobra.failure"].startswith("NonFiniteLossError")
    assert "failure.txt" in [a.path for a in client.list_artifacts(failed.info.run_id)]

    assert find_sweep_run(store.db, EXP, SWEEP) == store.parent
    assert find_sweep_run(store.db, EXP, "nope") is None
    assert find_trial_run(store.db, store.parent, "t1") == store.children["t1"]
    assert find_trial_run(store.db, store.parent, "t9") is None


def test_metric_history(store: Logged) -> None:
    client = MlflowClient(store.uri)
    run_id = store.children["t1"]
    history = client.get_metric_history(run_id, "val/miou")
    assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == [
        (e, pytest.approx(0.57 * e)) for e in range(EPOCHS)]
    assert len(client.get_metric_history(run_id, "loss")) == EPOCHS
    assert client.get_run(run_id).data.metrics["seed_miou"] == pytest.approx(0.57)


def test_changed_param_raises(store: Logged) -> None:
    rep = MlflowReporter(store.db, store.children["t0"])
    with pytest.raises(TrackingError, match="loss.k_sap_pos"):
        rep.log_params({"loss.k_sap_pos": 99})


def test_many_params_and_odd_metric_keys(store: Logged) -> None:
    client = MlflowClient(store.uri)
    exp_id = client.get_experiment_by_name(EXP).experiment_id
    run_id = client.create_run(exp_id, run_name="scratch").info.run_id
    rep = MlflowReporter(store.db, run_id)
    rep.log_params({f"p.{i}": i for i in range(250)} | {"long": "x" * 7000})
    rep.log_metrics({"miou@0.5": 1.0, "a:b": 2.0, "inf": float("inf")}, step=1)
    data = client.get_run(run_id).data
    assert len(data.params) == 251 and len(data.params["long"]) == 6000
    assert data.metrics == {"miou_0.5": 1.0, "a_b": 2.0}
    client.delete_run(run_id)


def test_best_trial_matches_direct_query(store: Logged) -> None:
    client = MlflowClient(store.uri)
    exp_id = client.get_experiment_by_name(EXP).experiment_id
    direct = client.search_runs(
        [exp_id], f"tags.`mlflow.parentRunId` = '{store.parent}' and attributes.status = "
        "'FINISHED'", order_by=["metrics.seed_miou DESC"], max_results=1)[0]
    best = best_trial(store.db, EXP, SWEEP)
    assert best.run_id == direct.info.run_id == store.children["t1"]  # t2 scored higher but FAILED
    assert best.params["loss.k_sap_pos"] == "20"
    assert best_trial(store.db, EXP, SWEEP, mode="min").run_id == store.children["t0"]
    assert best_trial(store.db, EXP, run_id=store.children["t2"]).status == "FAILED"


def test_one_sweep_record_gives_report_final_and_best_the_same_sweep(store: Logged) -> None:
    from cobra.tracking import get_sweep

    sweep = get_sweep(store.db, EXP, SWEEP)
    assert (sweep.name, sweep.metric, sweep.mode) == (SWEEP, "seed_miou", "max")
    assert sweep.parent.run_id == store.parent
    assert {t.run_id for t in sweep.trials} == set(store.children.values())
    assert {t.experiment_id for t in sweep.trials} == {sweep.parent.experiment_id}


def test_download_round_trip(store: Logged, tmp_path: Path) -> None:
    run_id = store.children["t1"]
    dst = download_trial(store.db, run_id, tmp_path / "run")
    src = store.root / "runs" / "t1"
    assert (dst / "config.yaml").read_text() == (src / "config.yaml").read_text()
    assert (dst / "checkpoints" / "last.pt").read_bytes() == (src / "checkpoints" /
                                                               "last.pt").read_bytes()
    with pytest.raises(TrackingError, match="no checkpoint artifact"):
        download_trial(store.db, store.children["t2"], tmp_path / "failed")


def test_final_run_and_finish_sweep(store: Logged) -> None:
    client = MlflowClient(store.uri)
    best = best_trial(store.db, EXP, SWEEP)
    final = client.get_run(start_final_run(store.db, EXP, best))
    assert final.info.run_name == "final-trial-t1"
    assert final.data.tags["cobra.kind"] == "final"
    assert final.data.tags["source_run_id"] == best.run_id
    # the best cell's mean over its seeds heads the parent run, the best single trial beside it
    finish_sweep(store.db, store.parent, best.run_id, best.metrics["seed_miou"], "seed_miou",
                 cell_mean=0.55)
    parent = client.get_run(store.parent)
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["cobra.best_run_id"] == best.run_id
    assert parent.data.metrics["best_seed_miou"] == pytest.approx(0.55)
    assert parent.data.metrics["best_trial_seed_miou"] == pytest.approx(0.57)


def test_a_sweep_saves_a_view_of_its_trials_that_mlflows_ui_opens(store: Logged) -> None:
    """The view MLflow 3.17's experiment page lists under *Views* (an experiment tag whose
    envelope and state its bundle parses; checked in Chromium): the sweep's trials, best first,
    with the metric and searched keys as columns and charts of the metric against each key."""
    client = MlflowClient(store.uri)
    searched = ["loss.k_sap_neg", "loss.k_cap_pos"]
    link = save_sweep_view(store.db, store.parent, SWEEP, "seed_miou", "max", searched,
                           "train.seed")
    exp_id = client.get_run(store.parent).info.experiment_id
    key = f"cobra-{store.parent}"
    assert link.endswith(f"(#/experiments/{exp_id}/runs?viewStateShareKey={key}"
                         f"&compareRunsMode=CHART)")
    envelope = json.loads(client.get_experiment(exp_id).tags[f"mlflow.sharedViewState.{key}"])
    assert envelope["name"] == f"sweep {SWEEP}" and isinstance(envelope["createdAt"], int)
    state = json.loads(envelope["state"])  # the UI's state travels as a JSON string
    assert state["selectedColumns"] == ["metrics.`seed_miou`", "params.`loss.k_sap_neg`",
                                        "params.`loss.k_cap_pos`", "params.`train.seed`"]
    charts = state["compareRunCharts"]
    section = state["compareRunSections"][0]["uuid"]
    assert all(c["metricSectionId"] == section for c in charts)
    parallel = next(c for c in charts if c["type"] == "PARALLEL")
    assert parallel["selectedParams"] == searched and parallel["selectedMetrics"] == ["seed_miou"]
    scatter = [(c["xaxis"], c["yaxis"]) for c in charts if c["type"] == "SCATTER"]
    assert scatter == [({"key": k, "type": "PARAM"}, {"key": "seed_miou", "type": "METRIC"})
                       for k in searched]
    contour = next(c for c in charts if c["type"] == "CONTOUR")
    assert [contour[a]["key"] for a in ("xaxis", "yaxis", "zaxis")] == [*searched, "seed_miou"]
    # its filter and sort are MLflow's own search grammar: this sweep's trials, best first
    order = f"{state['orderByKey']} {'ASC' if state['orderByAsc'] else 'DESC'}"
    runs = client.search_runs([exp_id], state["searchFilter"], order_by=[order])
    assert {r.info.run_id for r in runs} == set(store.children.values())
    scores = [r.data.metrics["seed_miou"] for r in runs if "seed_miou" in r.data.metrics]
    assert scores == sorted(scores, reverse=True)
    # a resumed sweep saves its view again: one view per sweep, not one per resume
    save_sweep_view(store.db, store.parent, SWEEP, "seed_miou", "max", searched)
    views = [k for k in client.get_experiment(exp_id).tags if k.startswith("mlflow.sharedView")]
    assert views == [f"mlflow.sharedViewState.{key}"]


def test_a_quoted_sweep_name_gets_a_view_without_a_filter_mlflow_cannot_parse() -> None:
    state = sweep_view_state("k's", "mask_miou", "min", ["loss.k_cap_pos"], None)
    assert "searchFilter" not in state and state["orderByAsc"] is True
    assert not any(c["type"] == "CONTOUR" for c in state["compareRunCharts"])  # one key
    assert state["selectedColumns"] == ["metrics.`mask_miou`", "params.`loss.k_cap_pos`"]


def test_unknown_sweep_and_experiment(store: Logged) -> None:
    with pytest.raises(TrackingError, match=r"sweep 'nope' not found.*available: .*ksap"):
        list_trials(store.db, EXP, "nope")
    with pytest.raises(TrackingError, match="experiment 'missing' not found"):
        best_trial(store.db, "missing", SWEEP)


def test_redact_hides_the_password_of_any_uri_and_nothing_else() -> None:
    for uri in ("http://alice:s3cret@host:5000", "https://alice:s3cret@host",
                "postgresql://alice:s3cret@db/mlflow"):
        text = redact(f"store {uri} failed (auth s3cret rejected)", uri)
        assert "s3cret" not in text and "alice:***@" in text
    for uri in ("http://host:5000", "sqlite:////tmp/mlflow.db", "not a url"):
        assert redact(f"store {uri}", uri) == f"store {uri}"


def test_check_reachable(store: Logged, tmp_path: Path) -> None:
    check_reachable(store.uri)
    start = time.monotonic()
    with pytest.raises(TrackingError, match="unreachable") as info:
        check_reachable("http://127.0.0.1:9", timeout_s=2.0)
    assert time.monotonic() - start < 5.0
    assert "\n" not in str(info.value)
    with pytest.raises(TrackingError, match="does not exist"):
        check_reachable(f"sqlite:///{tmp_path}/absent/mlflow.db")


def test_report_grid(store: Logged, tmp_path: Path) -> None:
    """2×2 grid × 2 seeds: each cell is the mean of its two seeds; FAILED trials are ignored."""
    sweep_file = tmp_path / "grid.yaml"
    sweep_file.write_text("name: grid\n")
    parent = start_sweep_run(store.db, EXP, "grid", sweep_file, "seed_miou", "max")
    expected = {}
    for k in (5, 20):
        for lam in (0.1, 1.0):
            values = [k / 100 + lam + s / 10 for s in (0, 1)]
            expected[(k, lam)] = sum(values) / 2
            for seed, value in zip((0, 1), values, strict=True):
                run_id = start_trial_run(store.db, parent, f"k{k}-l{lam}-s{seed}",
                                         {"ray_trial_id": f"{k}_{lam}_{seed}"})
                rep = MlflowReporter(store.db, run_id)
                rep.log_params({"loss.k_sap_pos": k, "loss.lambda_proj": lam,
                                "train.seed": seed, "loss.tau": 0.1})
                rep.log_summary({"seed_miou": value})
                rep.close("FINISHED")
    bad = start_trial_run(store.db, parent, "bad", {"ray_trial_id": "bad"})
    rep = MlflowReporter(store.db, bad)
    rep.log_params({"loss.k_sap_pos": 5, "loss.lambda_proj": 0.1, "train.seed": 0})
    rep.log_summary({"seed_miou": 100.0})
    rep.close("FAILED")

    newest, _ = list_trials(store.db, EXP, None)
    assert newest == parent  # no sweep name: the newest sweep
    _, trials = list_trials(store.db, EXP, "grid")
    table = ablation_table(trials, "seed_miou", None, None)
    assert table.index.name == "loss.k_sap_pos" and table.columns.name == "loss.lambda_proj"
    assert list(table.index) == [5, 20] and list(table.columns) == [0.1, 1.0]
    for (k, lam), value in expected.items():
        assert table.loc[k, lam] == pytest.approx(value)
    one_d = ablation_table(trials, "seed_miou", "loss.k_sap_pos", None)
    assert one_d.loc[5, "seed_miou"] == pytest.approx(
        (expected[(5, 0.1)] + expected[(5, 1.0)]) / 2)

    out = make_report(store.db, EXP, "grid", tmp_path / "report")
    assert out["sweep"] == "grid" and out["parent_run_id"] == parent
    assert [Path(f).name for f in out["files"]] == ["report.md", "report.csv", "report.png"]
    assert all(Path(f).stat().st_size > 0 for f in out["files"])
    assert "loss.k_sap_pos" in out["table"] and f"{expected[(20, 1.0)]:.4f}" in out["table"]
    md = (tmp_path / "report" / "report.md").read_text()
    assert f"{expected[(5, 0.1)]:.4f}" in md
    logged = MlflowClient(store.uri).list_artifacts(parent, "report")
    assert sorted(Path(a.path).name for a in logged) == ["report.csv", "report.md", "report.png"]


def test_runs_say_who_ran_them_from_which_commit_on_which_data(store: Logged) -> None:
    from cobra.tracking import log_dataset_inputs

    client = MlflowClient(store.uri)
    parent = client.get_run(store.parent)
    assert parent.data.tags["mlflow.user"]
    assert len(parent.data.tags["mlflow.source.git.commit"]) == 40
    child = client.get_run(store.children["t0"])
    assert child.data.tags["mlflow.source.git.commit"] == parent.data.tags[
        "mlflow.source.git.commit"]
    log_dataset_inputs(store.db, store.children["t0"], [
        {"name": "voc/train_aug", "context": "training", "source": "/data/VOC", "digest": "ab12",
         "num_images": 10582},
        {"name": "voc/train[:60]", "context": "scored (seeds, masks)", "source": "/data/VOC",
         "digest": "cd34", "num_images": 60}])
    inputs = client.get_run(store.children["t0"]).inputs.dataset_inputs
    assert {(i.dataset.name, i.tags[0].value) for i in inputs} == {
        ("voc/train_aug", "training"), ("voc/train[:60]", "scored (seeds, masks)")}
    assert '"num_images": 60' in next(i.dataset.profile for i in inputs
                                      if i.dataset.digest == "cd34")


def test_metrics_are_rounded_and_tables_and_system_metrics_are_logged(store: Logged, tmp_path,
                                                                      monkeypatch) -> None:
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")
    run_id = start_trial_run(store.db, store.parent, "sysmetrics", {"ray_trial_id": "sm"})
    rep = MlflowReporter(store.db, run_id, system_metrics=True)
    rep.log_summary({"seed_miou": 56.712348912})
    rep.log_table({"class": ["background", "kite"], "iou": [80.1, None]},
                  "seeds/per_class_iou.json")
    time.sleep(1.5)
    rep.close("FINISHED")
    client = MlflowClient(store.uri)
    run = client.get_run(run_id)
    assert run.data.metrics["seed_miou"] == 56.7123
    assert any(k.startswith("system/cpu_utilization") for k in run.data.metrics), run.data.metrics
    assert "seeds/per_class_iou.json" in run.data.tags["mlflow.loggedArtifacts"]  # a table
    table = json.loads(Path(client.download_artifacts(run_id, "seeds/per_class_iou.json",
                                                      str(tmp_path))).read_text())
    assert table["columns"] == ["class", "iou"] and table["data"][0] == ["background", 80.1]


@pytest.mark.parametrize("backend", ["sqlite", "file"])
def test_a_model_is_logged_and_registered(tmp_path: Path, monkeypatch, backend: str) -> None:
    import numpy as np
    import torch

    from cobra.tracking import (
        ModelVersionInfo,
        Store,
        get_or_create_experiment,
        log_torch_model,
    )

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # mlflow 3 refuses file stores else
    uri = (f"sqlite:///{tmp_path / 'store' / 'm.db'}" if backend == "sqlite"
           else (tmp_path / "store" / "mlruns").as_uri())
    (tmp_path / "store").mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///elsewhere.db")
    exp_id = get_or_create_experiment(Store(uri), EXP)
    run_id = Store(uri).client.create_run(exp_id).info.run_id
    config = tmp_path / "config.yaml"
    config.write_text("segment: {arch: deeplabv3plus}\n")
    model = torch.nn.Conv2d(3, 2, 1)
    version = ModelVersionInfo("from trial t0", {"source_run_id": "t0", "final/seg_miou": "67.8"})
    outcome = log_torch_model(Store(uri), run_id, model, "lin", "cobra-test-lin",
                              np.zeros((1, 3, 8, 8), np.float32), ["torch"], [config], version)
    client = MlflowClient(uri)
    # a LoggedModel of the run (the experiment's Models tab), with its signature and example
    [logged] = client.search_logged_models([exp_id])
    assert logged.source_run_id == run_id and logged.name == "lin"
    loaded = mlflow_model_info(f"models:/{logged.model_id}", uri)
    assert tuple(loaded.signature.inputs.to_dict()[0]["tensor-spec"]["shape"]) == (-1, 3, 8, 8)
    assert loaded.saved_input_example_info is not None
    if outcome.startswith("registered"):  # mlflow 3's file store has a registry too
        [made] = client.search_model_versions("name = 'cobra-test-lin'")
        assert made.run_id == run_id and outcome == "registered cobra-test-lin v1"
        assert made.description == "from trial t0" and made.tags["final/seg_miou"] == "67.8"
    else:
        assert backend == "file" and "no model registry" in outcome
    # mlflow's process-wide default store was never touched (mlflow's own client opens one
    # for a file store's registry), and the user's MLFLOW_TRACKING_URI is as it was
    if backend == "sqlite":
        assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml", "store"]
    assert os.environ["MLFLOW_TRACKING_URI"] == "sqlite:///elsewhere.db"


def mlflow_model_info(model_uri: str, uri: str):
    import mlflow

    from cobra.tracking.mlflow_api import process_tracking_uri

    with process_tracking_uri(uri):
        return mlflow.models.get_model_info(model_uri)


def test_final_overrides_turn_progress_bars_on_unless_the_user_says_otherwise() -> None:
    from cobra.final import final_overrides

    assert final_overrides([]) == ["seeds.max_images=null", "train.progress=true"]
    assert final_overrides(["train.progress=false"]) == ["seeds.max_images=null",
                                                         "train.progress=false"]


def test_mlflow_can_read_gpu_metrics_and_skips_the_gpu_quietly_without_one():
    """nvidia-ml-py (a declared dependency) is what MLflow's GPU monitor imports: with it
    installed the monitor starts on an NVIDIA machine and, elsewhere, fails at NVML's init
    (which MLflow catches) instead of for want of the package."""
    import pynvml
    from mlflow.system_metrics.metrics.gpu_monitor import GPUMonitor

    try:
        pynvml.nvmlInit()
        has_gpu = pynvml.nvmlDeviceGetCount() > 0
    except pynvml.NVMLError:
        has_gpu = False
    if has_gpu:
        monitor = GPUMonitor()
        monitor.collect_metrics()
        assert any(key.startswith("gpu_0_") for key in monitor.metrics)
    else:
        with pytest.raises(RuntimeError, match="Failed to initialize NVML"):
            GPUMonitor()


def test_tracking_reads_one_way_and_links_runs_without_asking_the_store():
    # issue 22: queries and runs imported each other, and each link cost a store round trip
    import ast

    from cobra.tracking import queries, run_link

    tree = ast.parse(Path(queries.__file__).read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert "cobra.tracking.runs" not in imported
    assert run_link("7", "abc123", "kcp4·seed1") == "[kcp4·seed1](#/experiments/7/runs/abc123)"


def test_one_store_is_passed_down_and_travels_to_workers_as_its_uri(store: Logged) -> None:
    import pickle

    assert store.db.client is store.db.client  # one client, made once
    again = pickle.loads(pickle.dumps(store.db))  # what Ray sends a trial: the URI alone
    assert again.uri == store.uri and "client" not in vars(again)
    assert find_sweep_run(again, EXP, SWEEP) == store.parent
