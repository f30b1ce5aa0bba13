"""Spacing-aware distance metrics of one class, in mm: AHD, ASHD, HD95 and normalized surface Dice.

Masks are arrays of shape ``(Z, Y, X)`` (bool, or int where non-zero is foreground) and
``spacing = (sz, sy, sx)`` is the voxel size in mm in the same axis order. One definition per metric:

* **Surface** ``∂A``: the voxels of ``A`` that are not in its connectivity-1 erosion,
  ``A & ~scipy.ndimage.binary_erosion(A)`` (6-neighbourhood cross; outside the image counts as
  background). This is MONAI's ``get_mask_edges`` without sub-voxels.
* ``d(x, S)``: Euclidean distance in mm from voxel centre ``x`` to the nearest voxel centre of ``S``.
* **AHD** (average Hausdorff distance over voxel sets, the pelvic study's definition)::

      AHD = max( mean_{a in A} d(a, B), mean_{b in B} d(b, A) )

  over *all* voxels of prediction ``A`` and truth ``B`` (voxels in both contribute 0).
* **ASHD** (average symmetric surface distance): the mean of the two directed mean surface distances,
  ``( mean_{a in ∂A} d(a, ∂B) + mean_{b in ∂B} d(b, ∂A) ) / 2``. Note: MONAI's
  ``compute_average_surface_distance(symmetric=True)`` instead averages the pooled distances (weighted
  by surface size); its ``symmetric=False`` value is the first directed mean here.
* **HD95**: ``max( P95_{a in ∂A} d(a, ∂B), P95_{b in ∂B} d(b, ∂A) )``, percentiles with linear
  interpolation (numpy's default; equals MONAI's ``compute_hausdorff_distance(percentile=95)``).
* **NSD** (normalized surface Dice at tolerance ``tau`` mm, Nikolov et al. 2021): the fraction of the
  surface *area* of both masks lying within ``tau`` of the other surface,
  ``(|∂A ∩ B^tau| + |∂B ∩ A^tau|) / (|∂A| + |∂B|)``, with DeepMind's ``surface-distance``
  surfels: marching-cubes surface elements on the 2x2x2 voxel-corner grid, area-weighted. This equals
  MONAI's ``compute_surface_dice(use_subvoxels=True)`` (whose surfel-area table it uses); because it
  measures the boundary *faces*, two masks that share a face have NSD > 0 at tolerance 0 even though
  their voxel surfaces are one voxel apart.

Distances are computed exactly with k-d trees over the surface-voxel coordinates in mm (the
algorithm of MONAI's ``get_surface_distance`` on the CPU), after cropping both masks to the bounding
box of ``pred | truth`` plus one voxel, so their cost follows the surface sizes, not the image size.

Empty masks (no crash, no warning): both empty -> AHD = ASHD = HD95 = 0 and NSD = 1; exactly one
empty -> AHD, ASHD, HD95 are NaN (undefined; excluded from means and counted in ``n`` by
:class:`advseg.metrics.MetricAccumulator`) and NSD = 0 (no surface lies near the missing one).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Sequence

import numpy as np
from scipy import ndimage as ndi
from scipy.spatial import KDTree

from advseg.metrics.overlap import as_mask

DISTANCE_METRICS = ("ahd", "ashd", "hd95", "nsd")
_SURFACE_METRICS = ("ahd", "ashd", "hd95")

Spacing = Sequence[float]


def check_spacing(spacing: Spacing) -> tuple[float, float, float]:
    """``spacing`` as three positive finite floats ``(sz, sy, sx)`` in mm, else ``ValueError``."""
    values = tuple(float(s) for s in spacing)
    if len(values) != 3 or not all(math.isfinite(s) and s > 0 for s in values):
        raise ValueError(f"spacing must be three positive numbers (sz, sy, sx) in mm, got {spacing!r}")
    return values  # type: ignore[return-value]


def surface(mask: np.ndarray) -> np.ndarray:
    """Surface voxels: ``mask`` minus its connectivity-1 erosion (image border counts as outside)."""
    m = as_mask(mask)
    return m & ~ndi.binary_erosion(m)


def union_box(*boxes: tuple[slice, ...] | None) -> tuple[slice, ...] | None:
    """Smallest box holding every given box (``None`` = empty, as from ``ndimage.find_objects``)."""
    present = [b for b in boxes if b is not None]
    if not present:
        return None
    return tuple(
        slice(min(b[ax].start for b in present), max(b[ax].stop for b in present))
        for ax in range(len(present[0]))
    )


def mask_box(mask: np.ndarray) -> tuple[slice, ...] | None:
    """Bounding box of the non-zero voxels of ``mask``; ``None`` when it is empty."""
    boxes = ndi.find_objects(as_mask(mask).astype(np.uint8))
    return boxes[0] if boxes else None


def padded_crop(array: np.ndarray, box: tuple[slice, ...], margin: int = 1) -> np.ndarray:
    """``array[box]`` grown by ``margin`` voxels on every side, zero-filled beyond the image.

    Zero padding (not clipping) keeps a mask touching the image border closed, which is what both
    the erosion (border = background) and the surfel grid (DeepMind/MONAI pad by one) expect.
    """
    lo = [s.start - margin for s in box]
    hi = [s.stop + margin for s in box]
    out = np.zeros([h - lo_ for lo_, h in zip(lo, hi, strict=True)], dtype=array.dtype)
    src = tuple(slice(max(lo_, 0), min(h, n)) for lo_, h, n in zip(lo, hi, array.shape, strict=True))
    dst = tuple(slice(s.start - lo_, s.stop - lo_) for s, lo_ in zip(src, lo, strict=True))
    out[dst] = array[src]
    return out


def crop_pair(pred: np.ndarray, truth: np.ndarray, margin: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Both masks cropped to the bounding box of ``pred | truth`` plus ``margin`` (zero-padded)."""
    p, t = as_mask(pred), as_mask(truth)
    if p.shape != t.shape:
        raise ValueError(f"prediction and truth shapes differ: {p.shape} vs {t.shape}")
    box = union_box(mask_box(p), mask_box(t))
    if box is None:
        return np.zeros((0,) * p.ndim, bool), np.zeros((0,) * p.ndim, bool)
    return padded_crop(p, box, margin), padded_crop(t, box, margin)


def _coords(mask: np.ndarray, spacing: tuple[float, float, float]) -> np.ndarray:
    return np.argwhere(mask) * np.asarray(spacing)


@functools.lru_cache(maxsize=32)
def _surfel_area_table(spacing: tuple[float, float, float]) -> np.ndarray:
    """Area in mm^2 of the surface inside each of the 256 2x2x2 neighbourhood codes (MONAI's table,
    the DeepMind surface-distance one), for code bits ordered as in :func:`_surfels`."""
    from monai.metrics.utils import get_code_to_measure_table  # imports torch: only when NSD is asked

    table, _ = get_code_to_measure_table(spacing)
    return table.detach().cpu().numpy().astype(np.float64)


def _surfels(mask: np.ndarray, spacing: tuple[float, float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Corner-grid surface elements of ``mask`` (already padded by one background voxel).

    Returns their coordinates in mm ``(N, 3)`` and areas in mm^2 ``(N,)``. The code of corner
    ``(z, y, x)`` packs the 8 voxels ``(z..z+1, y..y+1, x..x+1)``, bit 7 = ``(z, y, x)`` down to
    bit 0 = ``(z+1, y+1, x+1)`` (MONAI's ``ENCODING_KERNEL``, a cross-correlation).
    """
    m = mask.astype(np.uint8)
    code = np.zeros([n - 1 for n in m.shape], dtype=np.uint8)
    bit = 7
    for dz in (0, 1):
        for dy in (0, 1):
            for dx in (0, 1):
                code |= m[dz : dz + code.shape[0], dy : dy + code.shape[1], dx : dx + code.shape[2]] << bit
                bit -= 1
    edge = (code != 0) & (code != 255)
    return _coords(edge, spacing), _surfel_area_table(spacing)[code[edge]]


def _nsd_from_crop(p: np.ndarray, t: np.ndarray, spacing: tuple[float, float, float], tol: float) -> float:
    xp, ap = _surfels(p, spacing)
    xt, at = _surfels(t, spacing)
    d_pt = KDTree(xt, leafsize=32).query(xp)[0]
    d_tp = KDTree(xp, leafsize=32).query(xt)[0]
    total = ap.sum() + at.sum()
    return float((ap[d_pt <= tol].sum() + at[d_tp <= tol].sum()) / total)


def _check_names(names: Iterable[str]) -> tuple[str, ...]:
    names = tuple(names)
    unknown = [n for n in names if n not in DISTANCE_METRICS]
    if unknown:
        raise ValueError(f"unknown distance metric(s) {unknown}; known: {', '.join(DISTANCE_METRICS)}")
    return names


def distance_metrics_cropped(
    p: np.ndarray,
    t: np.ndarray,
    spacing: Spacing,
    names: Iterable[str] = DISTANCE_METRICS,
    nsd_tolerance_mm: float = 2.0,
) -> dict[str, float]:
    """The distance metrics ``names`` of boolean masks already cropped by :func:`crop_pair` /
    :func:`padded_crop` (at least one background voxel around all foreground).

    Surfaces and k-d trees are built once and shared by AHD, ASHD and HD95.
    """
    names = _check_names(names)
    spacing = check_spacing(spacing)
    if not (math.isfinite(nsd_tolerance_mm) and nsd_tolerance_mm >= 0):
        raise ValueError(f"nsd_tolerance_mm must be a finite number >= 0, got {nsd_tolerance_mm!r}")
    p_any, t_any = bool(p.any()), bool(t.any())
    if not (p_any and t_any):
        both_empty = not (p_any or t_any)
        return {n: (1.0 if n == "nsd" else 0.0) if both_empty else (0.0 if n == "nsd" else math.nan)
                for n in names}

    out: dict[str, float] = {}
    if any(n in _SURFACE_METRICS for n in names):
        sp, st = surface(p), surface(t)
        tree_p = KDTree(_coords(sp, spacing), leafsize=32)
        tree_t = KDTree(_coords(st, spacing), leafsize=32)
        if "hd95" in names or "ashd" in names:
            d_pt = tree_t.query(_coords(sp, spacing))[0]
            d_tp = tree_p.query(_coords(st, spacing))[0]
            if "hd95" in names:
                out["hd95"] = float(max(np.percentile(d_pt, 95), np.percentile(d_tp, 95)))
            if "ashd" in names:
                out["ashd"] = float((d_pt.mean() + d_tp.mean()) / 2)
        if "ahd" in names:
            # The nearest voxel of a set to a point outside it is always one of its surface voxels,
            # and points inside contribute 0, so only the voxels outside the other set are queried.
            sum_pt = tree_t.query(_coords(p & ~t, spacing))[0].sum()
            sum_tp = tree_p.query(_coords(t & ~p, spacing))[0].sum()
            out["ahd"] = float(max(sum_pt / np.count_nonzero(p), sum_tp / np.count_nonzero(t)))
    if "nsd" in names:
        out["nsd"] = _nsd_from_crop(p, t, spacing, float(nsd_tolerance_mm))
    return {n: out[n] for n in names}


def distance_metrics(
    pred: np.ndarray,
    truth: np.ndarray,
    spacing: Spacing = (1.0, 1.0, 1.0),
    names: Iterable[str] = DISTANCE_METRICS,
    nsd_tolerance_mm: float = 2.0,
) -> dict[str, float]:
    """Several distance metrics of one class at once (see the module docstring for definitions)."""
    p, t = crop_pair(pred, truth)
    return distance_metrics_cropped(p, t, spacing, names, nsd_tolerance_mm)


def surface_distances(
    pred: np.ndarray, truth: np.ndarray, spacing: Spacing = (1.0, 1.0, 1.0)
) -> tuple[np.ndarray, np.ndarray]:
    """Directed surface distances in mm: ``(d(a, ∂T) for a in ∂P, d(b, ∂P) for b in ∂T)``.

    Each array has one entry per surface voxel, in C order of the voxels; distances to an empty
    surface are ``inf``.
    """
    spacing = check_spacing(spacing)
    p, t = crop_pair(pred, truth)
    if p.size == 0:
        return np.zeros(0), np.zeros(0)
    sp, st = surface(p), surface(t)
    xp, xt = _coords(sp, spacing), _coords(st, spacing)
    d_pt = KDTree(xt).query(xp)[0] if len(xt) else np.full(len(xp), np.inf)
    d_tp = KDTree(xp).query(xt)[0] if len(xp) else np.full(len(xt), np.inf)
    return d_pt, d_tp


def average_hausdorff_distance(
    pred: np.ndarray, truth: np.ndarray, spacing: Spacing = (1.0, 1.0, 1.0)
) -> float:
    """AHD in mm over all voxels: ``max(mean_{a in P} d(a, T), mean_{b in T} d(b, P))``."""
    return distance_metrics(pred, truth, spacing, ("ahd",))["ahd"]


def average_surface_hausdorff_distance(
    pred: np.ndarray, truth: np.ndarray, spacing: Spacing = (1.0, 1.0, 1.0)
) -> float:
    """ASHD in mm: the mean of the two directed mean surface distances."""
    return distance_metrics(pred, truth, spacing, ("ashd",))["ashd"]


def hausdorff_distance_95(pred: np.ndarray, truth: np.ndarray, spacing: Spacing = (1.0, 1.0, 1.0)) -> float:
    """HD95 in mm: the larger of the two directed 95th percentiles of surface distances."""
    return distance_metrics(pred, truth, spacing, ("hd95",))["hd95"]


def normalized_surface_dice(
    pred: np.ndarray, truth: np.ndarray, spacing: Spacing = (1.0, 1.0, 1.0), tolerance_mm: float = 2.0
) -> float:
    """NSD in [0, 1] at ``tolerance_mm`` (DeepMind surfels, area-weighted; = MONAI ``use_subvoxels=True``)."""
    return distance_metrics(pred, truth, spacing, ("nsd",), tolerance_mm)["nsd"]
