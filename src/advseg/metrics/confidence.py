"""Does a confidence map tell S's right voxels from its wrong ones? Plain functions on numpy arrays.

The semi-supervised loss trusts the voxels of an unlabeled prediction whose confidence passes
``T_semi`` (:func:`advseg.losses.semi.semi_supervised_loss`). These functions measure how well a
confidence (D's ``sigmoid(D(x * onehot(argmax S(x))))``, or S's own max-softmax probability) ranks
correct above wrong voxels, and what a threshold keeps:

* :func:`binary_auc` - rank-based area under the ROC curve (Mann-Whitney U; ties count one half);
* :func:`roi_mask` - the region of interest the diagnostics are taken over;
* :func:`threshold_stats` - fraction of voxels passing a threshold, accuracy of S's label on them and
  on the whole region, overall and per predicted class;
* :func:`reliability_bins` / :func:`confidence_histogram` - counts for a reliability figure and a
  histogram;
* :func:`calibrate_threshold` - the lowest threshold whose passing voxels reach a target accuracy.

Arrays are flattened (any shape; the caller pools the voxels of several cases), confidences are in
[0, 1], ``correct`` is a boolean "S's argmax equals the truth" per voxel.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
from scipy import ndimage
from scipy.stats import rankdata

#: default dilation of the region of interest, in voxels (the issue's bar: 3 voxels)
ROI_DILATION_VOXELS = 3


def binary_auc(scores: np.ndarray, positive: np.ndarray, mask: np.ndarray | None = None) -> float:
    """AUC of ``scores`` for telling ``positive`` from the other voxels (within ``mask`` if given).

    ``AUC = P(score of a random positive > score of a random negative) + 0.5 P(equal)``, computed from
    average ranks (the Mann-Whitney U statistic): ``(R_pos - n_pos (n_pos + 1) / 2) / (n_pos n_neg)``
    with ``R_pos`` the sum of the positives' ranks. 1: every positive scores above every negative;
    0.5: no better than chance (e.g. a constant score); 0: perfectly reversed. NaN when either class is
    empty. ``scores`` and ``positive`` (bool) have equal shapes; ``mask`` (bool) selects the voxels.
    """
    s = np.asarray(scores, dtype=np.float64).ravel()
    p = np.asarray(positive, dtype=bool).ravel()
    if s.shape != p.shape:
        raise ValueError(f"scores {np.shape(scores)} and labels {np.shape(positive)} differ in shape")
    if mask is not None:
        m = np.asarray(mask, dtype=bool).ravel()
        if m.shape != s.shape:
            raise ValueError(f"mask {np.shape(mask)} differs in shape from the scores {np.shape(scores)}")
        s, p = s[m], p[m]
    n_pos = int(p.sum())
    n_neg = p.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = rankdata(s)  # average ranks: a tie between a positive and a negative counts 0.5
    u = float(ranks[p].sum()) - n_pos * (n_pos + 1) / 2.0
    return u / (n_pos * n_neg)


def _ball(radius: int, ndim: int) -> np.ndarray:
    grid = np.indices((2 * radius + 1,) * ndim) - radius
    return (grid**2).sum(0) <= radius**2


def roi_mask(truth: np.ndarray, pred: np.ndarray, dilation_voxels: int = ROI_DILATION_VOXELS) -> np.ndarray:
    """The region of interest of a case: the union of the truth's and the prediction's foreground
    (label > 0), dilated by a ball of radius ``dilation_voxels`` voxels (Euclidean distance in voxel
    units, ignoring anisotropic spacing; 0: no dilation).

    Far from both, every voxel is background and trivially right, so an accuracy or AUC taken over the
    whole volume would mostly measure the background; within the region, S's errors (which all lie
    where truth or prediction is foreground) meet the correct voxels near the boundaries.
    ``truth``/``pred``: integer label maps of equal shape, e.g. ``(Z, Y, X)``. Returns a bool array.
    """
    if truth.shape != pred.shape:
        raise ValueError(f"truth {truth.shape} and prediction {pred.shape} differ in shape")
    if dilation_voxels < 0:
        raise ValueError(f"dilation must be >= 0 voxels, got {dilation_voxels}")
    fg = (np.asarray(truth) > 0) | (np.asarray(pred) > 0)
    if dilation_voxels == 0 or not fg.any():
        return fg
    return ndimage.binary_dilation(fg, structure=_ball(int(dilation_voxels), fg.ndim))


def _frac(num: float, den: float) -> float:
    return float(num) / float(den) if den else math.nan


def threshold_stats(
    conf: np.ndarray,
    correct: np.ndarray,
    threshold: float,
    pred: np.ndarray | None = None,
    classes: Mapping[int, str] | None = None,
) -> dict[str, float]:
    """What the mask ``conf > threshold`` of L_semi keeps (strict ``>``, as the loss).

    Returns ``pass_fraction`` (share of the voxels passing), ``pass_accuracy`` (share of the passing
    voxels where S is right; NaN if none passes) and ``region_accuracy`` (share of all voxels where S is
    right: what the mask improves on). With ``pred`` (S's label per voxel) and ``classes`` (index ->
    name), the same three per class of S's label, as ``pass_fraction_<name>`` etc.: a pseudo-label's
    class is what S says it is, the truth being unknown on unlabeled data.
    """
    c = np.asarray(conf, dtype=np.float64).ravel()
    ok = np.asarray(correct, dtype=bool).ravel()
    if c.shape != ok.shape:
        raise ValueError(f"confidence {np.shape(conf)} and correctness {np.shape(correct)} differ in shape")
    passing = c > threshold
    out = {
        "pass_fraction": _frac(passing.sum(), c.size),
        "pass_accuracy": _frac((passing & ok).sum(), passing.sum()),
        "region_accuracy": _frac(ok.sum(), c.size),
    }
    if pred is not None and classes:
        p = np.asarray(pred).ravel()
        for idx, name in classes.items():
            sel = p == idx
            n, n_pass = int(sel.sum()), int((sel & passing).sum())
            out[f"pass_fraction_{name}"] = _frac(n_pass, n)
            out[f"pass_accuracy_{name}"] = _frac((sel & passing & ok).sum(), n_pass)
            out[f"region_accuracy_{name}"] = _frac((sel & ok).sum(), n)
    return out


def reliability_bins(conf: np.ndarray, correct: np.ndarray, n_bins: int = 10) -> tuple[list[int], list[int]]:
    """Counts for a reliability figure: ``n_bins`` equal bins of [0, 1] (the last one closed), per bin
    the number of voxels and the number where S is right (accuracy = second / first). Integers, so a
    log line holds them exactly (an empty bin has no accuracy, not a NaN)."""
    c = np.clip(np.asarray(conf, dtype=np.float64).ravel(), 0.0, 1.0)
    ok = np.asarray(correct, dtype=bool).ravel()
    idx = np.minimum((c * n_bins).astype(np.int64), n_bins - 1)
    counts = np.bincount(idx, minlength=n_bins)
    hits = np.bincount(idx, weights=ok.astype(np.float64), minlength=n_bins)
    return [int(v) for v in counts], [int(round(v)) for v in hits]


def confidence_histogram(conf: np.ndarray, n_bins: int = 20) -> list[int]:
    """Voxel counts of ``conf`` in ``n_bins`` equal bins of [0, 1] (values outside are clipped)."""
    c = np.clip(np.asarray(conf, dtype=np.float64).ravel(), 0.0, 1.0)
    return [int(v) for v in np.histogram(c, bins=n_bins, range=(0.0, 1.0))[0]]


def calibrate_threshold(conf: np.ndarray, correct: np.ndarray, target_accuracy: float) -> float:
    """The lowest threshold ``t`` at which the voxels with ``conf > t`` reach ``target_accuracy``.

    Candidates are 0 and every distinct confidence value (between two neighbouring values the passing
    set does not change). The accuracy of the passing voxels need not grow with ``t``, so all candidates
    are checked and the lowest that reaches the target wins: the largest pseudo-label set that is still
    accurate enough. Returns 1.0 (nothing passes a sigmoid or softmax confidence) when no threshold
    reaches the target or there are no voxels. ``conf`` in [0, 1]; ``correct`` bool, same shape.
    """
    if not 0.0 < target_accuracy <= 1.0:
        raise ValueError(f"target accuracy must be in (0, 1], got {target_accuracy}")
    c = np.asarray(conf, dtype=np.float64).ravel()
    ok = np.asarray(correct, dtype=bool).ravel()
    if c.shape != ok.shape:
        raise ValueError(f"confidence {np.shape(conf)} and correctness {np.shape(correct)} differ in shape")
    if c.size == 0:
        return 1.0
    order = np.argsort(c, kind="stable")
    vals, hits = c[order], ok[order].astype(np.int64)
    # suffix[i]: correct voxels among vals[i:]; a threshold t passes vals[searchsorted(t, right):]
    suffix = np.concatenate([np.cumsum(hits[::-1])[::-1], [0]])
    cands = np.unique(np.concatenate([[0.0], vals]))
    start = np.searchsorted(vals, cands, side="right")
    n_pass = c.size - start
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = np.where(n_pass > 0, suffix[start] / np.maximum(n_pass, 1), -1.0)
    good = np.flatnonzero(acc >= target_accuracy - 1e-12)
    return float(cands[good[0]]) if good.size else 1.0
