"""Sweep files: every shipped one validates, grids expand as the paper's tables, names read well."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cobra.sweep.spec import grid_points, load_sweep, trial_name

SWEEPS = sorted((Path(__file__).resolve().parent.parent / "sweeps").glob("*.yaml"))


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.stem)
def test_shipped_sweeps_validate(path):
    spec = load_sweep(path)
    assert spec.name == path.stem and spec.space
    if spec.algorithm == "grid":
        assert spec.num_trials == len(grid_points(spec))


def test_table_4_grid_is_the_papers():
    spec = load_sweep(SWEEPS[0].parent / "k_ablation.yaml")
    points = grid_points(spec)
    assert len(points) == 16
    assert {p["loss.k_sap_neg"] for p in points} == {5, 10, 15, 20}
    assert spec.base.loss.k_sap_pos == spec.base.loss.k_cap_neg == 20


def test_trial_names_are_short_and_readable():
    # every searched value fits the ~20 characters MLflow's run list shows of a name
    assert trial_name({"loss.k_sap_neg": 5, "loss.k_cap_pos": 20}) == "ksn5·kcp20"
    assert trial_name({"loss.lambda_cam": 0.123456}) == "lc0.123"
    assert trial_name({"loss.k_cap_pos": 2, "train.seed": 1}) == "kcp2·seed1"
    assert trial_name({"seeds.fusion": "fuse"}) == "fusion=fuse"
    # initials that collide keep the key's last part
    assert trial_name({"loss.k_sap_pos": 5, "loss.k_sap_neg": 20}) == "ksp5·ksn20"
    assert trial_name({"loss.lambda_sap": 0.1, "model.lambda_sap": 0.2}) == (
        "loss.lambda_sap0.1·model.lambda_sap0.2")


# ------------------------------------------------------------------------------------------------
# Every key typed and ranged (issue 11)


def _sweep_file(tmp_path: Path, extra: str) -> Path:
    path = tmp_path / "s.yaml"
    path.write_text("space:\n  loss.tau: [0.05, 0.1]\n" + extra)
    return path


@pytest.mark.parametrize(("extra", "message"), [
    ("search: {seed: abc}", "'search.seed' must be an integer, got 'abc'"),
    ("search: {seed: 1.7}", "'search.seed' must be an integer"),
    ("search: {seed: -1}", "'search.seed' must be >= 0"),
    ("max_failures: three", "'max_failures' must be an integer, got 'three'"),
    ("max_failures: -1", "'max_failures' must be >= 0, got -1"),
    ("search: {num_trials: -4}", "sweep key 'search.num_trials' must be >= 1, got -4"),
    ("search: {algorithm: grid, num_trials: 0}", "'search.num_trials' must be >= 1, got 0"),
    ("resources: {cpu: .nan}", "'resources.cpu' must be a finite number"),
    ("resources: {cpu: 0}", "'resources.cpu' must be > 0.0, got 0.0"),
    ("resources: {gpu: .inf}", "'resources.gpu' must be a finite number"),
    ("search: {algoritm: grid}", "unknown sweep key 'search.algoritm'; did you mean "
                                 "'search.algorithm'?"),
    ("scheduler: {type: ashaa}", "'scheduler.type' must be one of none, asha; got 'ashaa'; "
                                 "did you mean 'asha'?"),
    ("mlflow: {experiment: ' '}", "sweep key 'mlflow.experiment' is empty"),
    ("metric: seed_mIoU", "did you mean 'seed_miou'?"),
    ("metric: accuracy", "must be a metric trials report"),
    ("name: ../../escaped", "sweep key 'name' must be letters"),
    ("name: a/b", "sweep key 'name' must be letters"),
    ("name: ..", "sweep key 'name' must be letters"),
    ("storage: 12", "'storage' must be a string"),
    ("optuna_storage: 12", "'optuna_storage' must be a string"),
    ("optuna_storge: sqlite:///o.db", "did you mean 'optuna_storage'?"),
    ("repeats: 0", "sweep key 'repeats' must be >= 1, got 0"),
    ("repeats: two", "sweep key 'repeats' must be an integer"),
    ("repeats: 3\nsearch: {algorithm: tpe}", "'repeats: 3' needs search.algorithm=grid"),
    ("stages: [bogus]", "unknown stage 'bogus'; choose from seeds, ir_labels, irn, masks"),
    ("stages: [seeds, mask]", "unknown stage 'mask'; choose from seeds, ir_labels, irn, masks, "
                              "segment; did you mean 'masks'?"),
    ("stages: seeds, masks", "unknown stage 'seeds, masks'"),
    ("metric: mask_miou", "'mask_miou', which the 'masks' stage reports; add it to the "
                          "trials' stages: `stages: [seeds, masks]`"),
])
def test_bad_sweep_values_are_refused_with_the_key_named(tmp_path, extra, message):
    from cobra.config import ConfigError

    with pytest.raises(ConfigError, match=re.escape(message)):
        load_sweep(_sweep_file(tmp_path, extra))


def test_good_sweep_values_still_load(tmp_path):
    spec = load_sweep(_sweep_file(tmp_path, "name: k.abl-1_b\nmax_failures: 0\n"
                                  "metric: seed_miou_aobj\nsearch: {seed: 3, num_trials: 2}\n"
                                  "resources: {cpu: 0.5, gpu: 0}\n"))
    assert (spec.name, spec.max_failures, spec.seed, spec.num_trials) == ("k.abl-1_b", 0, 3, 2)


def test_repeats_add_the_training_seed_to_the_grid_and_stages_their_prerequisites(tmp_path):
    spec = load_sweep(_sweep_file(tmp_path, "search: {algorithm: grid}\nrepeats: 3\n"
                                  "stages: [seeds, masks]\nmetric: mask_miou\n"))
    assert spec.grid() == {"loss.tau": [0.05, 0.1], "train.seed": [0, 1, 2]}
    assert spec.num_trials == 6 and list(spec.space) == ["loss.tau"]
    assert spec.stages == ("seeds", "ir_labels", "irn", "masks")
    assert spec.metric == "mask_miou"
    plain = load_sweep(_sweep_file(tmp_path, "search: {algorithm: grid}\n"))
    assert (plain.repeats, plain.stages, plain.num_trials) == (1, ("seeds",), 2)
    both = tmp_path / "both.yaml"
    both.write_text("space: {train.seed: [0, 1]}\nsearch: {algorithm: grid}\nrepeats: 2\n")
    from cobra.config import ConfigError

    with pytest.raises(ConfigError, match="'repeats' and 'train.seed' in space both set"):
        load_sweep(both)


def test_every_metric_a_trial_reports_can_be_ranked():
    from cobra.stages.seed_scores import headline
    from cobra.sweep.spec import TRIAL_METRICS

    evaluation = {"fixed": {"miou": 1.0, "threshold": 0.1, "miou_at_default": 1.0},
                  "aobj": {"miou": 1.0, "percentile": 90.0}}
    assert set(headline(evaluation)) <= set(TRIAL_METRICS)


def test_each_stage_declares_its_metrics_and_the_sweep_spec_reads_them_from_there():
    # issue 22: the names were listed in spec.py and again in the stages
    from cobra.stages import METRICS
    from cobra.stages.seed_scores import headline
    from cobra.sweep import spec

    evaluation = {"fixed": {"miou": 1.0, "threshold": 0.1, "miou_at_default": 1.0},
                  "aobj": {"miou": 1.0, "percentile": 90.0}}
    assert set(headline(evaluation)) == set(METRICS["seeds"])
    assert (*METRICS["train"], *METRICS["seeds"]) == spec.TRIAL_METRICS
    assert all(spec.STAGE_METRICS[name] is METRICS[name] for name in spec.STAGE_METRICS)


def test_a_bare_ctrl_c_still_prints_the_resume_command(tmp_path, monkeypatch, capsys):
    pytest.importorskip("ray")
    from ray import tune

    from cobra.sweep import tuner

    class Interrupted:
        def __init__(self, *args, **kwargs):
            pass

        def fit(self):
            raise KeyboardInterrupt

    finished = []
    # the sweep's Optuna study goes to ./optuna.db: in tmp_path, not in the checkout (a second
    # run would find the first one's study and refuse)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(tuner, "_preflight",
                        lambda spec, resume: tuner.tracking.Store("sqlite:///unused.db"))
    monkeypatch.setattr(tuner, "_init_ray", lambda: None)
    monkeypatch.setattr(tuner.tracking, "start_sweep_run", lambda *a, **k: "parent")
    monkeypatch.setattr(tuner.tracking, "MlflowReporter",
                        lambda *a, **k: type("R", (), {"set_tags": lambda self, tags: None,
                                                       "log_params": lambda self, p: None})())
    monkeypatch.setattr(tuner.tracking, "set_description", lambda *a, **k: None)
    monkeypatch.setattr(tuner.tracking, "save_sweep_view", lambda *a, **k: "")
    monkeypatch.setattr(tuner.tracking, "log_dataset_inputs", lambda *a, **k: None)
    monkeypatch.setattr(tuner, "dataset_splits", lambda cfg, stages: [])
    monkeypatch.setattr(tuner.tracking, "finish_sweep",
                        lambda *a, status="FINISHED", **k: finished.append(status))
    monkeypatch.setattr(tune, "with_parameters", lambda fn, **k: fn)
    monkeypatch.setattr(tune, "with_resources", lambda fn, resources: fn)
    monkeypatch.setattr(tune, "Tuner", Interrupted)
    monkeypatch.chdir(tmp_path)  # the study's default storage is ./optuna.db
    spec = load_sweep(_sweep_file(tmp_path, f"storage: {tmp_path / 'ray'}\n"))
    with pytest.raises(KeyboardInterrupt):
        tuner.run_sweep(spec)
    assert finished == ["KILLED"]
    assert f"launch.py sweep {spec.file} --resume" in capsys.readouterr().err


def test_k_values_are_checked_against_the_models_patch_grid(tmp_path):
    # the demo's ViT has 8 px patches: 144 patches at 96 px, not the ceil(96 / 16)² = 36 a
    # literal 16 gave, which refused a valid k sweep (issue 22)
    from cobra.config import ConfigError

    base = Path(__file__).resolve().parent.parent / "configs" / "demo.yaml"
    path = tmp_path / "k.yaml"
    path.write_text(f"base: {base}\nspace:\n  loss.k_cap_pos: [4, 100]\n")
    assert load_sweep(path).space["loss.k_cap_pos"].values == (4, 100)
    path.write_text(f"base: {base}\nspace:\n  loss.k_cap_pos: [4, 145]\n")
    with pytest.raises(ConfigError, match="has only 144 patches"):
        load_sweep(path)
