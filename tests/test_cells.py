"""Replicates and noise: cells pooled over training seeds (against a hand computation), the
verdict against the best, the paper's published cells, bootstrap intervals over images (against
a slow reference) and the threshold chosen on other images."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cobra import cells
from cobra.metrics import (
    bootstrap_draws,
    bootstrap_miou_ci,
    confusion_matrix,
    iou_counts,
    mean_iou,
)
from cobra.ops.cams import ThresholdSweep
from cobra.paper import paper_value
from cobra.tracking import TrialRecord


def trial(k: int, seed: int, miou: float, lo: float, hi: float, status="FINISHED"):
    return TrialRecord(run_id=f"r{k}{seed}", run_name=f"k_cap_pos={k},seed={seed}",
                       params={"loss.k_cap_pos": str(k), "train.seed": str(seed)},
                       metrics={"seed_miou": miou, "seed_miou_ci_lo": lo,
                                "seed_miou_ci_hi": hi, "seed_num_images": 60.0},
                       status=status)


def test_replicates_pool_into_mean_std_and_n_as_by_hand():
    trials = [trial(5, 0, 50.0, 48.0, 52.0), trial(5, 1, 52.0, 50.0, 54.0),
              trial(5, 2, 54.0, 52.0, 56.0),
              trial(10, 0, 53.0, 51.0, 55.0), trial(10, 1, 53.5, 51.5, 55.5),
              trial(20, 0, 40.0, 38.0, 42.0), trial(20, 1, 41.0, 39.0, 43.0),
              trial(20, 2, 99.0, 0.0, 0.0, status="FAILED")]  # a failed run is no replicate
    ranked = cells.rank_cells(cells.group_cells(trials, "seed_miou", ["loss.k_cap_pos"]))
    by_k = {c.point["loss.k_cap_pos"]: c for c in ranked}
    # k=5: mean 52, sample std sqrt(((−2)² + 0 + 2²) / 2) = 2, SE 2/√3
    assert (by_k[5].mean, by_k[5].std, by_k[5].n) == (52.0, 2.0, 3)
    # k=10: mean 53.25, std sqrt((0.25² + 0.25²) / 1) = 0.353553…
    assert by_k[10].mean == 53.25 and by_k[10].std == pytest.approx(math.sqrt(0.125))
    assert by_k[20].n == 2 and by_k[20].mean == 40.5
    assert by_k[5].interval == (50.0, 54.0) and by_k[5].num_images == [60.0] * 3
    assert [c.point["loss.k_cap_pos"] for c in ranked] == [10, 5, 20]
    assert ranked[0].verdict == "best"
    # k=5 vs best: gap 1.25; 2·sqrt((2/√3)² + (0.3536/√2)²) = 2·sqrt(1.3333 + 0.0625) = 2.3629
    assert by_k[5].verdict.startswith("within noise") and "2·SE 2.36" in by_k[5].verdict
    # k=20 vs best: gap 12.75 ≫ 2·sqrt(0.5²/… ) → beyond noise
    assert by_k[20].verdict.startswith("beyond noise")
    assert cells.format_value(by_k[5]) == "52.00 ± 2.00"


def test_single_runs_fall_back_to_image_intervals_and_say_when_nothing_is_known():
    a = trial(5, 0, 60.0, 58.0, 62.0)
    b = trial(10, 0, 59.0, 57.5, 61.0)   # intervals overlap
    c = trial(15, 0, 50.0, 48.0, 52.0)   # apart
    d = TrialRecord("rd", "d", {"loss.k_cap_pos": "20"}, {"seed_miou": 55.0}, "FINISHED")
    ranked = cells.rank_cells(cells.group_cells([a, b, c, d], "seed_miou", ["loss.k_cap_pos"]))
    verdicts = {x.point["loss.k_cap_pos"]: x.verdict for x in ranked}
    assert verdicts[10].startswith("within noise") and "overlap" in verdicts[10]
    assert verdicts[15].startswith("beyond noise") and "apart" in verdicts[15]
    assert verdicts[20].startswith("unknown") and "add repeats" in verdicts[20]
    assert cells.format_value(ranked[0]) == "60.00"


def test_paper_cells_are_the_published_numbers():
    # Table 4's corners and Table 10's, Table 11, Table 12 (a pair the paper lists, one it skips)
    assert paper_value("k_ablation", "seed_miou", {"loss.k_sap_neg": 5, "loss.k_cap_pos": 5}) == 62.3
    assert paper_value("k_ablation", "seed_miou",
                       {"loss.k_sap_neg": 20, "loss.k_cap_pos": 5}) == 58.9
    assert paper_value("k_ablation", "seed_miou",
                       {"loss.k_sap_neg": 5, "loss.k_cap_pos": 20}) == 56.8
    assert paper_value("k_ablation_pos", "seed_miou",
                       {"loss.k_sap_pos": 5, "loss.k_cap_neg": 20}) == 56.3
    assert paper_value("embed_dim", "seed_miou", {"model.embed_dim": 384}) == 60.4
    assert paper_value("lambda", "seed_miou",
                       {"loss.lambda_sap": 0.05, "loss.lambda_cap": 0.1}) == 60.6
    assert paper_value("lambda", "seed_miou",
                       {"loss.lambda_sap": 0.05, "loss.lambda_cap": 0.5}) is None
    assert paper_value("demo", "seed_miou", {"loss.k_cap_pos": 2}) is None
    assert paper_value("k_ablation", "mask_miou",
                       {"loss.k_sap_neg": 5, "loss.k_cap_pos": 5}) is None


def random_confusions(n: int, k: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        gt = rng.integers(0, k, (12, 12))
        pred = np.where(rng.random((12, 12)) < 0.6, gt, rng.integers(0, k, (12, 12)))
        out.append(confusion_matrix(pred, gt, k))
    return out


def test_bootstrap_interval_matches_a_slow_reference():
    confusions = random_confusions(25, 5, seed=3)
    per_image = np.stack([iou_counts(c) for c in confusions])
    lo, hi = bootstrap_miou_ci(per_image, num_draws=400, seed=7)
    # the reference: the same draws, each summed image by image into one confusion matrix
    draws = bootstrap_draws(len(confusions), 400, seed=7)
    scores = [mean_iou(sum(confusions[i] for i in draw))[0] for draw in draws]
    assert (lo, hi) == pytest.approx(tuple(np.quantile(scores, [0.025, 0.975])), abs=1e-9)
    full = mean_iou(sum(confusions))[0]
    assert lo < full < hi and hi - lo < 20


def test_threshold_chosen_on_the_other_images():
    # two images, two thresholds: image 0 is best at 0.2, image 1 at 0.8; each is scored at
    # the threshold the other prefers
    cam = np.array([[[0.1, 0.5], [0.9, 0.9]]])  # one class (key 1), 2x2
    keys = np.array([1])
    gt_low = np.array([[1, 1], [1, 1]])   # everything is the class: a low threshold wins
    gt_high = np.array([[0, 0], [1, 1]])  # only the 0.9 pixels: a high threshold wins
    sweep = ThresholdSweep(2, [0.2, 0.8])
    sweep.add(cam, keys, gt_low, [0.2, 0.8])
    sweep.add(cam, keys, gt_high, [0.2, 0.8])
    heldout, chosen = sweep.cross_fitted()
    assert chosen == [0.8, 0.2]  # fold 0 (image 0) gets image 1's choice, and vice versa
    at_08_low = confusion_matrix(np.array([[0, 0], [1, 1]]), gt_low, 2)
    at_02_high = confusion_matrix(np.array([[0, 1], [1, 1]]), gt_high, 2)
    assert heldout == pytest.approx(mean_iou(at_08_low + at_02_high)[0])
    assert heldout < sweep.best()[1]  # picking on the scored images flatters
