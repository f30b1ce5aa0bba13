"""Distance metrics: hand-computed answers, the documented empty-mask values, and agreement with
MONAI (HD95, directed mean surface distances, surface Dice) and a scipy EDT reference (AHD)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from scipy import ndimage as ndi

from advseg.metrics.distance import (
    average_hausdorff_distance,
    average_surface_hausdorff_distance,
    distance_metrics,
    hausdorff_distance_95,
    normalized_surface_dice,
    surface,
    surface_distances,
)


def _cubes(axis: int, k: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Two 4^3 cubes, the second shifted by k voxels along ``axis``."""
    a = np.zeros((12, 12, 12), bool)
    a[3:7, 3:7, 3:7] = True
    return a, np.roll(a, k, axis=axis)


# Hand computation for 4^3 cubes shifted by 2 voxels along an axis of spacing s, the other spacings
# being (p, q). The 56 surface voxels of A: 12 "rim" columns along the shift axis (all 4 voxels on
# the surface) and 4 inner columns (only the 2 end voxels). Along a rim column the other cube's rim
# column is 2, 1, 0, 0 steps away; an inner column's first voxel is 2 steps from the other cube's
# face, its last voxel lies inside the other cube, min(s, p, q) from its nearest surface voxel.
def _expected(s: float, p: float, q: float) -> dict[str, float]:
    d = [2 * s, s, 0, 0] * 12 + [2 * s, min(s, p, q)] * 4
    # AHD: the 32 voxels of A outside B are 2 or 1 steps from B; the other 32 are in B
    return {
        "distances": sorted(d),
        "ashd": float(np.mean(d)),  # the two directions are mirror images
        "hd95": float(np.percentile(d, 95)),
        "ahd": (16 * 2 * s + 16 * s) / 64,
    }


@pytest.mark.parametrize(
    "axis, spacing, ashd, hd95, ahd",
    [
        (2, (3.0, 2.0, 0.5), 24 / 56, 1.0, 0.375),  # shift along the finest axis
        (0, (3.0, 1.0, 0.8), (16 * 6 + 12 * 3 + 4 * 0.8) / 56, 6.0, 2.25),  # along the 3 mm axis
    ],
)
def test_offset_cubes_by_hand(axis, spacing, ashd, hd95, ahd):
    pred, truth = _cubes(axis)
    s = spacing[axis]
    p, q = (spacing[i] for i in range(3) if i != axis)
    want = _expected(s, p, q)
    assert (want["ashd"], want["hd95"], want["ahd"]) == pytest.approx((ashd, hd95, ahd))
    d_pt, d_tp = surface_distances(pred, truth, spacing)
    assert sorted(d_pt) == pytest.approx(want["distances"])
    assert sorted(d_tp) == pytest.approx(want["distances"])
    assert average_surface_hausdorff_distance(pred, truth, spacing) == pytest.approx(ashd)
    assert hausdorff_distance_95(pred, truth, spacing) == pytest.approx(hd95)
    assert average_hausdorff_distance(pred, truth, spacing) == pytest.approx(ahd)
    # every surfel of one cube lies within 2 s of the other cube's surface, some farther than s
    assert normalized_surface_dice(pred, truth, spacing, tolerance_mm=2 * s) == pytest.approx(1.0)
    assert normalized_surface_dice(pred, truth, spacing, tolerance_mm=0.9 * s) < 1.0


def _sphere(shape=(16, 24, 24), radius=6.0, centre=None) -> np.ndarray:
    centre = np.array(shape) / 2 if centre is None else np.asarray(centre)
    zz, yy, xx = np.indices(shape)
    return (zz - centre[0]) ** 2 + (yy - centre[1]) ** 2 + (xx - centre[2]) ** 2 <= radius**2


def test_sphere_against_itself_is_zero():
    s = _sphere()
    m = distance_metrics(s, s, (2.5, 0.7, 0.7), nsd_tolerance_mm=0.0)
    assert m == {"ahd": 0.0, "ashd": 0.0, "hd95": 0.0, "nsd": 1.0}


def test_surface_is_mask_minus_cross_erosion():
    s = _sphere()
    surf = surface(s)
    assert surf.any() and not (surf & ~s).any()
    assert np.array_equal(surf, s ^ ndi.binary_erosion(s, structure=ndi.generate_binary_structure(3, 1)))
    cube = np.ones((3, 3, 3), bool)  # touching the border: only the centre voxel is interior
    assert surface(cube).sum() == 26


def test_one_voxel_shift_along_z_at_3mm():
    # a plate one slice thick: every voxel is surface, and each is exactly 3 mm from the other plate
    a = np.zeros((8, 12, 12), bool)
    a[3, 2:9, 3:10] = True
    b = np.roll(a, 1, axis=0)
    spacing = (3.0, 1.0, 1.0)
    d_pt, d_tp = surface_distances(a, b, spacing)
    assert np.allclose(d_pt, 3.0) and np.allclose(d_tp, 3.0) and len(d_pt) == 49
    m = distance_metrics(a, b, spacing, nsd_tolerance_mm=2.0)
    assert (m["ahd"], m["ashd"], m["hd95"]) == pytest.approx((3.0, 3.0, 3.0))
    # NSD measures boundary faces: the top face of one plate is the bottom face of the other, and by
    # symmetry it carries exactly half of each plate's surface area
    assert m["nsd"] == pytest.approx(0.5)
    assert normalized_surface_dice(a, b, spacing, tolerance_mm=3.0) == pytest.approx(1.0)
    # a thick object shifted the same way: nothing farther than 3 mm
    s = _sphere()
    m = distance_metrics(s, np.roll(s, 1, axis=0), spacing, nsd_tolerance_mm=3.0)
    assert 0 < m["hd95"] <= 3.0 + 1e-9 and m["nsd"] == pytest.approx(1.0)


@pytest.mark.parametrize(
    "pred_empty, truth_empty, expected",
    [
        (True, True, {"ahd": 0.0, "ashd": 0.0, "hd95": 0.0, "nsd": 1.0}),
        (False, True, {"ahd": math.nan, "ashd": math.nan, "hd95": math.nan, "nsd": 0.0}),
        (True, False, {"ahd": math.nan, "ashd": math.nan, "hd95": math.nan, "nsd": 0.0}),
        (False, False, {"ahd": 0.0, "ashd": 0.0, "hd95": 0.0, "nsd": 1.0}),
    ],
)
def test_empty_masks_give_documented_values_without_warnings(pred_empty, truth_empty, expected):
    s = _sphere((8, 10, 10), 3.0)
    pred = np.zeros_like(s) if pred_empty else s
    truth = np.zeros_like(s) if truth_empty else s
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = distance_metrics(pred, truth, (2.0, 1.0, 1.0))
    assert got.keys() == expected.keys()
    for name, want in expected.items():
        assert (math.isnan(got[name]) and math.isnan(want)) or got[name] == want, (name, got[name])


def test_crop_does_not_change_values():
    rng = np.random.default_rng(3)
    a, b = _blob(rng, (10, 14, 14)), _blob(rng, (10, 14, 14))
    big_a, big_b = (np.zeros((30, 40, 50), bool) for _ in range(2))
    big_a[5:15, 20:34, 30:44], big_b[5:15, 20:34, 30:44] = a, b
    small = distance_metrics(a, b, (1.5, 1.0, 0.5))
    assert distance_metrics(big_a, big_b, (1.5, 1.0, 0.5)) == pytest.approx(small)


def test_bad_spacing_and_tolerance_are_errors():
    s = _sphere((8, 10, 10), 3.0)
    with pytest.raises(ValueError, match="spacing"):
        distance_metrics(s, s, (1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="tolerance"):
        distance_metrics(s, s, (1.0, 1.0, 1.0), nsd_tolerance_mm=-1)


# ------------------------------------------------------------------------- cross-checks with MONAI


def _blob(rng: np.random.Generator, shape, n: int = 3) -> np.ndarray:
    """A union of random ellipsoids (irregular, possibly several components)."""
    zz, yy, xx = np.indices(shape)
    m = np.zeros(shape, bool)
    for _ in range(n):
        c = rng.uniform(0.25, 0.75, 3) * shape
        r = rng.uniform(0.12, 0.3, 3) * shape
        m |= ((zz - c[0]) / r[0]) ** 2 + ((yy - c[1]) / r[1]) ** 2 + ((xx - c[2]) / r[2]) ** 2 <= 1
    return m


def _blob_pairs():
    rng = np.random.default_rng(0)
    shape = (14, 28, 24)
    pairs = [(_blob(rng, shape), _blob(rng, shape)) for _ in range(2)]
    a = _blob(rng, shape)
    a[:, :, :3] = a[:, :, 3:6]  # touches the image border (tests the zero-padded crop)
    pairs.append((a, np.roll(a, (1, 2), axis=(0, 2)) | _blob(rng, shape, 1)))
    return pairs


@pytest.mark.parametrize("index", [0, 1, 2])
def test_agrees_with_monai_on_random_blobs(index):
    torch = pytest.importorskip("torch")
    from monai.metrics import (
        compute_average_surface_distance,
        compute_hausdorff_distance,
        compute_surface_dice,
    )

    pred, truth = _blob_pairs()[index]
    spacing = (2.5, 0.9, 0.7)
    p, t = (torch.from_numpy(x)[None, None].float() for x in (pred, truth))
    kw = {"include_background": True, "spacing": spacing}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MONAI's own deprecation notices
        hd95 = float(compute_hausdorff_distance(p, t, percentile=95, **kw))
        asd_pt = float(compute_average_surface_distance(p, t, symmetric=False, **kw))
        asd_tp = float(compute_average_surface_distance(t, p, symmetric=False, **kw))
        nsd = float(compute_surface_dice(p, t, [2.0], use_subvoxels=True, **kw))
    ours = distance_metrics(pred, truth, spacing, nsd_tolerance_mm=2.0)
    assert ours["hd95"] == pytest.approx(hd95, abs=1e-4)
    assert ours["ashd"] == pytest.approx((asd_pt + asd_tp) / 2, abs=1e-4)
    assert ours["nsd"] == pytest.approx(nsd, abs=1e-4)
    assert 0 < ours["nsd"] < 1 and ours["hd95"] > 0  # a real test: the blobs differ


@pytest.mark.parametrize("index", [0, 2])
def test_agrees_with_scipy_edt_reference(index):
    pred, truth = _blob_pairs()[index]
    spacing = (2.5, 0.9, 0.7)
    # surface distances and AHD straight from full-volume Euclidean distance transforms
    sp, st = surface(pred), surface(truth)
    ref_pt = ndi.distance_transform_edt(~st, sampling=spacing)[sp]
    ref_tp = ndi.distance_transform_edt(~sp, sampling=spacing)[st]
    d_pt, d_tp = surface_distances(pred, truth, spacing)
    assert np.allclose(d_pt, ref_pt, atol=1e-6) and np.allclose(d_tp, ref_tp, atol=1e-6)
    ref_ahd = max(
        ndi.distance_transform_edt(~truth, sampling=spacing)[pred].mean(),
        ndi.distance_transform_edt(~pred, sampling=spacing)[truth].mean(),
    )
    assert average_hausdorff_distance(pred, truth, spacing) == pytest.approx(ref_ahd, abs=1e-9)
    assert ref_ahd > 0
