"""D diagnostics during training: does D's confidence tell S's right voxels from its wrong ones?

An adversarial trainer feeds every validation case to :class:`ConfidenceDiagnostics` as if it were
unlabeled (S's prediction, D's confidence on ``x * onehot(argmax S(x))``, S's max-softmax) together
with D's confidence on the real input ``x * y``, and at the end of the validation writes these entries
into the validation record of ``log.jsonl`` (pooled over the validation cases; NaN is logged as null):

``d_auc_real_fake``
    AUC of D's confidence on the real input against the fake input, over the voxels where S's label
    differs from the truth (elsewhere the two inputs are identical). 0.5: D cannot tell them apart.
``conf_auc_correct`` / ``softmax_auc_correct`` / ``product_auc_correct``
    AUC of D's confidence / of S's max-softmax probability / of their product (``mask_source:
    product``, the combination of the two) for "S's argmax is right" against "wrong", over the region
    of interest :func:`advseg.metrics.confidence.roi_mask` (truth or
    prediction foreground, dilated by ``roi_dilation_voxels`` = 3 voxels). D earns its place in L_semi
    only where its AUC beats (or adds to) the softmax one, so the two are always logged side by side.
``{d,softmax,product}_pass_fraction``, ``{d,softmax}_pass_accuracy``, ``region_accuracy`` (+ ``_<class>``)
    at the run's threshold ``t_semi`` (the one in use from this validation on): the share of the region's
    voxels whose confidence passes it, the accuracy of S's label on them, and on the whole region; per
    class of S's label too. The same number is applied to both confidences.
``{d,softmax}_t_calibrated``, ``{d,softmax}_pass_fraction_calibrated``
    the lowest threshold at which the passing voxels reach ``t_semi_target_accuracy``, and the share
    that passes it: at equal accuracy, the mask that keeps more voxels is the better one.
``{d,softmax}_reliability_counts`` / ``_correct``
    per tenth of [0, 1] of the confidence, the region's voxels and those S got right (a reliability
    figure: accuracy per bin).

The pool entries (``pool_*``) come from the first :data:`POOL_CASES` volumes of the unlabeled pool:
histograms (20 bins of [0, 1]) of D's and of S's confidence over all voxels (``pool_{d,softmax}_hist``:
what the mask of L_semi sees) and over the prediction's region (``..._hist_roi``: its foreground dilated
by 3 voxels; there is no truth), and the share of all / of the region's voxels passing the threshold
in use with the run's mask source (``pool_pass_fraction``: what ``semi_fraction`` logs per batch).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from advseg.metrics.confidence import (
    ROI_DILATION_VOXELS,
    binary_auc,
    calibrate_threshold,
    confidence_histogram,
    reliability_bins,
    roi_mask,
    threshold_stats,
)

#: unlabeled volumes whose confidence histogram is logged at each validation
POOL_CASES = 2
RELIABILITY_BINS = 10
HISTOGRAM_BINS = 20


@dataclass
class _Case:
    correct: np.ndarray  # (n,) bool, region voxels
    pred: np.ndarray  # (n,) S's label
    softmax: np.ndarray  # (n,) S's max-softmax
    d: np.ndarray | None  # (n,) D's confidence on the fake input
    d_real_wrong: np.ndarray | None  # D on x * y at the voxels where S is wrong
    d_fake_wrong: np.ndarray | None  # D on x * S(x) at the same voxels


class ConfidenceDiagnostics:
    """Collects the region-of-interest voxels of the validation cases, then summarises them.

    ``classes``: class index -> name (for the per-class entries); ``dilation_voxels``: the region's
    dilation. :meth:`add_case` per case, then :meth:`calibrate` (optional) and :meth:`summary` (which
    empties the collection for the next validation).
    """

    def __init__(self, classes: dict[int, str], dilation_voxels: int = ROI_DILATION_VOXELS) -> None:
        self.classes = dict(classes)
        self.dilation_voxels = dilation_voxels
        self.cases: list[_Case] = []

    def add_case(
        self,
        truth: np.ndarray,
        pred: np.ndarray,
        softmax: np.ndarray,
        d_fake: np.ndarray | None = None,
        d_real: np.ndarray | None = None,
    ) -> None:
        """One case, all ``(Z, Y, X)``: the truth, S's argmax, S's max-softmax probability, and (with a
        per-voxel D) D's confidence on the fake input ``x * S(x)`` and on the real input ``x * y``."""
        roi = roi_mask(truth, pred, self.dilation_voxels)
        correct = pred == truth
        wrong = ~correct
        self.cases.append(_Case(
            correct=correct[roi],
            pred=pred[roi].astype(np.int16),
            softmax=softmax[roi].astype(np.float32),
            d=None if d_fake is None else d_fake[roi].astype(np.float32),
            d_real_wrong=None if d_real is None else d_real[wrong].astype(np.float32),
            d_fake_wrong=None if d_fake is None else d_fake[wrong].astype(np.float32),
        ))

    def reset(self) -> None:
        """Forget the collected cases (a validation without a summary)."""
        self.cases = []

    def _pooled(self) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        correct = np.concatenate([c.correct for c in self.cases])
        pred = np.concatenate([c.pred for c in self.cases])
        sources = {"softmax": np.concatenate([c.softmax for c in self.cases])}
        if all(c.d is not None for c in self.cases):
            sources["d"] = np.concatenate([c.d for c in self.cases])
            # both estimate P(S is right): their product is D's evidence added to S's own
            sources["product"] = sources["d"] * sources["softmax"]
        return correct, pred, sources

    def calibrate(self, source: str, target_accuracy: float) -> float | None:
        """The lowest threshold of confidence ``source`` (``d`` or ``softmax``) whose passing voxels of
        the collected region reach ``target_accuracy``; None without voxels or without that source."""
        if not self.cases:
            return None
        correct, _, sources = self._pooled()
        if source not in sources or correct.size == 0:
            return None
        return calibrate_threshold(sources[source], correct, target_accuracy)

    def summary(self, threshold: float, target_accuracy: float) -> dict[str, Any]:
        """The log entries (module docstring) at ``threshold``; empties the collection. {} if empty."""
        if not self.cases:
            return {}
        correct, pred, sources = self._pooled()
        out: dict[str, Any] = {"roi_voxels": int(correct.size), "roi_dilation_voxels": self.dilation_voxels}
        if "d" in sources:
            real = np.concatenate([c.d_real_wrong for c in self.cases])
            fake = np.concatenate([c.d_fake_wrong for c in self.cases])
            out["wrong_voxels"] = int(real.size)
            is_real = np.concatenate([np.ones(real.size, bool), np.zeros(fake.size, bool)])
            out["d_auc_real_fake"] = binary_auc(np.concatenate([real, fake]), is_real)
            out["d_real_wrong_mean"] = float(real.mean()) if real.size else float("nan")
            out["d_fake_wrong_mean"] = float(fake.mean()) if fake.size else float("nan")
            out["conf_auc_correct"] = binary_auc(sources["d"], correct)
            out["product_auc_correct"] = binary_auc(sources["product"], correct)
        out["softmax_auc_correct"] = binary_auc(sources["softmax"], correct)
        for src, conf in sources.items():
            for key, value in threshold_stats(conf, correct, threshold, pred, self.classes).items():
                out[key if key.startswith("region_accuracy") else f"{src}_{key}"] = value
            cal = calibrate_threshold(conf, correct, target_accuracy)
            out[f"{src}_t_calibrated"] = cal
            out[f"{src}_pass_fraction_calibrated"] = threshold_stats(conf, correct, cal)["pass_fraction"]
            counts, hits = reliability_bins(conf, correct, RELIABILITY_BINS)
            out[f"{src}_reliability_counts"], out[f"{src}_reliability_correct"] = counts, hits
        self.cases = []
        return out


def pool_summary(
    preds: list[np.ndarray],
    softmaxes: list[np.ndarray],
    d_confs: list[np.ndarray] | None,
    threshold: float,
    source: str,
    dilation_voxels: int = ROI_DILATION_VOXELS,
) -> dict[str, Any]:
    """The ``pool_*`` entries for unlabeled volumes: per volume S's argmax, S's max-softmax and (with a
    per-voxel D) D's confidence, all ``(Z, Y, X)``; ``source`` (``d``, ``softmax`` or ``product``) is
    the mask of the run. The region is the prediction's foreground dilated by ``dilation_voxels``."""
    if not preds:
        return {}
    rois = [roi_mask(p, p, dilation_voxels) for p in preds]
    out: dict[str, Any] = {"pool_cases": len(preds)}
    for src, confs in (("softmax", softmaxes), ("d", d_confs)):
        if confs is None:
            continue
        every = np.concatenate([c.ravel() for c in confs])
        out[f"pool_{src}_hist"] = confidence_histogram(every, HISTOGRAM_BINS)
        in_roi = np.concatenate([c[r] for c, r in zip(confs, rois, strict=True)])
        out[f"pool_{src}_hist_roi"] = confidence_histogram(in_roi, HISTOGRAM_BINS)
    mask_conf: list[np.ndarray] | None = softmaxes
    if source == "d":
        mask_conf = d_confs
    elif source == "product":
        mask_conf = None if d_confs is None else [d * c for d, c in zip(d_confs, softmaxes, strict=True)]
    if mask_conf is not None:
        every = np.concatenate([c.ravel() for c in mask_conf])
        in_roi = np.concatenate([c[r] for c, r in zip(mask_conf, rois, strict=True)])
        out["pool_pass_fraction"] = float((every > threshold).mean())
        out["pool_pass_fraction_roi"] = float((in_roi > threshold).mean()) if in_roi.size else float("nan")
    return out
