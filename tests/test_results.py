"""A sweep's verdicts against a real MLflow sqlite store (no mocks): the parent run's
description and `launch.py report`'s files say the same, counting the images each trial logged
and the seed noise an earlier sweep on the same base config measured."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cobra.layout import IMAGE_COUNTS
from cobra.metrics import confusion_matrix, iou_counts
from cobra.noise import ImageCounts
from cobra.results import NOTE_ROWS, make_report, sweep_results
from cobra.tracking import MlflowReporter, Store, start_sweep_run, start_trial_run, trials_of
from cobra.tracking import tags as tag

EXP = "cobra-results"
BASE = "base-abc"


def counts(accuracy: float, seed: int, num_images: int = 40) -> ImageCounts:
    """A 3-class prediction right on `accuracy` of each image's pixels (fixed ground truth)."""
    out = []
    for i in range(num_images):
        gt = np.random.default_rng(100 + i).integers(0, 3, (16, 16))
        wrong = np.random.default_rng(seed * 101 + i).random((16, 16)) > accuracy
        out.append(iou_counts(confusion_matrix(np.where(wrong, (gt + 1) % 3, gt), gt, 3)))
    return ImageCounts(tuple(f"img{i:03d}" for i in range(num_images)), np.stack(out))


def sweep(db: Store, root: Path, name: str, base: str,
          trials: list[tuple[int, int, float, ImageCounts | None]]) -> str:
    """A parent run and its FINISHED trials: (k, seed, seed_miou, per-image counts)."""
    sweep_file = root / f"{name}.yaml"
    sweep_file.write_text(f"name: {name}\n")
    parent = start_sweep_run(db, EXP, name, sweep_file, "seed_miou", "max",
                             tags={tag.BASE_CONFIG: base})
    for k, seed, value, image_counts in trials:
        run_id = start_trial_run(db, parent, f"kcp{k}·seed{seed}",
                                 {tag.RAY_TRIAL_ID: f"{name}{k}{seed}",
                                  tag.SEARCHED: "loss.k_cap_pos,train.seed"})
        rep = MlflowReporter(db, run_id)
        rep.log_params({"loss.k_cap_pos": k, "train.seed": seed})
        rep.log_summary({"seed_miou": value, "seed_num_images": 40, "seed_miou_ci_lo": value - 1,
                         "seed_miou_ci_hi": value + 1, "seed_miou_heldout": value,
                         "seed_threshold": 0.35, "seed_heldout_threshold_a": 0.35,
                         "seed_heldout_threshold_b": 0.35})
        if image_counts is not None:
            path = root / run_id / IMAGE_COUNTS["seed_miou"]
            image_counts.save(path)
            rep.log_artifact(path, path.parent.name)
        rep.close("FINISHED")
    return parent


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> tuple[Store, Path, str]:
    root = tmp_path_factory.mktemp("results")
    db = Store(f"sqlite:///{root}/mlflow.db")
    # earlier: two k values x three seeds on the same base config, seed std exactly 1
    sweep(db, root, "calib", BASE, [(k, s, v + s, None) for k, v in ((5, 60.0), (10, 50.0))
                                     for s in range(3)])
    # another base config's replicates (seed std 10) must not count
    sweep(db, root, "elsewhere", "base-xyz", [(5, s, 50.0 + 10 * s, None) for s in range(3)])
    # this sweep: one run per cell. k=10 is 0.5 behind on worse images (within the seed-noise
    # limit 2.776·1·√2 = 3.93); k=20 is 20 behind on worse images (behind)
    good, bad = counts(0.9, 1), counts(0.6, 2)
    parent = sweep(db, root, "single", BASE, [(5, 0, 70.0, good), (10, 0, 69.5, bad),
                                               (20, 0, 50.0, bad)])
    return db, root, parent


def test_description_and_report_give_the_same_verdicts_counting_both_noises(store, tmp_path):
    db, _, parent = store
    note = sweep_results(db, parent, trials_of(db, parent), "seed_miou", "max", "single").full
    report = make_report(db, EXP, "single", tmp_path / "report")
    md = (tmp_path / "report" / "report.md").read_text()

    by_k = {c["point"]["loss.k_cap_pos"]: c for c in report["cells"]}
    assert [by_k[k]["verdict_label"] for k in (5, 10, 20)] == ["best", "within seed noise",
                                                              "behind"]
    assert "3.93" in by_k[10]["verdict"] and "sweep calib (same base config)" in by_k[10]["verdict"]
    assert "seed std 1.00 from 6 runs in 2 cells" in by_k[20]["verdict"]
    assert "beyond image noise (paired bootstrap over 40 images, p<" in by_k[20]["verdict"]
    # the same verdict, word for word, in the description, report.md and the terminal table
    for text in (note, md, report["table"]):
        assert "within seed noise (gap 0.50 ≤ 3.93)" in text
        assert "behind (gap 20.00 > 3.93; images p<0.0005)" in text
    # the description opens on the best cell and the runner-up's verdict, then the table
    first = note.splitlines()[0]
    assert first.startswith("**Best `seed_miou`: kcp5 = 70.00** (1 seed); runner-up kcp10")
    assert "within seed noise" in first
    assert note.splitlines()[2].startswith("| &nbsp;k_cap_pos&nbsp; | &nbsp;seed_miou&nbsp; |")
    assert "± " not in note.split("\n\n")[1]  # one run per cell: no std shown
    assert "*n*: training seeds (runs) per cell" in note and "Names: kcp = loss.k_cap_pos" in note
    assert "both halves chose threshold 0.35" in note and "both halves chose threshold 0.35" in md
    logged = db.client.list_artifacts(parent, "report")
    assert sorted(Path(a.path).name for a in logged) == ["report.csv", "report.md", "report.png"]


def test_the_parent_description_fits_mlflows_unfolded_100_px_and_heads_with_the_cell_mean(store):
    """MLflow 3.17 folds a run description taller than 100 px behind "Show more" (measured in
    Chromium: a line is 19 px + 13 px margin, a table row 20 px): the description is the
    headline line with its links and a table of the best cell and the runner-up, nothing
    more; the full table goes to an artifact."""
    db, root, _ = store
    calib = next(r for r in db.client.search_runs(
        [db.client.get_experiment_by_name(EXP).experiment_id],
        "tags.`cobra.sweep` = 'calib' and tags.`cobra.kind` = 'sweep'"))
    trials = trials_of(db, calib.info.run_id)
    results = sweep_results(db, calib.info.run_id, trials, "seed_miou", "max", "calib",
                            links=["[all cells](#/a)", "[charts](#/b)"])
    lines = results.note.splitlines()
    assert lines[0] == ("**Best `seed_miou`: kcp5 = 61.00 ± 1.00** (3 seeds) · [all cells](#/a)"
                        " · [charts](#/b)")
    assert lines[1] == "" and len(lines) == 4 + NOTE_ROWS  # headline, blank, header, rule, rows
    assert "seed_miou (mean ± std)" in lines[2] and "vs best" in lines[2]
    assert "kcp5" in lines[4] and "best" in lines[4]
    assert "kcp10" in lines[5] and "51.00 ± 1.00" in lines[5] and (
        "beyond seed noise (gap 10.00 > 2.27" in lines[5])
    # the parent's headline metric: the best cell's mean over its three seeds, not its best seed
    assert results.best_mean == pytest.approx(61.0)
    # the full section keeps every cell, its run links and the noise notes
    assert results.full.startswith("**Best `seed_miou`: kcp5 = 61.00 ± 1.00** (3 seeds); runner")
    assert "Seed noise: seed std" in results.full and results.full.count("](#/experiments/") == 6


def test_without_replicates_anywhere_seed_noise_is_unknown_and_says_how_to_measure_it(
        store, tmp_path):
    db, root, _ = store
    parent = sweep(db, root, "alone", "base-new", [(5, 0, 70.0, counts(0.9, 1)),
                                                    (10, 0, 60.0, counts(0.6, 2))])
    note = sweep_results(db, parent, trials_of(db, parent), "seed_miou", "max", "alone").full
    assert "unknown (gap 10.00; seed noise unknown: add `repeats: 3`)" in note
    assert "Seed noise: unmeasured" in note and "add `repeats: 3`" in note


def test_a_trial_declares_the_sweep_metric_first_and_the_experiment_its_primary_metric(store):
    """MLflow's Compare page plots the first shared metric (in logging order) against the
    params that differ: a trial's first metric is its sweep's, whatever is logged before it."""
    db, root, _ = store
    parent = sweep(db, root, "declared", "base-d", [])
    run_id = start_trial_run(db, parent, "kcp5", {tag.RAY_TRIAL_ID: "d0"})
    rep = MlflowReporter(db, run_id)
    rep.log_metrics({"system/cpu_utilization_percentage": 50.0, "cls_map_cnn": 90.0})
    rep.log_epoch(0, {"loss": 1.0})
    rep.log_summary({"seed_miou": 61.5})
    rep.close("FINISHED")
    client = db.client
    run = client.get_run(run_id)
    assert list(run.data.metrics)[0] == "seed_miou" and run.data.metrics["seed_miou"] == 61.5
    history = client.get_metric_history(run_id, "seed_miou")
    assert [(m.step, np.isnan(m.value)) for m in history] == [(-1, True), (0, False)]
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.tags["mlflow.experiment.primaryMetric.name"] == "seed_miou"
    assert experiment.tags["mlflow.experiment.primaryMetric.greaterIsBetter"] == "true"


def test_each_splits_context_names_the_stages_that_used_it(tiny_overrides):
    from cobra.config import load_config
    from cobra.provenance import dataset_splits
    from cobra.stages import POST_TRAIN_STAGES

    cfg = load_config(None, tiny_overrides)
    contexts = lambda stages: [s["context"] for s in dataset_splits(cfg, stages)]  # noqa: E731
    assert contexts(("train", "seeds")) == ["training", "validation (mAP)", "scored (seeds)"]
    assert contexts(("train", "seeds", "ir_labels", "irn", "masks")) == [
        "training", "validation (mAP)", "scored (seeds, masks); trains (irn)"]
    # the final run trains no CoBra and segments val: it never read the training split
    assert contexts(POST_TRAIN_STAGES) == ["validation (segmentation)",
                                           "scored (seeds, masks); trains (irn, segment)"]


def test_the_final_runs_description_gives_every_score_its_split_images_and_interval(store):
    from cobra.config import load_config
    from cobra.final import describe
    from cobra.tracking import get_trial

    db, root, _ = store
    parent = sweep(db, root, "finals", "base-f", [(5, 0, 56.0, None)])
    source = get_trial(db, trials_of(db, parent)[0].run_id)
    metrics = {"seed_miou": 56.7, "seed_miou_ci_lo": 55.1, "seed_miou_ci_hi": 58.2,
               "seed_num_images": 1000, "seed_threshold": 0.35, "seed_miou_heldout": 56.5,
               "ir_label_precision": 96.2, "ir_label_num_images": 1000,
               "mask_miou": 71.1, "mask_miou_ci_lo": 70.0, "mask_miou_ci_hi": 72.3,
               "mask_num_images": 1000, "mask_miou_nocrf": 69.0,
               "seg_miou": 67.8, "seg_miou_ci_lo": 65.9, "seg_miou_ci_hi": 69.6,
               "seg_num_images": 200}
    note = describe(source, metrics, load_config(None, []))
    rows = {line.split(" | ")[0].strip("| `"): line for line in note.splitlines()
            if line.startswith("| `final/")}
    assert set(rows) == {"final/seed_miou", "final/seed_miou_heldout",
                         "final/ir_label_precision", "final/mask_miou",
                         "final/mask_miou_nocrf", "final/seg_miou"}
    # segmentation is scored on val's 200 images, the rest on the seed split's 1000
    assert rows["final/seg_miou"].endswith("| 67.80 | [65.90, 69.60] | 200 | val |")
    assert rows["final/seed_miou"].endswith("| 56.70 | [55.10, 58.20] | 1000 | train |")
    assert rows["final/mask_miou_nocrf"].endswith("| 69.00 | — | 1000 | train |")
    assert "while the trial's `seed_miou` covers 40 images" in note
    assert "cover 1000 images" not in note


def test_a_trials_note_says_why_heldout_equals_the_score():
    from cobra.results import trial_note

    metrics = {"seed_miou": 56.4, "seed_num_images": 200, "seed_miou_ci_lo": 54.9,
               "seed_miou_ci_hi": 57.9, "seed_threshold": 0.35, "seed_miou_heldout": 56.4,
               "seed_heldout_threshold_a": 0.35, "seed_heldout_threshold_b": 0.35}
    note = trial_note(metrics)
    assert "`seed_miou` 56.40 on 200 images (95% CI over images [54.90, 57.90])" in note
    assert "equal to `seed_miou` because both halves chose 0.35" in note
    # halves that chose differently: no such claim
    other = trial_note({**metrics, "seed_miou_heldout": 55.1, "seed_heldout_threshold_b": 0.4})
    assert "(0.35 and 0.4)" in other and "equal to" not in other


def test_heatmap_colours_do_not_dramatise_a_spread_inside_noise():
    from cobra.results import colour_range

    demo = np.array([56.4, 57.9, 57.2, 56.8])  # spread 1.5, inside a seed-noise band of 3.9
    assert colour_range(demo, 3.9, True) == pytest.approx((57.9 - 7.8, 57.9))
    # a spread beyond the noise keeps the full range; a loss (min) counts from its best
    assert colour_range(np.array([50.0, 70.0]), 3.9, True) == (50.0, 70.0)
    assert colour_range(np.array([0.2, 0.3]), 0.5, False) == pytest.approx((0.2, 1.2))


def test_only_the_training_seed_is_a_replicate_a_dataset_seed_is_an_axis():
    # `data.synthetic.seed` draws another dataset: averaging over it would hide a real effect
    # (issue 22: any key ending in `.seed` counted as a replicate)
    from cobra.results import table_axes
    from cobra.tracking import TrialRecord

    trials = [TrialRecord(f"r{d}{s}", "t", {"data.synthetic.seed": str(d), "train.seed": str(s)},
                          {"seed_miou": 50.0 + d + s}, "FINISHED")
              for d in (0, 1) for s in (0, 1)]
    assert table_axes(trials, None, None) == ["data.synthetic.seed"]
