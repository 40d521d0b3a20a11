"""Replicates and noise: cells pooled over training seeds (against a hand computation), the
paired bootstrap over shared images (against a slow reference), every verdict branch on
constructed cells, the paper's published cells, bootstrap intervals over images (against
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
    miou_from_counts,
)
from cobra.noise import (
    ImageCounts,
    SeedNoise,
    paired_bootstrap,
    pooled_seed_noise,
    t_quantile,
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
    # k=5: mean 52, sample std sqrt(((−2)² + 0 + 2²) / 2) = 2
    assert (by_k[5].mean, by_k[5].std, by_k[5].n) == (52.0, 2.0, 3)
    # k=10: mean 53.25, std sqrt((0.25² + 0.25²) / 1) = 0.353553…
    assert by_k[10].mean == 53.25 and by_k[10].std == pytest.approx(math.sqrt(0.125))
    assert by_k[20].n == 2 and by_k[20].mean == 40.5
    assert by_k[5].interval == (50.0, 54.0) and by_k[5].num_images == [60.0] * 3
    assert [c.point["loss.k_cap_pos"] for c in ranked] == [10, 5, 20]
    assert ranked[0].verdict.label == "best"
    # pooled seed std: sqrt((2·2² + 1·0.125 + 1·0.5) / 4) = sqrt(2.15625), df 4, t = 2.776;
    # k=5 vs best: limit 2.776·1.4684·sqrt(1/2 + 1/3) = 3.721 > gap 1.25
    limit = 2.776 * math.sqrt(2.15625) * math.sqrt(1 / 2 + 1 / 3)
    assert by_k[5].verdict.label == "within seed noise"
    assert f"{limit:.2f}" in by_k[5].verdict.brief
    assert "seed std 1.47 from 7 runs in 3 cells" in str(by_k[5].verdict)
    # k=20: gap 12.75 is beyond seed noise; no per-image counts, so images are not tested
    assert by_k[20].verdict.label == "beyond seed noise"
    assert "image noise not tested" in str(by_k[20].verdict)
    assert cells.format_value(by_k[5]) == "52.00 ± 2.00"


def image_counts(accuracy: list[float], seed: int = 0, ids_from: int = 0) -> ImageCounts:
    """Per-image counts of a 3-class prediction that is right on `accuracy[i]` of image i's
    pixels (a fixed ground truth per image id, so two cells share it)."""
    counts = []
    num_images = len(accuracy)
    for i in range(num_images):
        rng = np.random.default_rng(1000 + ids_from + i)
        gt = rng.integers(0, 3, (16, 16))
        wrong = np.random.default_rng(seed * 7919 + i).random((16, 16)) > accuracy[i]
        counts.append(iou_counts(confusion_matrix(np.where(wrong, (gt + 1) % 3, gt), gt, 3)))
    ids = tuple(f"img{ids_from + i:03d}" for i in range(num_images))
    return ImageCounts(ids, np.stack(counts))


def cell(k: int, values: list[float], counts: list[ImageCounts] | None = None) -> cells.Cell:
    c = cells.Cell({"loss.k_cap_pos": k}, values=list(values),
                   run_ids=[f"r{k}{i}" for i in range(len(values))])
    c.image_counts = list(counts or [])
    return c


def test_paired_bootstrap_matches_a_slow_reference_and_tells_real_gaps_from_image_noise():
    a = image_counts([0.9] * 40, seed=1)
    b = image_counts([0.6] * 40, seed=2)
    test = paired_bootstrap(a.counts, b.counts, num_draws=300, seed=5)
    # the reference: every draw summed image by image for both cells, then differenced
    draws = bootstrap_draws(40, 300, seed=5)
    deltas = [miou_from_counts(a.counts[d].sum(0)) - miou_from_counts(b.counts[d].sum(0))
              for d in draws]
    assert (test.lo, test.hi) == pytest.approx(tuple(np.quantile(deltas, [0.025, 0.975])))
    assert test.diff == pytest.approx(miou_from_counts(a.counts.sum(0))
                                      - miou_from_counts(b.counts.sum(0)))
    assert test.significant and test.p_text() == "p<0.0033" and test.num_images == 40
    # the same predictions but for one image: no evidence of a difference
    same = image_counts([0.9] * 39 + [0.8], seed=1)
    assert not paired_bootstrap(a.counts, same.counts).significant


def test_the_pairing_is_over_the_images_both_cells_scored():
    a = image_counts([0.9] * 30, seed=1)
    b = image_counts([0.6] * 30, seed=2, ids_from=10)  # img010..img039: 20 shared with a
    best, other = cell(5, [60.0], [a]), cell(10, [50.0], [b])
    test = cells.paired_test(best, other)
    assert test is not None and test.num_images == 20
    assert cells.paired_test(best, cell(10, [50.0])) is None  # no counts: not testable


@pytest.mark.parametrize("branch", ["within seed noise", "behind", "within image noise",
                                    "beyond seed noise", "unknown", "unknown-no-counts",
                                    "within image noise, seeds unmeasured",
                                    "earlier within", "earlier behind"])
def test_each_verdict_branch_says_which_noise_it_counted(branch):
    good = image_counts([0.9] * 40, seed=1)
    good2 = image_counts([0.9] * 40, seed=3)
    bad = image_counts([0.6] * 40, seed=2)
    bad2 = image_counts([0.6] * 40, seed=4)
    near = image_counts([0.9] * 39 + [0.85], seed=1)
    near2 = image_counts([0.9] * 39 + [0.85], seed=3)
    earlier = None
    if branch == "within seed noise":  # std 3 over 2 seeds: gap 2 is nothing
        cs = [cell(5, [60.0, 66.0], [good, good2]), cell(10, [61.0, 61.0], [bad, bad2])]
    elif branch == "behind":  # seeds agree, images disagree
        cs = [cell(5, [70.0, 70.2], [good, good2]), cell(10, [60.0, 60.2], [bad, bad2])]
    elif branch == "within image noise":  # seeds agree, but the images cannot tell them apart
        cs = [cell(5, [70.0, 70.2], [good, good2]), cell(10, [60.0, 60.2], [near, near2])]
    elif branch == "beyond seed noise":
        cs = [cell(5, [70.0, 70.2]), cell(10, [60.0, 60.2])]
    elif branch == "unknown":  # one seed each: images tell them apart, seeds unmeasured
        cs = [cell(5, [70.0], [good]), cell(10, [60.0], [bad])]
    elif branch == "unknown-no-counts":
        cs = [cell(5, [70.0]), cell(10, [60.0])]
    elif branch == "within image noise, seeds unmeasured":
        cs = [cell(5, [70.0], [good]), cell(10, [69.9], [near])]
    elif branch == "earlier within":  # seed std 2 from an earlier sweep: a gap of 1 is nothing
        cs = [cell(5, [70.0], [good]), cell(10, [69.0], [bad])]
        earlier = SeedNoise(2.0, 4, 6, 2, "sweep old (same base config)")
    else:  # "earlier behind": seed std 0.1 from an earlier sweep, a gap of 10
        cs = [cell(5, [70.0], [good]), cell(10, [60.0], [bad])]
        earlier = SeedNoise(0.1, 4, 6, 2, "sweep old (same base config)")
    best, other = cells.rank_cells(cs, "max", earlier)
    v = other.verdict
    assert best.verdict.label == "best"
    expected = {"within seed noise": "within seed noise", "behind": "behind",
                "within image noise": "within image noise",
                "beyond seed noise": "beyond seed noise", "unknown": "unknown",
                "unknown-no-counts": "unknown",
                "within image noise, seeds unmeasured": "within image noise",
                "earlier within": "within seed noise", "earlier behind": "behind"}[branch]
    assert v.label == expected
    text = str(v)
    if branch.startswith("unknown"):
        assert "seed noise unknown: add `repeats: 3`" in text
    if branch in ("behind", "within seed noise", "within image noise", "beyond seed noise"):
        assert "this sweep's replicates" in text and "2 cells" in text
    if branch.startswith("earlier"):
        assert "sweep old (same base config)" in text
    if branch == "behind" or branch == "earlier behind":
        assert "beyond image noise (paired bootstrap over 40 images, p<" in text
    if branch == "unknown-no-counts" or branch == "beyond seed noise":
        assert "image noise not tested" in text
    if expected == "within image noise":
        assert "within image noise (paired bootstrap over 40 images, p=" in text


def test_seed_noise_pools_the_replicates_of_every_cell_as_by_hand():
    noise = pooled_seed_noise([[1.0, 3.0], [10.0, 10.0, 13.0], [7.0]], "here")
    # squares: 2 + 6 = 8 over df 1 + 2 = 3; the single run carries no spread
    assert noise.std == pytest.approx(math.sqrt(8 / 3)) and noise.df == 3
    assert (noise.runs, noise.cells) == (5, 2)
    assert noise.threshold(1, 1) == pytest.approx(3.182 * math.sqrt(8 / 3) * math.sqrt(2))
    assert pooled_seed_noise([[1.0], [2.0]], "here") is None
    assert t_quantile(1) == 12.706 and t_quantile(100) == 1.96


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


def test_earlier_sweeps_replicates_are_grouped_by_their_own_points():
    from cobra.results import earlier_seed_noise

    def old(k: int, seed: int, value: float, searched: bool) -> TrialRecord:
        tags = {"cobra.searched": "loss.k_cap_pos,train.seed"} if searched else {}
        return TrialRecord(f"o{k}{seed}", "x", {"loss.k_cap_pos": str(k), "train.seed": str(seed)},
                           {"seed_miou": value}, "FINISHED", tags)

    parent = TrialRecord("p", "calib", tags={"cobra.sweep": "calib"})
    for searched in (True, False):  # with the searched-keys tag, and from before it existed
        trials = [old(5, s, 60.0 + s, searched) for s in range(3)]
        trials += [old(10, s, 40.0 + s, searched) for s in range(3)]
        noise = earlier_seed_noise([(parent, trials)], "seed_miou")
        # per point: std 1 (not the 10-point spread between the two k values)
        assert noise.std == pytest.approx(1.0) and (noise.df, noise.cells) == (4, 2)
        assert noise.source == "sweep calib (same base config)"
