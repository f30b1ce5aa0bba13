"""Segmentation metrics per class, spacing-aware (mm), and their aggregation over cases.

* :mod:`advseg.metrics.overlap`: DSC, IoU, sensitivity, specificity, precision, RVD (%).
* :mod:`advseg.metrics.distance`: AHD, ASHD, HD95 (mm) and normalized surface Dice.
* :mod:`advseg.metrics.accumulate`: :func:`compute_case_metrics` (all classes of one case) and
  :class:`MetricAccumulator` (mean ± sample std and ``n`` over cases, NaN excluded).
"""

from advseg.metrics.accumulate import (
    METRIC_UNITS,
    METRICS,
    MetricAccumulator,
    compute_case_metrics,
)
from advseg.metrics.distance import (
    average_hausdorff_distance,
    average_surface_hausdorff_distance,
    distance_metrics,
    hausdorff_distance_95,
    normalized_surface_dice,
    surface,
    surface_distances,
)
from advseg.metrics.overlap import (
    confusion_counts,
    dice,
    iou,
    precision,
    relative_volume_difference,
    sensitivity,
    specificity,
)

__all__ = [
    "METRICS",
    "METRIC_UNITS",
    "MetricAccumulator",
    "average_hausdorff_distance",
    "average_surface_hausdorff_distance",
    "compute_case_metrics",
    "confusion_counts",
    "dice",
    "distance_metrics",
    "hausdorff_distance_95",
    "iou",
    "normalized_surface_dice",
    "precision",
    "relative_volume_difference",
    "sensitivity",
    "specificity",
    "surface",
    "surface_distances",
]
