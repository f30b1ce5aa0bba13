"""Overlap metrics: known answers by counting, RVD sign, and the documented empty-mask values."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from advseg.metrics.overlap import (
    confusion_counts,
    dice,
    iou,
    precision,
    relative_volume_difference,
    sensitivity,
    specificity,
)

ALL = {
    "dsc": dice, "iou": iou, "sensitivity": sensitivity, "specificity": specificity,
    "precision": precision, "rvd": relative_volume_difference,
}


def _cubes(k: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Two 4^3 cubes in a 10 x 10 x 12 volume, the second shifted by k voxels along x."""
    a = np.zeros((10, 10, 12), bool)
    b = np.zeros_like(a)
    a[3:7, 3:7, 2:6] = True
    b[3:7, 3:7, 2 + k : 6 + k] = True
    return a, b


def test_offset_cubes_by_counting():
    pred, truth = _cubes(k=2)
    # overlap 4 x 4 x 2 = 32 voxels of 64 each; union 96; 1200 voxels in all
    c = confusion_counts(pred, truth)
    assert c == (32, 32, 32, 1200 - 96)
    assert dice(pred, truth) == pytest.approx(0.5)
    assert iou(pred, truth) == pytest.approx(1 / 3)
    assert sensitivity(pred, truth) == pytest.approx(0.5)
    assert precision(pred, truth) == pytest.approx(0.5)
    assert specificity(pred, truth) == pytest.approx((1200 - 96) / (1200 - 64))
    assert relative_volume_difference(pred, truth) == 0.0


def test_int_masks_count_non_zero_as_foreground():
    pred, truth = _cubes(k=1)
    assert dice(pred.astype(np.uint8) * 3, truth.astype(np.int16) * 7) == pytest.approx(dice(pred, truth))
    assert dice(pred, truth) == pytest.approx(2 * 48 / 128)


def test_rvd_is_signed_percent():
    truth = np.zeros((4, 4, 4), bool)
    truth[:, :2, :2] = True  # 16 voxels
    bigger = truth.copy()
    bigger[:2, 2, :2] = True  # 20 voxels
    smaller = np.zeros_like(truth)
    smaller[:2, :2, :2] = True  # 8 voxels
    assert relative_volume_difference(bigger, truth) == pytest.approx(25.0)
    assert relative_volume_difference(smaller, truth) == pytest.approx(-50.0)
    assert relative_volume_difference(np.zeros_like(truth), truth) == pytest.approx(-100.0)


NAN = math.nan
EMPTY_CASES = {
    # (pred empty, truth empty): expected values
    "both_empty": (True, True, {"dsc": 1.0, "iou": 1.0, "sensitivity": 1.0, "specificity": 1.0,
                                "precision": 1.0, "rvd": 0.0}),
    "truth_empty": (False, True, {"dsc": 0.0, "iou": 0.0, "sensitivity": NAN, "specificity": 1 - 8 / 64,
                                  "precision": 0.0, "rvd": NAN}),
    "pred_empty": (True, False, {"dsc": 0.0, "iou": 0.0, "sensitivity": 0.0, "specificity": 1.0,
                                 "precision": NAN, "rvd": -100.0}),
    "none_empty": (False, False, {"dsc": 1.0, "iou": 1.0, "sensitivity": 1.0, "specificity": 1.0,
                                  "precision": 1.0, "rvd": 0.0}),
}


@pytest.mark.parametrize("case", list(EMPTY_CASES))
def test_empty_masks_give_documented_values_without_warnings(case):
    pred_empty, truth_empty, expected = EMPTY_CASES[case]
    full = np.zeros((4, 4, 4), bool)
    full[:2, :2, :2] = True
    pred = np.zeros_like(full) if pred_empty else full
    truth = np.zeros_like(full) if truth_empty else full
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = {name: fn(pred, truth) for name, fn in ALL.items()}
    for name, want in expected.items():
        if math.isnan(want):
            assert math.isnan(got[name]), (name, got[name])
        else:
            assert got[name] == pytest.approx(want), name


def test_specificity_when_truth_fills_the_image():
    full = np.ones((2, 2, 2), bool)
    assert specificity(full, full) == 1.0  # 0/0 with a perfect prediction
    part = full.copy()
    part[0] = False
    assert math.isnan(specificity(part, full))  # no negatives to score, prediction not perfect


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="shapes differ"):
        dice(np.zeros((2, 2, 2)), np.zeros((2, 2, 3)))
