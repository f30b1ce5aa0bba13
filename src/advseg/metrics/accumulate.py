"""All metrics of one case (every class of a label map) and their aggregation over cases.

:func:`compute_case_metrics` gives ``{organ: {metric: value}}`` for one prediction / truth pair;
:class:`MetricAccumulator` collects those over cases and summarises each organ and metric as
``{"mean", "std", "n"}``. Metric names, used as keys everywhere (CSV columns, JSON keys):
``dsc, iou, sensitivity, specificity, precision, rvd, ahd, ashd, hd95, nsd``; definitions, units
and empty-mask rules are in :mod:`advseg.metrics.overlap` and :mod:`advseg.metrics.distance`.

Aggregation: NaN marks an undefined value (a distance, or a ratio with a zero denominator, when
exactly one of prediction and truth is empty); it is excluded from the mean and std, and ``n`` is
the number of cases that were included. ``std`` is the *sample* standard deviation (``ddof=1``, what
papers report as mean ± SD); it is NaN when ``n < 2``, and ``mean`` is NaN when ``n == 0``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from scipy import ndimage as ndi

from advseg.metrics.distance import (
    DISTANCE_METRICS,
    check_spacing,
    distance_metrics_cropped,
    padded_crop,
    union_box,
)
from advseg.metrics.overlap import (
    OVERLAP_METRICS,
    ConfusionCounts,
    confusion_counts,
    overlap_metrics_from_counts,
)

METRICS: tuple[str, ...] = OVERLAP_METRICS + DISTANCE_METRICS
"""Every metric name, in the order tables show them."""

METRIC_UNITS: dict[str, str] = {
    "dsc": "", "iou": "", "sensitivity": "", "specificity": "", "precision": "",
    "rvd": "%", "ahd": "mm", "ashd": "mm", "hd95": "mm", "nsd": "",
}
"""Unit of each metric ("" = a fraction in [0, 1])."""


def _check_metrics(metrics: Sequence[str] | None) -> tuple[str, ...]:
    if metrics is None:
        return METRICS
    if isinstance(metrics, str):
        metrics = [metrics]
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; known: {', '.join(METRICS)}")
    return tuple(m for m in METRICS if m in metrics)


def _label_map(array: np.ndarray, what: str) -> np.ndarray:
    """``array`` as a non-negative integer label map (``ndimage.find_objects`` needs integers)."""
    a = np.asarray(array)
    if a.dtype == bool:
        return a.view(np.uint8)
    if not np.issubdtype(a.dtype, np.integer):
        if not np.all(np.isfinite(a)) or not np.array_equal(a, np.round(a)):
            raise ValueError(f"{what} has non-integer label values")
        a = a.astype(np.int64)
    if a.size and a.min() < 0:
        raise ValueError(f"{what} has negative label values")
    return a


def foreground_labels(labels: Mapping[int, str]) -> dict[int, str]:
    """``labels`` without background (index 0), sorted by index; organ names must be unique."""
    fg = {int(k): str(v) for k, v in sorted(labels.items()) if int(k) != 0}
    if len(set(fg.values())) != len(fg):
        raise ValueError(f"class names must be unique, got {list(fg.values())}")
    return fg


def compute_case_metrics(
    pred: np.ndarray,
    truth: np.ndarray,
    labels: Mapping[int, str],
    spacing: Sequence[float],
    nsd_tolerance_mm: float = 2.0,
    metrics: Sequence[str] | None = None,
) -> dict[str, dict[str, float]]:
    """Metrics of every foreground class of one case.

    Args:
        pred, truth: integer label maps of shape ``(Z, Y, X)`` (bool = one class with index 1).
        labels: class index -> organ name; index 0 (background) is skipped. Values absent from
            ``labels`` are treated as background.
        spacing: voxel size ``(sz, sy, sx)`` in mm.
        nsd_tolerance_mm: tolerance of the normalized surface Dice, mm.
        metrics: subset of :data:`METRICS` to compute (default all); distance metrics cost most.

    Returns:
        ``{organ: {metric: value}}`` in label order and :data:`METRICS` order; distances in mm, RVD
        in %, the rest fractions; NaN where undefined (see the module docstring).

    Each class is cropped to the bounding box of its prediction and truth (found for all classes
    in one pass by ``ndimage.find_objects``) before any per-voxel work, so small organs in a large
    volume cost little.
    """
    names = _check_metrics(metrics)
    spacing = check_spacing(spacing)
    p_map, t_map = _label_map(pred, "prediction"), _label_map(truth, "truth")
    if p_map.shape != t_map.shape or p_map.ndim != 3:
        raise ValueError(f"prediction and truth must be 3D of one shape, got {p_map.shape} and {t_map.shape}")
    classes = foreground_labels(labels)
    if not classes:
        return {}
    max_label = max(classes)
    p_boxes = ndi.find_objects(p_map, max_label)
    t_boxes = ndi.find_objects(t_map, max_label)
    overlap_names = tuple(n for n in names if n in OVERLAP_METRICS)
    distance_names = tuple(n for n in names if n in DISTANCE_METRICS)

    out: dict[str, dict[str, float]] = {}
    for index, organ in classes.items():
        box = union_box(p_boxes[index - 1], t_boxes[index - 1])
        if box is None:  # absent from both
            p = t = np.zeros((1, 1, 1), bool)
            counts = ConfusionCounts(0, 0, 0, p_map.size)
        else:
            p = padded_crop(p_map, box) == index
            t = padded_crop(t_map, box) == index
            counts = confusion_counts(p, t, total=p_map.size)
        values = overlap_metrics_from_counts(counts, overlap_names)
        if distance_names:
            values.update(distance_metrics_cropped(p, t, spacing, distance_names, nsd_tolerance_mm))
        out[organ] = {n: values[n] for n in names}
    return out


class MetricAccumulator:
    """Per-case metrics of several cases, and their per-organ summary.

    ``labels`` is ``{index: organ}`` (background 0 skipped) or a sequence of organ names; it fixes
    the organ order of rows and summaries.

    Example::

        acc = MetricAccumulator({1: "prostate", 2: "bladder"})
        acc.add("case_001", compute_case_metrics(pred, truth, labels, spacing))
        acc.summary()["prostate"]["dsc"]  # {"mean": 0.87, "std": 0.05, "n": 1}
    """

    def __init__(self, labels: Mapping[int, str] | Sequence[str]) -> None:
        names = list(foreground_labels(labels).values()) if isinstance(labels, Mapping) else list(labels)
        if len(set(names)) != len(names):
            raise ValueError(f"organ names must be unique, got {names}")
        self.organs: list[str] = names
        self._cases: dict[str, dict[str, dict[str, float]]] = {}

    def __len__(self) -> int:
        return len(self._cases)

    @property
    def cases(self) -> list[str]:
        return list(self._cases)

    @property
    def metrics(self) -> list[str]:
        """Metric names seen so far: known ones in :data:`METRICS` order, then others as added."""
        seen: dict[str, None] = {}
        for case in self._cases.values():
            for values in case.values():
                seen.update(dict.fromkeys(values))
        return [m for m in METRICS if m in seen] + [m for m in seen if m not in METRICS]

    def add(self, case_name: str, metrics: Mapping[str, Mapping[str, float]]) -> None:
        """Record ``{organ: {metric: value}}`` of one case; a missing organ or metric counts as NaN."""
        if case_name in self._cases:
            raise ValueError(f"case {case_name!r} added twice")
        unknown = [o for o in metrics if o not in self.organs]
        if unknown:
            raise ValueError(f"case {case_name!r}: unknown organ(s) {unknown}; expected {self.organs}")
        self._cases[case_name] = {o: {m: float(v) for m, v in vals.items()} for o, vals in metrics.items()}

    def values(self, organ: str, metric: str) -> np.ndarray:
        """One value per case (in the order added), NaN where undefined or missing."""
        return np.array([self._cases[c].get(organ, {}).get(metric, math.nan) for c in self._cases], float)

    def per_case_rows(self) -> list[dict[str, str | float]]:
        """One row per case x organ: ``{"case", "organ", <metric>: value, ...}``; NaN = undefined."""
        metrics = self.metrics
        return [
            {"case": case, "organ": organ,
             **{m: self._cases[case].get(organ, {}).get(m, math.nan) for m in metrics}}
            for case in self._cases
            for organ in self.organs
        ]

    def summary(self) -> dict[str, dict[str, dict[str, float | int]]]:
        """``{organ: {metric: {"mean", "std", "n"}}}`` over cases, NaN values excluded.

        ``std`` is the sample standard deviation (``ddof=1``); NaN when ``n < 2``.
        """
        out: dict[str, dict[str, dict[str, float | int]]] = {}
        for organ in self.organs:
            out[organ] = {}
            for metric in self.metrics:
                v = self.values(organ, metric)
                v = v[~np.isnan(v)]
                n = int(v.size)
                out[organ][metric] = {
                    "mean": float(v.mean()) if n else math.nan,
                    "std": float(v.std(ddof=1)) if n >= 2 else math.nan,
                    "n": n,
                }
        return out
