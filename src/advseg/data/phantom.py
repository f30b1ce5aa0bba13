"""Synthetic male-pelvis CT phantom in Hounsfield units, and the MSD-style dataset writer behind
``advseg phantom``.

Each case is drawn from a random but anatomically ordered model of the male pelvis: air, a body
outline with subcutaneous fat, muscle, a fat-filled pelvic cavity, bowel loops, seminal vesicles,
pelvic bone (acetabula, pubis, ischia, ilia, sacrum/coccyx: high HU, labelled background) and the
six classes :data:`LABELS` (0 background, 1 prostate, 2 bladder, 3 rectum, 4 left femur,
5 right femur). Sizes, shapes, positions, bladder filling, rectal gas and tissue HU vary per case.
As in real CT the prostate (30-50 HU) sits in a sling of soft tissue of nearly its own density
(levator ani, periprostatic plexus: muscle HU mixed with strands of fat) and the rectal wall has
muscle HU, so these two are low-contrast; the femurs (cortex 700-1200 HU) are high-contrast.

Rendering is vectorized: every structure is an (approximate) signed distance function in mm,
evaluated only inside its bounding box on one smoothly warped coordinate grid (a random
displacement field from low-resolution noise upsampled as :func:`scipy.ndimage.zoom` does, plus a
small rotation), painted in anatomical order; then a Gaussian blur gives partial-volume edges and
in-plane-correlated noise (sigma 10-25 HU) is added. A 64 x 128 x 128 case takes well under a second.

Orientation (fixed, tested): arrays are ``(Z, Y, X)``; the NIfTI affine is LPS-oriented
(``nibabel.aff2axcodes(affine) == ("L", "P", "S")``), i.e. world RAS+ coordinates are
``x = -sx * i + ...`` and ``y = -sy * j + ...``. Hence increasing **X index points to the
patient's LEFT** (RAS+ +x points to the patient's right, so world x decreases), increasing
**Y index points POSTERIOR** (small Y = anterior) and increasing **Z index points SUPERIOR**.
The left femur (class 4) therefore lies at large X index; ``imshow(image[z])`` gives the usual
radiological view (anterior up, patient's right on the viewer's left).
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from advseg.errors import InputError
from advseg.io import Volume, write_volume
from advseg.io.atomic import atomic_dir

LABELS: dict[int, str] = {
    0: "background",
    1: "prostate",
    2: "bladder",
    3: "rectum",
    4: "left_femur",
    5: "right_femur",
}
DEFAULT_SHAPE: tuple[int, int, int] = (64, 128, 128)
MIN_DIM = 16
HU_MIN, HU_MAX = -1024, 3071
AIR_HU = -1000.0
_ROLES = {"labeled": 0, "unlabeled": 1, "test": 2}
# Field of view the default 64 x 128 x 128 grid covers; other shapes keep the anatomy and change spacing.
_Z_SPACING_AT_64 = (2.5, 3.0)
_XY_SPACING_AT_128 = (2.9, 3.3)


# ----------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------


def generate_case(
    seed: int, shape: tuple[int, int, int] = DEFAULT_SHAPE
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One synthetic pelvic CT case.

    Args:
        seed: non-negative integer; the same seed and shape always give identical arrays.
        shape: ``(Z, Y, X)`` voxels, each >= 16. The anatomy covers the same field of view
            (about 176 x 400 x 400 mm) whatever the shape, so spacing scales with ``1 / shape``
            (about 2.5-3.0 mm in z and 2.9-3.3 mm in-plane at the default 64 x 128 x 128).

    Returns:
        ``(image, label, affine)``: image in HU, int16, ``(Z, Y, X)``, clipped to [-1024, 3071];
        label uint8 ``(Z, Y, X)`` with classes :data:`LABELS`, every class present; affine the 4 x 4
        NIfTI voxel-to-world (RAS+ mm) matrix for index order ``(x, y, z)``, LPS-oriented (see the
        module docstring: X index increases towards the patient's left).
    """
    shape = _check_shape(shape)
    if int(seed) < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    # A random draw may, very rarely, hide a class (e.g. a tiny grid); redraw deterministically.
    for attempt in range(8):
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), attempt]))
        image, label, affine = _render(rng, shape)
        if np.all(np.bincount(label.ravel(), minlength=len(LABELS))[: len(LABELS)] > 0):
            return image, label, affine
    raise RuntimeError(f"phantom seed {seed}, shape {shape}: a class is missing after 8 draws")


def case_seed(seed: int, role: str, index: int) -> int:
    """Seed of case ``index`` of ``role`` ("labeled", "unlabeled", "test"): independent of the
    other roles' counts, so adding unlabeled cases leaves the labeled ones unchanged."""
    state = np.random.SeedSequence([int(seed), _ROLES[role], int(index)]).generate_state(1, np.uint32)
    return int(state[0])


def write_phantom_dataset(
    out: Path | str,
    labeled: int = 12,
    unlabeled: int = 24,
    test: int = 6,
    shape: tuple[int, int, int] = DEFAULT_SHAPE,
    seed: int = 0,
) -> Path:
    """Write a phantom dataset in MSD layout (also what nnU-Net users expect of ``labelsTs``).

    Layout::

        OUT/dataset.json
        OUT/imagesTr/phantom_000.nii.gz   OUT/labelsTr/phantom_000.nii.gz     (labeled)
        OUT/imagesUnlabeled/phantom_u000.nii.gz                               (no label files)
        OUT/imagesTs/phantom_t000.nii.gz  OUT/labelsTs/phantom_t000.nii.gz    (test + ground truth)

    Images are int16 HU, labels uint8. Everything is validated before anything is written, and the
    folder is assembled next to ``OUT`` and renamed into place, so an interrupted run leaves no
    half dataset.

    Raises:
        InputError: ``OUT`` exists and is not an empty folder, a count is negative, ``labeled`` is
            0, ``seed`` is negative, or ``shape`` is not 3 sizes >= 16.
    """
    out = Path(out)
    _validate_request(out, labeled, unlabeled, test, shape, seed)
    shape = tuple(int(s) for s in shape)  # type: ignore[assignment]

    with atomic_dir(out) as tmp:
        training, unlabeled_list, test_list = [], [], []
        plan = [
            ("labeled", labeled, "phantom_{:03d}", "imagesTr", "labelsTr"),
            ("unlabeled", unlabeled, "phantom_u{:03d}", "imagesUnlabeled", None),
            ("test", test, "phantom_t{:03d}", "imagesTs", "labelsTs"),
        ]
        for role, count, pattern, image_dir, label_dir in plan:
            for i in range(count):
                name = pattern.format(i) + ".nii.gz"
                image, label, affine = generate_case(case_seed(seed, role, i), shape)
                write_volume(tmp / image_dir / name, Volume(image, affine), dtype=np.int16)
                if label_dir is not None:
                    write_volume(tmp / label_dir / name, Volume(label, affine), dtype=np.uint8)
                rel = f"./{image_dir}/{name}"
                if role == "labeled":
                    training.append({"image": rel, "label": f"./{label_dir}/{name}"})
                elif role == "unlabeled":
                    unlabeled_list.append(rel)
                else:
                    test_list.append(rel)
        meta = {
            "name": "AdvsegPhantomPelvis",
            "description": (
                "Synthetic male-pelvis CT phantoms in HU (advseg phantom): prostate, bladder, rectum, "
                "left and right femur. Arrays LPS-oriented: X index increases towards the patient's left."
            ),
            "reference": "generated by advseg.data.phantom",
            "licence": "synthetic data, no patient information; free to use (CC0)",
            "license": "synthetic data, no patient information; free to use (CC0)",
            "release": "1.0",
            "tensorImageSize": "3D",
            "modality": {"0": "CT"},
            "labels": {str(k): v for k, v in LABELS.items()},
            "numTraining": labeled,
            "numTest": test,
            "numUnlabeled": unlabeled,
            "training": training,
            "test": test_list,
            "unlabeled": unlabeled_list,
            "phantom": {"seed": int(seed), "shape": list(shape)},
        }
        (tmp / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n")
    return out


# ----------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------


def _check_shape(shape: tuple[int, int, int]) -> tuple[int, int, int]:
    dims = tuple(int(s) for s in shape)
    if len(dims) != 3 or any(s < MIN_DIM for s in dims):
        raise ValueError(f"shape must be 3 sizes (Z, Y, X) each >= {MIN_DIM}, got {tuple(shape)}")
    return dims  # type: ignore[return-value]


def _validate_request(out: Path, labeled: int, unlabeled: int, test: int, shape, seed: int) -> None:
    if out.exists() and not out.is_dir():
        raise InputError(out, "exists and is not a folder; choose a new output folder")
    if out.is_dir() and any(out.iterdir()):
        raise InputError(out, "exists and is not empty; choose a new or empty output folder")
    for name, n in (("labeled", labeled), ("unlabeled", unlabeled), ("test", test)):
        if int(n) < 0:
            raise InputError(out, f"--{name} must be >= 0, got {n}")
    if int(labeled) == 0:
        raise InputError(out, "--labeled must be at least 1 (a dataset needs labeled cases)")
    if int(seed) < 0:
        raise InputError(out, f"--seed must be >= 0, got {seed}")
    try:
        _check_shape(shape)
    except (ValueError, TypeError):
        raise InputError(
            out, f"--shape must be 3 sizes Z Y X, each >= {MIN_DIM}, got {tuple(shape)}"
        ) from None


# ----------------------------------------------------------------------------------------------
# Random fields
# ----------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def _upsample_matrix(n_coarse: int, n_fine: int) -> np.ndarray:
    """``(n_fine, n_coarse)`` matrix M with ``M @ v == scipy.ndimage.zoom(v, order=3)`` for 1D v.

    ``zoom`` of order 3 is a tensor product of 1D linear maps (separable spline prefilter and
    separable B-spline weights), so applying this matrix along each axis reproduces ``zoom`` of a
    3D coarse array exactly, at a fraction of its cost on a full grid.
    """
    m = ndi.zoom(np.eye(n_coarse), (n_fine / n_coarse, 1.0), order=3, mode="mirror", grid_mode=False)
    assert m.shape == (n_fine, n_coarse)
    return m.astype(np.float32)


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int, int], coarse: tuple[int, int, int]):
    """Smooth random field of ``shape`` (unit-variance noise on a ``coarse`` grid, cubic-upsampled)."""
    c = rng.standard_normal(coarse).astype(np.float32)
    mz, my, mx = (_upsample_matrix(nc, nf) for nc, nf in zip(coarse, shape, strict=True))
    c = np.tensordot(mz, c, axes=(1, 0))  # (Z, cy, cx)
    c = np.tensordot(c, my, axes=(1, 1)).transpose(0, 2, 1)  # (Z, Y, cx)
    return np.ascontiguousarray(np.tensordot(c, mx, axes=(2, 1)))  # (Z, Y, X)


# ----------------------------------------------------------------------------------------------
# Geometry: warped grid and signed distance functions (mm, negative inside)
# ----------------------------------------------------------------------------------------------


@dataclass
class _Grid:
    """Warped model coordinates (mm) of every voxel: x towards the patient's left, y posterior,
    z superior, origin at the midpoint of the femoral head centres."""

    gx: np.ndarray  # 1D unwarped voxel-centre coordinates
    gy: np.ndarray
    gz: np.ndarray
    x: np.ndarray  # (Z, Y, X) warped coordinates, float32
    y: np.ndarray
    z: np.ndarray
    margin: tuple[float, float, float]  # max |warped - unwarped| per axis (x, y, z)

    def box(self, lo, hi) -> tuple[slice, slice, slice] | None:
        """Index slices ``(z, y, x)`` of every voxel whose warped position may be in [lo, hi]."""
        out = []
        for g, a, b, m in zip(
            (self.gz, self.gy, self.gx), lo[::-1], hi[::-1], self.margin[::-1], strict=True
        ):
            i0 = int(np.searchsorted(g, a - m - 1e-3, side="left"))
            i1 = int(np.searchsorted(g, b + m + 1e-3, side="right"))
            if i1 <= i0:
                return None
            out.append(slice(i0, i1))
        return tuple(out)  # type: ignore[return-value]

    def sub(self, sl):
        return self.x[sl], self.y[sl], self.z[sl]


def _ellipsoid_sdf(x, y, z, r):
    """Approximate signed distance to the ellipsoid with semi-axes ``r`` centred at 0 (Quilez)."""
    k0 = np.sqrt((x / r[0]) ** 2 + (y / r[1]) ** 2 + (z / r[2]) ** 2)
    k1 = np.sqrt((x / r[0] ** 2) ** 2 + (y / r[1] ** 2) ** 2 + (z / r[2] ** 2) ** 2)
    return k0 * (k0 - 1.0) / np.maximum(k1, 1e-6)


def _ellipse_sdf(x, y, rx, ry):
    """Approximate signed distance to an axial ellipse (semi-axes may be arrays)."""
    k0 = np.sqrt((x / rx) ** 2 + (y / ry) ** 2)
    k1 = np.sqrt((x / rx**2) ** 2 + (y / ry**2) ** 2)
    return k0 * (k0 - 1.0) / np.maximum(k1, 1e-6)


def _superellipse_pow(x, y, rx, ry, p: int):
    """``|x/rx|^p + |y/ry|^p`` for integer ``p`` (< 1 inside an axial superellipse)."""
    ax, ay = np.abs(x / rx), np.abs(y / ry)
    bx, by = ax * ax, ay * ay
    for _ in range(p - 2):
        bx, by = bx * ax, by * ay
    return bx + by


def _capsule_sdf(x, y, z, a, b, r):
    """Exact signed distance to the capsule (segment ``a``-``b`` swept by radius ``r``)."""
    ab = np.subtract(b, a, dtype=np.float64)
    px, py, pz = x - a[0], y - a[1], z - a[2]
    t = np.clip((px * ab[0] + py * ab[1] + pz * ab[2]) / float(ab @ ab), 0.0, 1.0)
    return np.sqrt((px - t * ab[0]) ** 2 + (py - t * ab[1]) ** 2 + (pz - t * ab[2]) ** 2) - r


def _smin(a, b, k):
    """Polynomial smooth minimum (a union with a fillet of about ``k`` mm)."""
    h = np.clip(0.5 + 0.5 * (b - a) / k, 0.0, 1.0)
    return b + (a - b) * h - k * h * (1.0 - h)


def _rotation(axis: str, deg: float) -> np.ndarray:
    c, s = np.cos(np.radians(deg)), np.sin(np.radians(deg))
    i, j = {"x": (1, 2), "y": (2, 0), "z": (0, 1)}[axis]
    m = np.eye(3)
    m[i, i], m[i, j], m[j, i], m[j, j] = c, -s, s, c
    return m


def _local(x, y, z, center, rot):
    """Coordinates in a frame centred at ``center`` with axes the columns of ``rot``."""
    dx, dy, dz = x - center[0], y - center[1], z - center[2]
    r = rot.astype(np.float32)
    return (
        r[0, 0] * dx + r[1, 0] * dy + r[2, 0] * dz,
        r[0, 1] * dx + r[1, 1] * dy + r[2, 1] * dz,
        r[0, 2] * dx + r[1, 2] * dy + r[2, 2] * dz,
    )


def _interp(z, knots, values):
    return np.interp(z, knots, values).astype(np.float32)


# ----------------------------------------------------------------------------------------------
# The phantom
# ----------------------------------------------------------------------------------------------


class _Canvas:
    """HU image and label map painted back to front (later structures overwrite earlier ones)."""

    def __init__(self, grid: _Grid, shape):
        self.grid = grid
        self.hu = np.full(shape, AIR_HU, dtype=np.float32)
        self.label = np.zeros(shape, dtype=np.uint8)

    def paint(self, sl, mask, hu, label: int = 0) -> None:
        view, lab = self.hu[sl], self.label[sl]
        view[mask] = hu[mask] if isinstance(hu, np.ndarray) else hu
        lab[mask] = label


def _render(rng: np.random.Generator, shape: tuple[int, int, int]):
    u = rng.uniform
    nz, ny, nx = shape
    a = _sample_anatomy(rng)

    # --- grid: spacing, field of view (body + table must fit in-plane), affine --------------------
    sz = u(*_Z_SPACING_AT_64) * 64.0 / nz
    body_w = 2.0 * a["body_ax"]
    body_h = a["skin_post"] - a["skin_ant"] + 45.0  # + table
    sxy = max(u(*_XY_SPACING_AT_128) * 128.0 / min(nx, ny), 1.06 * body_w / nx, 1.06 * body_h / ny)
    cx = u(-6.0, 6.0)
    cy = 0.5 * (a["skin_ant"] + a["skin_post"] + 45.0) + u(-5.0, 5.0)
    cz = u(-10.0, 8.0)
    gx = ((np.arange(nx) - (nx - 1) / 2.0) * sxy + cx).astype(np.float32)
    gy = ((np.arange(ny) - (ny - 1) / 2.0) * sxy + cy).astype(np.float32)
    gz = ((np.arange(nz) - (nz - 1) / 2.0) * sz + cz).astype(np.float32)
    # Model (left, posterior, superior) = RAS+ world (-x, -y, z): LPS-oriented voxel axes.
    affine = np.diag([-sxy, -sxy, sz, 1.0])
    affine[:3, 3] = [-gx[0], -gy[0], gz[0]]

    # --- smooth deformation: small yaw + displacement field (mm) --------------------------------
    coarse = (max(3, nz // 16), max(4, ny // 24), max(4, nx // 24))
    amp = (u(3.0, 7.0), u(3.0, 7.0), u(1.5, 4.0))  # x, y, z
    ux, uy, uz = (_smooth_field(rng, shape, coarse) * (m / 2.0) for m in amp)
    yaw = np.radians(u(-4.0, 4.0))
    c, s = np.float32(np.cos(yaw)), np.float32(np.sin(yaw))
    x0 = gx[None, None, :] + ux
    y0 = gy[None, :, None] + uy
    x = c * x0 - s * y0
    y = s * x0 + c * y0
    z = gz[:, None, None] + uz
    margin = (
        float(np.abs(x - gx[None, None, :]).max()),
        float(np.abs(y - gy[None, :, None]).max()),
        float(np.abs(uz).max()),
    )
    grid = _Grid(gx, gy, gz, x, y, z, margin)
    canvas = _Canvas(grid, shape)

    texture = _smooth_field(rng, shape, (max(4, nz // 5), max(6, ny // 5), max(6, nx // 5)))
    planes = _smooth_field(rng, shape, (max(3, nz // 12), max(5, ny // 14), max(5, nx // 14)))
    _paint_soft_tissue(canvas, a, texture, planes)
    _paint_organs(canvas, a, rng, texture)
    _paint_bones(canvas, a)

    # --- image formation: partial volume, slow bias, correlated noise ----------------------------
    hu = ndi.gaussian_filter(canvas.hu, (u(0.35, 0.6), u(0.5, 0.8), u(0.5, 0.8)), truncate=3.0)
    hu += _smooth_field(rng, shape, (3, 4, 4)) * u(2.0, 6.0)
    noise = ndi.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), (0.0, 0.6, 0.6), truncate=3.0)
    hu += noise * (u(10.0, 25.0) / max(float(noise.std()), 1e-6))
    image = np.clip(np.rint(hu), HU_MIN, HU_MAX).astype(np.int16)
    return image, canvas.label, affine


def _sample_anatomy(rng: np.random.Generator) -> dict:
    """Random positions/sizes (mm) and HU of one patient, in model coordinates."""
    u = rng.uniform
    k = u(0.92, 1.08)  # skeletal size
    a: dict = {"k": k}
    # HU of the tissues of this patient/scanner
    a["hu_fat"] = u(-115.0, -85.0)
    a["hu_muscle"] = u(38.0, 58.0)
    a["hu_prostate"] = u(30.0, 50.0)
    a["hu_urine"] = u(0.0, 20.0)
    a["hu_cortex"] = u(700.0, 1200.0)
    a["hu_trabecular"] = u(180.0, 350.0)
    a["hu_medulla"] = u(-20.0, 80.0)

    # skeleton: femoral heads at (+-xh, 0, 0)
    xh = 90.0 * k + u(-4.0, 4.0)
    a["xh"], a["rh"] = xh, u(21.0, 25.5) * k
    a["joint_gap"] = u(2.0, 3.5)
    a["y_sym"], a["r_sym"] = -u(48.0, 58.0) * k, u(8.0, 10.5) * k
    a["ischial_tub"] = (54.0 * k, u(20.0, 28.0) * k, -62.0 * k)
    a["z_coccyx"] = -u(30.0, 45.0) * k
    a["femur"] = {
        s: {
            "head": np.array([s * xh, u(-2.0, 2.0), u(-2.0, 2.0)]),
            "rn": u(13.0, 16.0) * k,
            "rs": u(13.0, 16.0) * k,
            "neck": np.array([38.0 * k, u(5.0, 11.0), -u(26.0, 34.0) * k]),
        }
        for s in (1, -1)
    }

    # prostate just posterior to the symphysis, inferior to the bladder
    p_r = np.array([u(20.0, 28.0), u(14.0, 20.0), u(16.0, 24.0)])
    p_c = np.array([u(-4.0, 4.0), a["y_sym"] + a["r_sym"] + u(8.0, 14.0) + p_r[1], -u(18.0, 30.0) * k])
    a["prostate"] = {"c": p_c, "r": p_r, "tilt": u(10.0, 25.0), "egg": u(0.05, 0.2), "zone": u(-6.0, 6.0)}
    a["levator"] = u(6.0, 10.0)

    # bladder: filling drives its size; base rests on the prostate
    f = u(0.0, 1.0)
    b_r = np.array(
        [28.0 + 22.0 * f + u(-3.0, 3.0), 20.0 + 15.0 * f + u(-2.0, 2.0), 20.0 + 24.0 * f + u(-3, 3)]
    )
    b_c = np.array(
        [
            p_c[0] + u(-6.0, 6.0),
            a["y_sym"] + 0.8 * a["r_sym"] + u(2.0, 8.0) + b_r[1],  # behind the pubis
            p_c[2] + 0.7 * p_r[2] + 0.85 * b_r[2],
        ]
    )
    a["bladder"] = {"c": b_c, "r": b_r, "p": u(2.0, 2.8), "wall": u(2.0, 4.0), "fill": f}

    # rectum centreline (piecewise linear in z) posterior to prostate and bladder
    canal, rx_amp, ry_amp = u(8.0, 11.0), u(16.0, 26.0), u(12.0, 18.0)
    top_rx, top_ry = u(12.0, 16.0), u(10.0, 14.0)
    gap = u(1.0, 3.0)
    z_apex = p_c[2] - p_r[2]
    y_apex = p_c[1] + 0.55 * p_r[1] + gap + canal
    y_mid = p_c[1] + p_r[1] + gap + ry_amp
    y_bl = max(b_c[1] + b_r[1] + gap + 0.9 * ry_amp, y_mid)
    zk = [z_apex - 60.0, z_apex, p_c[2], b_c[2], b_c[2] + 45.0, b_c[2] + 160.0]
    a["rectum"] = {
        "z": zk,
        "x": [p_c[0] + u(-5.0, 5.0) for _ in zk],
        "y": [y_apex + 12.0, y_apex, y_mid, y_bl, y_bl + u(5.0, 15.0), y_bl + u(0.0, 15.0)],
        "rx": [canal, canal, rx_amp, 0.9 * rx_amp, top_rx, top_rx],
        "ry": [canal, canal, ry_amp, ry_amp, top_ry, top_ry],
        "z_end": z_apex - u(30.0, 45.0),
        "wall": u(3.0, 5.0),
        "hu_stool": u(-20.0, 40.0),
        "bubbles": u() < 0.5,
        "gas": u() < 0.4,
        "gas_z": sorted([u(p_c[2], b_c[2] + 40.0), u(p_c[2], b_c[2] + 40.0)]),
        "gas_depth": u(0.0, 0.5),
    }
    # sacrum/coccyx: anterior surface behind the mesorectal fat
    meso = u(8.0, 18.0)
    zs = np.array(zk)
    sac_ry = np.clip(7.0 + 0.12 * (zs - a["z_coccyx"]), 7.0, 18.0)
    a["sacrum"] = {
        "z": list(zs),
        "y": list(np.array(a["rectum"]["y"]) + np.array(a["rectum"]["ry"]) + meso + sac_ry),
        "ry": list(sac_ry),
        "rx": [12.0 * k, 55.0 * k],
        "rx_z": [a["z_coccyx"], a["z_coccyx"] + 110.0],
    }

    # seminal vesicles between bladder base and rectum
    a["vesicles"] = [
        {
            "c": np.array(
                [p_c[0] + s * u(14.0, 20.0), p_c[1] + 0.55 * p_r[1], p_c[2] + 0.85 * p_r[2] + u(3, 8)]
            ),
            "r": np.array([u(12.0, 20.0), u(4.5, 6.5), u(5.0, 8.0)]),
            "angle": s * u(15.0, 35.0),
            "hu": u(30.0, 45.0),
        }
        for s in (1, -1)
    ]
    # bowel loops above the bladder
    a["bowel"] = [
        {
            "c": np.array(
                [u(-55.0, 55.0), u(a["y_sym"], b_c[1] + 10.0), b_c[2] + u(0.3 * b_r[2], 0.5 * b_r[2] + 90)]
            ),
            "r": np.array([u(12.0, 22.0), u(10.0, 20.0), u(12.0, 22.0)]),
            "gas": u() < 0.35,
            "hu": u(0.0, 40.0),
        }
        for _ in range(int(rng.integers(2, 6)))
    ]

    # body outline fitted around the skeleton and organs
    troch_lat = xh + 38.0 * k + 25.0 * k
    a["body_ax"] = troch_lat + u(12.0, 40.0)
    a["skin_ant"] = min(a["y_sym"] - a["r_sym"], b_c[1] - b_r[1]) - u(30.0, 60.0)
    y_sacrum_0 = float(np.interp(0.0, a["sacrum"]["z"], np.add(a["sacrum"]["y"], a["sacrum"]["ry"])))
    a["skin_post"] = max(a["ischial_tub"][1] + 16.0, y_sacrum_0) + u(40.0, 65.0)
    a["fat"] = {"ant": u(15.0, 45.0), "lat": u(12.0, 35.0), "post": u(12.0, 35.0)}
    a["cleft"] = u(10.0, 30.0)
    a["table_hu"] = u(150.0, 400.0)
    return a


def _paint_soft_tissue(cv: _Canvas, a: dict, tex: np.ndarray, planes_field: np.ndarray) -> None:
    g = cv.grid
    ant, post, ax = a["skin_ant"], a["skin_post"], a["body_ax"]
    big = 1e4

    # patient table: a thin carbon-fibre shell under the body
    # (unwarped, scanner-fixed coordinates: the table stays horizontal whatever the patient's pose)
    x, y = g.gx[None, None, :], g.gy[None, :, None]
    yt = post + 1.0 - x**2 / 8000.0  # slightly concave, cradling the patient
    shell = (((y > yt) & (y < yt + 3.0)) | ((y > yt + 30.0) & (y < yt + 33.0))) & (np.abs(x) < 210.0)
    cv.paint(np.s_[:, :, :], np.broadcast_to(shell, cv.hu.shape), a["table_hu"])

    # body: superellipse, rounder anteriorly, flattened posteriorly on the table
    sl = g.box((-ax, ant, -big), (ax, post, big))
    x, y, z = g.sub(sl)
    yc, ry = 0.5 * (ant + post), 0.5 * (post - ant)
    taper = 1.0 - 0.06 * np.clip((z - 20.0) / 80.0, 0.0, 1.0)  # a little narrower above the hips
    anterior = y < yc

    def outline(rx, ry_, yc_):
        return np.where(
            anterior, _superellipse_pow(x, y - yc_, rx, ry_, 2), _superellipse_pow(x, y - yc_, rx, ry_, 3)
        )

    body = outline(ax * taper, ry, yc) < 1.0
    # natal cleft: a thin air fold in the posterior midline at low levels
    cleft_depth = a["cleft"] * np.clip((a["z_coccyx"] - z) / 30.0, 0.0, 1.0)
    body &= ~((np.abs(x) < 1.5) & (y > post - cleft_depth))
    cv.paint(sl, body, a["hu_fat"] + 8.0 * tex[sl])

    # muscle under the subcutaneous fat
    f = a["fat"]
    m_ant, m_post = ant + f["ant"], post - f["post"]
    m_yc, m_ry = 0.5 * (m_ant + m_post), 0.5 * (m_post - m_ant)
    muscle = body & (outline(ax * taper - f["lat"], m_ry, m_yc) < 1.0)
    cv.paint(sl, muscle, a["hu_muscle"] + 4.0 * tex[sl])

    # intermuscular fat planes: thin level sets of a smooth random field between muscle groups
    planes = muscle & (np.abs(planes_field[sl]) < 0.07)
    cv.paint(sl, planes, 0.6 * a["hu_fat"] + 0.4 * a["hu_muscle"])

    # fat-filled pelvic cavity (true pelvis / ischioanal fossae below, widening above)
    sac = a["sacrum"]
    sl = g.box((-a["xh"] - 30.0, a["y_sym"] - 10.0, -big), (a["xh"] + 30.0, max(sac["y"]) + 10.0, big))
    x, y, z = g.sub(sl)
    cav_ant = np.float32(a["y_sym"] + 0.5 * a["r_sym"])
    cav_post = _interp(z, sac["z"], np.array(sac["y"]) - np.array(sac["ry"]) + 4.0)
    half_w = (a["xh"] - a["rh"] - 12.0) + 0.6 * np.clip(z - 15.0, 0.0, 70.0)
    cav = _superellipse_pow(x, y - 0.5 * (cav_ant + cav_post), half_w, 0.5 * (cav_post - cav_ant), 3) < 1.0
    cv.paint(sl, cav, a["hu_fat"] + 10.0 * tex[sl])

    # bowel loops (wall + fluid or gas) above the bladder
    for loop in a["bowel"]:
        c, r = loop["c"], loop["r"]
        sl = g.box(c - r - 1, c + r + 1)
        if sl is None:
            continue
        x, y, z = g.sub(sl)
        d = _ellipsoid_sdf(x - c[0], y - c[1], z - c[2], r)
        cv.paint(sl, d < 0, a["hu_muscle"] - 5.0)
        lumen = d < -3.0
        cv.paint(sl, lumen, loop["hu"])
        if loop["gas"]:
            cv.paint(sl, lumen & (y < c[1] + 0.2 * r[1]), AIR_HU)  # gas rises anteriorly (supine)


def _prostate_sdf(x, y, z, pr: dict):
    c, r = pr["c"], pr["r"]
    lx, ly, lz = _local(x, y, z, c, _rotation("x", -pr["tilt"]))
    widen = 1.0 + pr["egg"] * np.clip(lz / r[2], -1.0, 1.0)  # base wider than apex
    return _ellipsoid_sdf(lx / widen, ly, lz, r)


def _rectum_sdf(x, y, z, re: dict):
    xc, yc = _interp(z, re["z"], re["x"]), _interp(z, re["z"], re["y"])
    rx, ry = _interp(z, re["z"], re["rx"]), _interp(z, re["z"], re["ry"])
    return np.maximum(_ellipse_sdf(x - xc, y - yc, rx, ry), re["z_end"] - z), yc, ry


def _paint_organs(cv: _Canvas, a: dict, rng: np.random.Generator, tex: np.ndarray) -> None:
    g = cv.grid
    pr, re, bl = a["prostate"], a["rectum"], a["bladder"]
    mus = a["hu_muscle"]
    big = 1e4

    # levator ani / periprostatic plexus / anal sphincters: soft tissue with fat strands, nearly
    # the prostate's HU, wrapping the prostate and the lower rectum (what makes both hard on CT)
    lev = a["levator"]
    ext = pr["r"].max() * 1.25 + lev
    sl = g.box(pr["c"] - ext, pr["c"] + ext)
    x, y, z = g.sub(sl)
    fat_frac = np.clip(0.12 + 0.18 * tex[sl], 0.0, 0.45)
    cv.paint(sl, _prostate_sdf(x, y, z, pr) < lev, (1 - fat_frac) * mus + fat_frac * a["hu_fat"])
    r_ext = max(re["rx"]) + lev + 5.0
    sl = g.box(
        (min(re["x"]) - r_ext, min(re["y"]) - r_ext, -big),
        (max(re["x"]) + r_ext, max(re["y"]) + r_ext, pr["c"][2]),
    )
    if sl is not None:
        x, y, z = g.sub(sl)
        d, _, _ = _rectum_sdf(x, y, z, re)
        fat_frac = np.clip(0.1 + 0.15 * tex[sl], 0.0, 0.4)
        cv.paint(sl, (d < lev) & (z < pr["c"][2]), (1 - fat_frac) * mus + fat_frac * a["hu_fat"])

    # seminal vesicles (background)
    for sv in a["vesicles"]:
        ext = sv["r"].max() + 1.0
        sl = g.box(sv["c"] - ext, sv["c"] + ext)
        x, y, z = g.sub(sl)
        lx, ly, lz = _local(x, y, z, sv["c"], _rotation("z", sv["angle"]))
        cv.paint(sl, _ellipsoid_sdf(lx, ly, lz, sv["r"]) < 0, sv["hu"])

    # rectum: muscular wall, faecal content with bubbles, sometimes an anterior gas pocket
    sl = g.box(
        (min(re["x"]) - 30.0, min(re["y"]) - 30.0, re["z_end"]),
        (max(re["x"]) + 30.0, max(re["y"]) + 30.0, big),
    )
    if sl is not None:
        x, y, z = g.sub(sl)
        d, yc, ry = _rectum_sdf(x, y, z, re)
        rect = d < 0
        cv.paint(sl, rect, mus + rng.uniform(-8.0, 4.0), label=3)
        lumen = d < -re["wall"]
        cv.paint(sl, lumen, re["hu_stool"] + 25.0 * tex[sl], label=3)
        if re["bubbles"]:
            blob = ndi.gaussian_filter(rng.standard_normal(lumen.shape).astype(np.float32), 1.0)
            cv.paint(sl, lumen & (blob > 2.2 * float(blob.std())), AIR_HU, label=3)
        if re["gas"]:
            z0, z1 = re["gas_z"]
            pocket = lumen & (z > z0) & (z < z1) & (y < yc - re["gas_depth"] * ry)
            cv.paint(sl, pocket, AIR_HU, label=3)

    # bladder: superquadric, wall with muscle HU, urine
    c, r = bl["c"], bl["r"]
    sl = g.box(c - r - 2.0, c + r + 2.0)
    x, y, z = g.sub(sl)
    level = (
        np.abs((x - c[0]) / r[0]) ** bl["p"]
        + np.abs((y - c[1]) / r[1]) ** bl["p"]
        + np.abs((z - c[2]) / r[2]) ** bl["p"]
    ) ** (1.0 / bl["p"])
    d = (level - 1.0) * r.min()
    cv.paint(sl, d < 0, mus - 5.0, label=2)
    cv.paint(sl, d < -bl["wall"], a["hu_urine"], label=2)

    # prostate: slightly different central gland
    ext = pr["r"].max() * 1.25 + 1.0
    sl = g.box(pr["c"] - ext, pr["c"] + ext)
    x, y, z = g.sub(sl)
    d = _prostate_sdf(x, y, z, pr)
    cv.paint(sl, d < 0, a["hu_prostate"] + 3.0 * tex[sl], label=1)
    cv.paint(sl, d < -0.35 * pr["r"].min(), a["hu_prostate"] + pr["zone"], label=1)


class _Union:
    """Smooth union of SDF parts, each evaluated only inside its own bounding box.

    Exact for what is painted (the zero and cortex level sets inside the bone): ``smin(a, b, k)``
    equals ``min(a, b)`` wherever ``|a - b| >= k``, and a part is at least ``k`` mm away outside
    its box grown by ``k``.
    """

    def __init__(self, grid: _Grid):
        self.grid = grid
        self.parts: list[tuple[np.ndarray, np.ndarray, object, float, bool]] = []

    def add(self, lo, hi, fn, k: float = 0.0, subtract: bool = False) -> None:
        """Add ``fn(x, y, z) -> sdf`` (mm) living in box [lo, hi]; ``subtract`` cuts it out instead."""
        self.parts.append((np.asarray(lo, dtype=float), np.asarray(hi, dtype=float), fn, float(k), subtract))

    def evaluate(self):
        """``(slices, sdf)`` over the union of the boxes, or ``(None, None)`` if outside the grid."""
        adds = [p for p in self.parts if not p[4]]
        sl = self.grid.box(np.min([p[0] for p in adds], axis=0), np.max([p[1] for p in adds], axis=0))
        if sl is None:
            return None, None
        d = np.full(tuple(s.stop - s.start for s in sl), 1e3, dtype=np.float32)
        for lo, hi, fn, k, subtract in self.parts:
            sub = self.grid.box(lo - k - 2.0, hi + k + 2.0)
            if sub is None:
                continue
            sub = tuple(
                slice(max(a.start, b.start), min(a.stop, b.stop)) for a, b in zip(sub, sl, strict=True)
            )
            if any(s.stop <= s.start for s in sub):
                continue
            rel = tuple(slice(s.start - b.start, s.stop - b.start) for s, b in zip(sub, sl, strict=True))
            part = fn(*self.grid.sub(sub))
            if subtract:
                d[rel] = np.maximum(d[rel], -part)
            elif k > 0:
                d[rel] = _smin(d[rel], part, k)
            else:
                d[rel] = np.minimum(d[rel], part)
        return sl, d


def _bone(cv: _Canvas, sl, d, a: dict, cortex_mm, inner_hu, label: int = 0) -> None:
    inside = d < 0
    hu = np.where(d < -cortex_mm, inner_hu, a["hu_cortex"]).astype(np.float32)
    cv.paint(sl, inside, hu, label=label)


def _capsule(a, b, r):
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return np.minimum(a, b) - r, np.maximum(a, b) + r, lambda x, y, z: _capsule_sdf(x, y, z, a, b, r)


def _ellipsoid(c, r, rot: np.ndarray | None = None):
    c, r = np.asarray(c, dtype=float), np.asarray(r, dtype=float)
    if rot is None:
        return c - r, c + r, lambda x, y, z: _ellipsoid_sdf(x - c[0], y - c[1], z - c[2], r)
    return c - r.max(), c + r.max(), lambda x, y, z: _ellipsoid_sdf(*_local(x, y, z, c, rot), r)


def _sphere_dist(c):
    return lambda x, y, z: np.sqrt((x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2)


def _paint_bones(cv: _Canvas, a: dict) -> None:
    g, k = cv.grid, a["k"]
    rh, gap = a["rh"], a["joint_gap"]
    big = 1e4
    trab = a["hu_trabecular"]
    it = np.array(a["ischial_tub"], dtype=float)
    sac = a["sacrum"]

    # sacrum / coccyx: an axial ellipse per level, widening upwards, behind the mesorectum
    sl = g.box((-60.0 * k, min(sac["y"]) - 20.0, a["z_coccyx"]), (60.0 * k, max(sac["y"]) + 20.0, big))
    if sl is not None:
        x, y, z = g.sub(sl)
        yc, ry = _interp(z, sac["z"], sac["y"]), _interp(z, sac["z"], sac["ry"])
        rx = _interp(z, sac["rx_z"], sac["rx"])
        d = np.maximum(_ellipse_sdf(x, y - yc, rx, ry), a["z_coccyx"] - z)
        _bone(cv, sl, d, a, 2.0, trab)
    y_si = float(np.interp(85.0 * k, sac["z"], sac["y"]))

    for s in (1, -1):
        fe = a["femur"][s]
        h = fe["head"]
        # hip bone (background): ilium with its wing, acetabular cup, pubis, ischium, smoothly joined
        sym = np.array([s * (a["r_sym"] + 1.5), a["y_sym"], -12.0 * k])
        sym_lo = np.array([s * (a["r_sym"] + 1.5), a["y_sym"] + 4.0, -48.0 * k])
        its = it * [s, 1, 1]
        asis = np.array([s * (a["xh"] + 22.0 * k), -45.0 * k, 62.0 * k])
        si = np.array([s * 40.0 * k, y_si, 85.0 * k])
        hip = _Union(g)
        hip.add(
            *_capsule(
                h + np.array([-s * 8.0, 6.0, 20.0]) * k, [s * (a["xh"] - 12 * k), 25 * k, 62 * k], 15 * k
            )
        )
        # iliac wing: thin plate from the anterior superior spine towards the sacroiliac joint
        e1 = np.array([si[0] - asis[0], si[1] - asis[1], 0.0])
        half = np.linalg.norm(e1) / 2.0 + 6.0
        e1 /= np.linalg.norm(e1)
        rot = np.stack([e1, np.cross([0.0, 0.0, 1.0], e1), [0.0, 0.0, 1.0]], axis=1)
        hip.add(*_ellipsoid(0.5 * (asis + si) + [0.0, 0.0, 25.0 * k], [half, 7.0 * k, 48.0 * k], rot), k=10.0)
        r_cup = rh + gap + 11.0
        cup_dist = _sphere_dist(h)

        def cup(x, y, z, h=h, s=s, cup_dist=cup_dist):
            shell = np.abs(cup_dist(x, y, z) - (rh + gap + 5.5)) - 5.5
            return np.maximum(shell, np.maximum(s * (x - h[0]) - 0.35 * rh, -0.55 * rh - (z - h[2])))

        hip.add(h - r_cup, h + r_cup, cup, k=6.0)
        hip.add(
            *_capsule(sym + [0.0, 2.0, -6.0 * k], h + np.array([-s * 22.0, -20.0, -4.0]) * k, 9.0 * k), k=6.0
        )
        hip.add(*_capsule(sym, sym_lo, a["r_sym"]))
        hip.add(*_capsule(sym_lo + [s * 2.0, 2.0, 0.0], its, 7.5 * k), k=5.0)
        hip.add(*_capsule(h + np.array([-s * 10.0, 20.0, -12.0]) * k, its, 11.0 * k), k=6.0)
        hip.add(*_ellipsoid(its + [s * 3.0, 4.0, -4.0], np.array([12.0, 16.0, 13.0]) * k), k=5.0)
        # joint space: the hip bone never touches the femoral head
        r_gap = rh + gap
        hip.add(h - r_gap, h + r_gap, lambda x, y, z, f=cup_dist, r=r_gap: f(x, y, z) - r, subtract=True)
        sl, d = hip.evaluate()
        if sl is not None:
            _bone(cv, sl, d, a, 2.0, trab)

        # femur: head, neck, greater/lesser trochanter, shaft; class 4 = left (s = +1, large X)
        t = h + fe["neck"] * [s, 1, 1]
        femur = _Union(g)
        femur.add(h - rh, h + rh, lambda x, y, z, f=_sphere_dist(h): f(x, y, z) - rh)
        femur.add(*_capsule(h, t, fe["rn"]), k=6.0)
        femur.add(
            *_ellipsoid(t + np.array([s * 10.0, 10.0, 12.0]) * k, np.array([15.0, 20.0, 24.0]) * k), k=8.0
        )
        femur.add(*_capsule(t - [0.0, 0.0, 5.0], [s * (a["xh"] + 30.0 * k), 3.0, -260.0], fe["rs"]), k=10.0)
        femur.add(
            *_ellipsoid(t + np.array([-s * 12.0, 14.0, -38.0]) * k, np.array([9.0, 9.0, 11.0]) * k), k=5.0
        )
        sl, d = femur.evaluate()
        if sl is None:
            continue
        # thin cortex over trabecular bone proximally, thick cortex round a fatty medulla distally
        distal = np.clip((t[2] - 25.0 - g.z[sl]) / 20.0, 0.0, 1.0)
        cortex = 2.5 + 3.5 * distal
        inner = trab + (a["hu_medulla"] - trab) * distal
        _bone(cv, sl, d, a, cortex, inner, label=4 if s == 1 else 5)
