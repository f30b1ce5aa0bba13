"""Known answers of the confidence diagnostics (AUC, region, threshold statistics, calibration)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from advseg.metrics.confidence import (
    binary_auc,
    calibrate_threshold,
    confidence_histogram,
    reliability_bins,
    roi_mask,
    threshold_stats,
)


def test_auc_of_a_confidence_that_is_one_exactly_where_s_is_right() -> None:
    rng = np.random.default_rng(0)
    correct = rng.random((6, 7, 8)) < 0.7
    assert binary_auc(correct.astype(np.float32), correct) == 1.0
    assert binary_auc(1.0 - correct, correct) == 0.0  # perfectly reversed


def test_auc_of_a_constant_confidence_is_one_half() -> None:
    correct = np.array([True, False, True, True, False])
    assert binary_auc(np.full(5, 0.3), correct) == 0.5


def test_auc_known_value_with_ties_and_a_mask() -> None:
    # pairs (pos, neg): 0.35>0.1, 0.35<0.4, 0.8>0.1, 0.8>0.4 -> 3 of 4
    assert binary_auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == pytest.approx(0.75)
    # a tie between a positive and a negative counts one half
    assert binary_auc(np.array([0.5, 0.5, 0.9]), np.array([1, 0, 1])) == pytest.approx(0.75)
    # the masked-out voxel (a negative scoring above everything) does not count
    scores, labels = np.array([0.2, 0.9, 0.99]), np.array([0, 1, 0])
    assert binary_auc(scores, labels) == pytest.approx(0.5)
    assert binary_auc(scores, labels, mask=np.array([True, True, False])) == 1.0


def test_auc_equals_the_pairwise_definition() -> None:
    rng = np.random.default_rng(1)
    scores = rng.integers(0, 5, 40) / 4.0  # many ties
    labels = rng.random(40) < 0.4
    pos, neg = scores[labels], scores[~labels]
    pairs = [(p > n) + 0.5 * (p == n) for p, n in itertools.product(pos, neg)]
    assert binary_auc(scores, labels) == pytest.approx(np.mean(pairs))


def test_auc_is_nan_without_both_classes() -> None:
    assert math.isnan(binary_auc(np.array([0.1, 0.9]), np.array([True, True])))
    assert math.isnan(binary_auc(np.array([]), np.array([], dtype=bool)))
    with pytest.raises(ValueError, match="shape"):
        binary_auc(np.zeros(3), np.zeros(4, dtype=bool))


def test_roi_is_the_union_of_truth_and_prediction_dilated_by_a_ball() -> None:
    truth = np.zeros((11, 11, 11), np.int64)
    pred = np.zeros_like(truth)
    truth[5, 5, 5] = 1
    roi = roi_mask(truth, pred, dilation_voxels=3)
    zz, yy, xx = np.indices(truth.shape)
    ball = (zz - 5) ** 2 + (yy - 5) ** 2 + (xx - 5) ** 2 <= 9
    assert np.array_equal(roi, ball) and int(roi.sum()) == 123  # lattice points within radius 3
    pred[0, 0, 0] = 2  # the prediction's foreground counts too
    assert roi_mask(truth, pred, 0).sum() == 2
    assert roi_mask(truth, pred, 3)[0, 3, 0] and not roi_mask(truth, pred, 3)[0, 3, 1]
    assert not roi_mask(np.zeros((4, 4)), np.zeros((4, 4)), 3).any()


def test_threshold_stats_overall_and_per_class() -> None:
    conf = np.array([0.1, 0.3, 0.5, 0.7, 0.9, 0.2])
    correct = np.array([False, True, False, True, True, True])
    pred = np.array([0, 0, 1, 1, 1, 2])
    st = threshold_stats(conf, correct, 0.3, pred=pred, classes={0: "bg", 1: "organ", 2: "other"})
    assert st["pass_fraction"] == pytest.approx(3 / 6)  # strictly above 0.3: 0.5, 0.7, 0.9
    assert st["pass_accuracy"] == pytest.approx(2 / 3)
    assert st["region_accuracy"] == pytest.approx(4 / 6)
    assert st["pass_fraction_organ"] == 1.0 and st["pass_accuracy_organ"] == pytest.approx(2 / 3)
    assert st["pass_fraction_bg"] == 0.0 and math.isnan(st["pass_accuracy_bg"])
    assert st["region_accuracy_bg"] == 0.5 and st["region_accuracy_other"] == 1.0
    assert math.isnan(threshold_stats(conf, correct, 1.0)["pass_accuracy"])


def test_reliability_bins_and_histogram() -> None:
    conf, correct = np.array([0.05, 0.95, 1.0, 0.5]), np.array([False, True, True, False])
    counts, hits = reliability_bins(conf, correct, 10)
    assert counts == [1, 0, 0, 0, 0, 1, 0, 0, 0, 2] and hits == [0, 0, 0, 0, 0, 0, 0, 0, 0, 2]
    hist = confidence_histogram(np.array([0.0, 0.01, 0.5, 1.0]), n_bins=4)
    assert hist == [2, 0, 1, 1] and sum(hist) == 4


def test_calibrated_threshold_is_the_lowest_that_reaches_the_target() -> None:
    conf = np.array([0.1, 0.2, 0.3, 0.4])
    assert calibrate_threshold(conf, np.array([False, True, True, True]), 0.97) == pytest.approx(0.1)
    assert calibrate_threshold(conf, np.ones(4, bool), 0.97) == 0.0  # everything may pass
    assert calibrate_threshold(conf, np.zeros(4, bool), 0.5) == 1.0  # nothing is accurate enough
    # not monotonic: passing accuracy 2/4, 2/3, 1/2, 1/1 at t = 0, 0.1, 0.5, 0.6
    conf = np.array([0.1, 0.5, 0.6, 0.9])
    correct = np.array([False, True, False, True])
    assert calibrate_threshold(conf, correct, 0.6) == pytest.approx(0.1)
    assert calibrate_threshold(conf, correct, 1.0) == pytest.approx(0.6)
    t = calibrate_threshold(conf, correct, 0.6)
    assert threshold_stats(conf, correct, t)["pass_accuracy"] >= 0.6


def test_calibration_matches_a_brute_force_search() -> None:
    rng = np.random.default_rng(2)
    conf = rng.random(300).round(2)
    correct = rng.random(300) < conf  # a roughly calibrated confidence
    t = calibrate_threshold(conf, correct, 0.9)
    cands = sorted({0.0, *conf.tolist()})
    ok = [c for c in cands if (conf > c).any() and correct[conf > c].mean() >= 0.9]
    assert t == pytest.approx(ok[0])
    with pytest.raises(ValueError, match="target"):
        calibrate_threshold(conf, correct, 0.0)
