"""Voxel-overlap metrics of one class: DSC, IoU, sensitivity, specificity, precision, RVD.

Every function takes two masks of the same shape ``(Z, Y, X)`` (bool, or int where non-zero is
foreground) and returns a Python float. None needs the voxel spacing: each is a ratio of voxel
counts, and with equal-sized voxels a ratio of volumes in mm^3 is the same number.

With ``TP, FP, FN, TN`` the confusion counts of prediction ``P`` against truth ``T``:

===============  ==================================  ==========
name             definition                          unit
===============  ==================================  ==========
``dsc``          2 TP / (2 TP + FP + FN)             [0, 1]
``iou``          TP / (TP + FP + FN)                 [0, 1]
``sensitivity``  TP / (TP + FN)                      [0, 1]
``specificity``  TN / (TN + FP)                      [0, 1]
``precision``    TP / (TP + FP)                      [0, 1]
``rvd``          (|P| - |T|) / |T| * 100             % (signed)
===============  ==================================  ==========

RVD is signed: positive when the prediction is too large (over-segmentation), negative when too
small; -100 % means nothing was predicted. Specificity counts true negatives over the whole array,
so it depends on the field of view (close to 1 for any small organ in a CT volume).

Empty masks (no NaN crash, no warning): a ratio whose denominator is 0 is **1.0 when the prediction
equals the truth** (both empty: nothing to find, nothing wrong) and **NaN otherwise** (undefined,
e.g. sensitivity when the truth is empty but the prediction is not). So with both masks empty every
metric is 1 (RVD 0); with truth empty and prediction non-empty DSC = IoU = precision = 0 and
sensitivity, RVD are NaN; with prediction empty and truth non-empty DSC = IoU = sensitivity = 0,
RVD = -100 and precision is NaN. NaN values are excluded from means and counted in ``n`` by
:class:`advseg.metrics.MetricAccumulator`.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

OVERLAP_METRICS = ("dsc", "iou", "sensitivity", "specificity", "precision", "rvd")


class ConfusionCounts(NamedTuple):
    """Voxel counts of a prediction against the truth, for one class."""

    tp: int
    fp: int
    fn: int
    tn: int

    @property
    def pred_volume(self) -> int:
        return self.tp + self.fp

    @property
    def true_volume(self) -> int:
        return self.tp + self.fn


def as_mask(mask: np.ndarray) -> np.ndarray:
    """A boolean view of ``mask`` (non-zero is foreground)."""
    mask = np.asarray(mask)
    return mask if mask.dtype == bool else mask != 0


def confusion_counts(pred: np.ndarray, truth: np.ndarray, total: int | None = None) -> ConfusionCounts:
    """TP, FP, FN, TN of ``pred`` against ``truth`` (same shape).

    ``total`` is the voxel count of the full image when ``pred``/``truth`` are a crop that holds all
    foreground of both (what :func:`advseg.metrics.compute_case_metrics` passes); TN is then
    ``total - TP - FP - FN``. Default: the size of the arrays.
    """
    p, t = as_mask(pred), as_mask(truth)
    if p.shape != t.shape:
        raise ValueError(f"prediction and truth shapes differ: {p.shape} vs {t.shape}")
    tp = int(np.count_nonzero(p & t))
    fp = int(np.count_nonzero(p)) - tp
    fn = int(np.count_nonzero(t)) - tp
    total = p.size if total is None else int(total)
    return ConfusionCounts(tp, fp, fn, total - tp - fp - fn)


def _ratio(num: int, den: int, perfect: bool) -> float:
    """``num / den``; 0/0 is 1.0 when the prediction is perfect, else NaN (see module docstring)."""
    if den == 0:
        return 1.0 if perfect else float("nan")
    return num / den


def _perfect(c: ConfusionCounts) -> bool:
    return c.fp == 0 and c.fn == 0


def dsc_from_counts(c: ConfusionCounts) -> float:
    return _ratio(2 * c.tp, 2 * c.tp + c.fp + c.fn, _perfect(c))


def iou_from_counts(c: ConfusionCounts) -> float:
    return _ratio(c.tp, c.tp + c.fp + c.fn, _perfect(c))


def sensitivity_from_counts(c: ConfusionCounts) -> float:
    return _ratio(c.tp, c.tp + c.fn, _perfect(c))


def specificity_from_counts(c: ConfusionCounts) -> float:
    return _ratio(c.tn, c.tn + c.fp, _perfect(c))


def precision_from_counts(c: ConfusionCounts) -> float:
    return _ratio(c.tp, c.tp + c.fp, _perfect(c))


def rvd_from_counts(c: ConfusionCounts) -> float:
    """Relative volume difference in %, signed: ``(V_pred - V_true) / V_true * 100``."""
    if c.true_volume == 0:
        return 0.0 if c.pred_volume == 0 else float("nan")
    return (c.pred_volume - c.true_volume) / c.true_volume * 100.0


_FROM_COUNTS = {
    "dsc": dsc_from_counts,
    "iou": iou_from_counts,
    "sensitivity": sensitivity_from_counts,
    "specificity": specificity_from_counts,
    "precision": precision_from_counts,
    "rvd": rvd_from_counts,
}


def overlap_metrics_from_counts(
    c: ConfusionCounts, names: tuple[str, ...] = OVERLAP_METRICS
) -> dict[str, float]:
    """The overlap metrics ``names`` (a subset of :data:`OVERLAP_METRICS`) from one set of counts."""
    return {n: float(_FROM_COUNTS[n](c)) for n in names}


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice similarity coefficient ``2|P∩T| / (|P| + |T|)`` in [0, 1]; 1.0 when both are empty."""
    return dsc_from_counts(confusion_counts(pred, truth))


def iou(pred: np.ndarray, truth: np.ndarray) -> float:
    """Intersection over union (Jaccard) ``|P∩T| / |P∪T|`` in [0, 1]; 1.0 when both are empty."""
    return iou_from_counts(confusion_counts(pred, truth))


def sensitivity(pred: np.ndarray, truth: np.ndarray) -> float:
    """Sensitivity (recall) ``TP / (TP + FN)``; NaN when the truth is empty but the prediction is not."""
    return sensitivity_from_counts(confusion_counts(pred, truth))


def specificity(pred: np.ndarray, truth: np.ndarray) -> float:
    """Specificity ``TN / (TN + FP)`` over the whole array (depends on the field of view)."""
    return specificity_from_counts(confusion_counts(pred, truth))


def precision(pred: np.ndarray, truth: np.ndarray) -> float:
    """Precision (positive predictive value) ``TP / (TP + FP)``; NaN when only the prediction is empty."""
    return precision_from_counts(confusion_counts(pred, truth))


def relative_volume_difference(pred: np.ndarray, truth: np.ndarray) -> float:
    """Signed relative volume difference in %: ``(V_pred - V_true) / V_true * 100``.

    Positive = over-segmentation. 0 when both are empty, NaN when only the truth is empty.
    """
    return rvd_from_counts(confusion_counts(pred, truth))
