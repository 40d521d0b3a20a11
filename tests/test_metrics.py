"""Metrics and seed math on hand-made arrays: ignore pixels, absent classes, ties, fusion."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cobra import metrics
from cobra.ops.cams import (
    ThresholdSweep,
    cams_to_label,
    fuse,
    max_normalize,
    normalize_attention,
    percentile_background,
)


def test_confusion_matrix_rows_are_ground_truth_and_ignore_is_skipped():
    gt = np.array([[0, 0, 1], [1, 255, 2]])
    pred = np.array([[0, 1, 1], [2, 0, 2]])
    conf = metrics.confusion_matrix(pred, gt, 3)
    expected = np.array([[1, 1, 0],   # gt 0: predicted 0 once, 1 once
                         [0, 1, 1],   # gt 1: predicted 1 once, 2 once
                         [0, 0, 1]])  # gt 2: predicted 2; the 255 pixel counts nowhere
    np.testing.assert_array_equal(conf, expected)
    assert conf.dtype == np.int64


def test_mean_iou_excludes_classes_absent_from_both():
    gt = np.array([0, 0, 1, 1, 255])
    pred = np.array([0, 1, 1, 1, 3])  # class 2 appears nowhere, 3 only on an ignored pixel
    miou, per_class = metrics.mean_iou(metrics.confusion_matrix(pred, gt, 4))
    assert per_class[0] == pytest.approx(50.0)  # tp 1, union 2
    assert per_class[1] == pytest.approx(100 * 2 / 3)  # tp 2, union 3
    assert math.isnan(per_class[2]) and math.isnan(per_class[3])
    assert miou == pytest.approx((50.0 + 200 / 3) / 2)


def test_one_matrix_over_the_set_is_not_a_mean_of_per_image_scores():
    # image 1: a big object perfectly found; image 2: a tiny object missed.
    gt1, pred1 = np.ones(100, int), np.ones(100, int)
    gt2, pred2 = np.r_[np.ones(1, int), np.zeros(99, int)], np.zeros(100, int)
    total = metrics.confusion_matrix(pred1, gt1, 2) + metrics.confusion_matrix(pred2, gt2, 2)
    miou, per_class = metrics.mean_iou(total)
    assert per_class[1] == pytest.approx(100 * 100 / 101)
    assert per_class[0] == pytest.approx(100 * 99 / 100)


def test_prediction_out_of_range_is_rejected():
    with pytest.raises(ValueError, match="prediction values"):
        metrics.confusion_matrix(np.array([5]), np.array([0]), 3)


def test_average_precision_by_hand_and_with_ties():
    # ranks: + - + → precision at recalls 1/2 and 1: 1 and 2/3
    assert metrics.average_precision([0.9, 0.8, 0.7], [1, 0, 1]) == pytest.approx((1 + 2 / 3) / 2)
    # a tie between a positive and a negative counts both at once: precision 1/2 at recall 1
    assert metrics.average_precision([0.5, 0.5], [1, 0]) == pytest.approx(0.5)
    assert math.isnan(metrics.average_precision([0.1, 0.2], [0, 0]))
    scores = np.array([[0.9, 0.1], [0.2, 0.8], [0.3, 0.7]])
    labels = np.array([[1, 0], [0, 1], [0, 0]])
    assert metrics.mean_average_precision(scores, labels) == pytest.approx(100.0)


@pytest.mark.parametrize("mode", ["cnn", "tran", "avg", "max", "fuse", "fuse_code"])
def test_fusion_modes_by_formula(mode):
    rng = np.random.default_rng(0)
    a, b = rng.random((3, 5, 5)), rng.random((3, 5, 5))
    expected = {"cnn": a, "tran": b, "avg": (a + b) / 2, "max": np.maximum(a, b),
                "fuse": np.maximum((a + b) / 2, b), "fuse_code": np.maximum((a + b) / 2, b)}
    np.testing.assert_allclose(fuse(a, b, mode), expected[mode], rtol=1e-12)
    as_torch = fuse(torch.from_numpy(a), torch.from_numpy(b), mode)
    np.testing.assert_allclose(as_torch.numpy(), expected[mode], rtol=1e-12)


def test_the_authors_fusion_formula_is_the_papers_in_both_orders():
    # a >= b: max((a+b)/2, b) = (a+b)/2 = (max(a,b)+b)/2 ; a < b: both give b
    a = np.array([0.9, 0.2, 0.5])
    b = np.array([0.1, 0.7, 0.5])
    np.testing.assert_allclose(fuse(a, b, "fuse"), [0.5, 0.7, 0.5])
    np.testing.assert_allclose(fuse(a, b, "fuse_code"), [0.5, 0.7, 0.5])


def test_cams_to_label_thresholds_and_maps_keys():
    cam = np.array([[[0.9, 0.1], [0.3, 0.2]],
                    [[0.5, 0.6], [0.3, 0.1]]])
    keys = np.array([4, 7])
    label = cams_to_label(cam, keys, bg_score=0.25)
    np.testing.assert_array_equal(label, [[4, 7], [4, 0]])  # tie 0.3/0.3 → first key
    assert (cams_to_label(cam[:0], keys[:0], 0.1) == 0).all()


def test_threshold_sweep_picks_the_threshold_with_the_best_miou():
    cam = np.array([[[0.9, 0.6, 0.3, 0.1]]])  # one class, one row of four pixels
    gt = np.array([[1, 1, 0, 0]])
    sweep = ThresholdSweep(2, [0.2, 0.5, 0.7])
    sweep.add(cam, np.array([1]), gt, [0.2, 0.5, 0.7])
    threshold, miou, per_class = sweep.best()
    assert threshold == 0.5 and miou == pytest.approx(100.0)
    curve = sweep.curve()
    assert curve[0.2] < 100.0 and curve[0.7] < 100.0


def test_attention_percentile_is_taken_on_the_normalised_map():
    a = np.array([[10.0, 20.0], [30.0, 50.0]])
    norm = normalize_attention(a)
    assert norm.min() == 0.0 and norm.max() == 1.0
    assert percentile_background(norm, 50) == pytest.approx(np.median(norm))
    np.testing.assert_allclose(max_normalize(np.stack([a, 2 * a])).max(axis=(1, 2)),
                               [1.0, 1.0], rtol=1e-5)
