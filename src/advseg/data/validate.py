"""Dataset integrity check, run before anything is trained (in the spirit of nnU-Net's).

Every file of every case is read exactly once (:func:`advseg.io.read_volume`, which already rejects
unreadable, empty, 2D and 4D files) and checked for:

* images: finite values (no NaN/Inf), not constant, all channels of a case with one shape and
  geometry;
* labels: same shape ``(Z, Y, X)`` and geometry as the case's first image, integer values that are
  declared classes (``0..N-1`` from ``dataset.json``); a training label with only background is a
  warning, not an error;
* geometry tolerance: voxel spacing within 1e-3 relative (+1e-4 mm), direction cosines within 1e-3,
  origin within 1e-4 mm + 1e-3 voxel. Larger differences mean the label was drawn on another grid.

Identical images in two roles (e.g. a labeled image also given as unlabeled data) are warned about:
they would leak labels into a semi-supervised comparison. Nothing is written.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from advseg.data.dataset import Case, DatasetIndex
from advseg.errors import InputError, InputErrors
from advseg.io import Volume, read_volume

SPACING_RTOL = 1e-3
ABS_TOL_MM = 1e-4
DIRECTION_ATOL = 1e-3
ORIGIN_VOXEL_TOL = 1e-3


def validate_dataset(index: DatasetIndex, check_unlabeled: bool = True, check_test: bool = True) -> list[str]:
    """Check every file of ``index``; return warnings, raise :class:`InputErrors` listing all problems.

    Each problem and warning is one line ``<file>: <what>``. Files are read once, sequentially, one
    case in memory at a time.
    """
    classes = set(index.labels)
    problems: list[InputError] = []
    warns: list[str] = []
    seen: dict[str, Path] = {}  # image content hash -> first file with it
    roles: list[tuple[str, Iterable[Case]]] = [("training", index.training)]
    if check_test:
        roles.append(("test", index.test))
    if check_unlabeled:
        roles.append(("unlabeled", index.unlabeled))
    for role, cases in roles:
        for case in cases:
            _check_case(case, role, classes, problems, warns, seen)
    if problems:
        raise InputErrors(problems)
    return warns


def _check_case(
    case: Case, role: str, classes: set[int], problems: list[InputError], warns: list[str],
    seen: dict[str, Path],
) -> None:
    ref: tuple[Path, Volume] | None = None
    for path in case.images:
        try:
            vol = read_volume(path)
        except InputError as exc:
            problems.append(exc)
            continue
        _check_image(path, vol, problems, warns)
        digest = hashlib.blake2b(np.ascontiguousarray(vol.array).view(np.uint8).ravel().data,
                                 digest_size=16)
        digest.update(str(vol.shape).encode())
        first = seen.setdefault(digest.hexdigest(), path)
        if first != path:
            warns.append(f"{path}: {role} image has the same voxels as {first}")
        if ref is None:
            ref = (path, vol)
        else:
            _compare_grid(path, vol, ref, "channel", problems)
    if case.label is None:
        return
    try:
        label = read_volume(case.label)
    except InputError as exc:
        problems.append(exc)
        return
    if ref is not None:
        _compare_grid(case.label, label, ref, "image", problems)
    _check_label(case.label, label, classes, role, problems, warns)


def _check_image(path: Path, vol: Volume, problems: list[InputError], warns: list[str]) -> None:
    arr = vol.array
    if arr.dtype.kind not in "biuf":
        problems.append(InputError(path, f"unsupported voxel type {arr.dtype}"))
        return
    if arr.dtype.kind == "f":
        finite = np.isfinite(arr)
        if not finite.all():
            n_nan = int(np.isnan(arr).sum())
            problems.append(InputError(path, f"image has {n_nan} NaN and {int((~finite).sum()) - n_nan} "
                                             "Inf voxels"))
            return
    lo, hi = arr.min(), arr.max()
    if lo == hi:
        problems.append(InputError(path, f"image is constant (every voxel is {lo.item():g})"))
    if min(arr.shape) == 1:
        warns.append(f"{path}: image shape (z, y, x) {vol.shape} has a single-voxel axis")


def _check_label(
    path: Path, vol: Volume, classes: set[int], role: str, problems: list[InputError], warns: list[str]
) -> None:
    arr = vol.array
    if arr.dtype.kind == "f":
        if not np.isfinite(arr).all():
            problems.append(InputError(path, "label has NaN/Inf voxels"))
            return
        rounded = np.round(arr)
        off = arr != rounded
        if off.any():
            examples = ", ".join(f"{v:g}" for v in np.unique(arr[off])[:5])
            problems.append(InputError(path, f"label has non-integer values ({examples}, ...); labels "
                                             "must be class indices (resampled with linear interpolation?)"))
            return
        arr = rounded.astype(np.int64)
    elif arr.dtype.kind not in "biu":
        problems.append(InputError(path, f"unsupported label voxel type {arr.dtype}"))
        return
    values = _unique_ints(arr)
    bad = [v for v in values if v not in classes]
    if bad:
        shown = ", ".join(str(v) for v in bad[:10]) + (", ..." if len(bad) > 10 else "")
        problems.append(InputError(path, f"label values {shown} are not declared classes "
                                         f"(dataset.json labels: {min(classes)}..{max(classes)})"))
    elif values == [0]:
        warns.append(f"{path}: {role} label has only background (0)")


def _unique_ints(arr: np.ndarray) -> list[int]:
    """Sorted distinct values of an integer array; a bincount is far faster than a sort for labels."""
    flat = arr.ravel()
    if flat.dtype.kind == "b":
        flat = flat.view(np.uint8)
    lo, hi = int(flat.min()), int(flat.max())
    if hi - lo > 1 << 20:
        return [int(v) for v in np.unique(flat)]
    shifted = flat if lo == 0 else flat.astype(np.int64) - lo
    counts = np.bincount(shifted, minlength=hi - lo + 1)
    return [int(v) + lo for v in np.flatnonzero(counts)]


def _fmt(values: Iterable[float]) -> str:
    return "(" + ", ".join(f"{float(v):.6g}" for v in values) + ")"


def _compare_grid(
    path: Path, vol: Volume, ref: tuple[Path, Volume], what: str, problems: list[InputError]
) -> None:
    """Shape and geometry of ``vol`` against the case's first image ``ref``."""
    ref_path, ref_vol = ref
    if vol.shape != ref_vol.shape:
        problems.append(InputError(path, f"shape (z, y, x) {vol.shape} differs from {ref_vol.shape} of "
                                         f"{what} {ref_path.name}"))
    msg = geometry_difference(vol.affine, ref_vol.affine)
    if msg:
        problems.append(InputError(path, f"{msg} of {what} {ref_path.name}"))


def geometry_difference(affine: np.ndarray, ref: np.ndarray) -> str | None:
    """None if two NIfTI affines describe the same grid within tolerance, else what differs.

    The message names both values: ``"spacing (z, y, x) (1, 1, 1.2) mm differs from (1, 1, 1) mm"``.
    """
    a, b = np.asarray(affine, dtype=np.float64)[:3], np.asarray(ref, dtype=np.float64)[:3]
    sa, sb = np.linalg.norm(a[:, :3], axis=0), np.linalg.norm(b[:, :3], axis=0)  # (x, y, z)
    if not np.allclose(sa, sb, rtol=SPACING_RTOL, atol=ABS_TOL_MM):
        return f"spacing (z, y, x) {_fmt(sa[::-1])} mm differs from {_fmt(sb[::-1])} mm"
    da, db = a[:, :3] / np.maximum(sa, 1e-12), b[:, :3] / np.maximum(sb, 1e-12)
    if not np.allclose(da, db, rtol=0, atol=DIRECTION_ATOL):
        return f"direction {_fmt(da.T.ravel())} differs from {_fmt(db.T.ravel())}"
    tol = ABS_TOL_MM + ORIGIN_VOXEL_TOL * float(sb.min())
    if np.abs(a[:, 3] - b[:, 3]).max() > tol:
        return f"origin (x, y, z) {_fmt(a[:, 3])} mm differs from {_fmt(b[:, 3])} mm"
    return None
