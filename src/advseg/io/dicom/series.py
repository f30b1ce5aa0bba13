"""DICOM CT series: find them in a folder tree, check their geometry, read them as a :class:`Volume`.

Geometry (DICOM PS3.3 C.7.6.2): ``ImageOrientationPatient`` holds the row direction ``r`` (the
direction in which the column index grows) and the column direction ``c``; ``PixelSpacing`` is
``(row spacing, column spacing)`` = ``(dy, dx)``. Slices are sorted by their distance along the
normal ``n = r x c`` (``ImagePositionPatient . n``), never by ``InstanceNumber``. In DICOM's LPS
patient coordinates, voxel ``(i, j, k)`` = (column, row, slice) lies at::

    p_LPS = IPP_0 + i * dx * r + j * dy * c + k * dz * n

and the NIfTI (RAS+) affine is ``diag(-1, -1, 1, 1) @ A_LPS``. The array is ``(Z, Y, X)`` =
(slice, row, column), the advseg convention (:mod:`advseg.io.base`). Values are Hounsfield units:
``stored * RescaleSlope + RescaleIntercept`` per slice.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, generate_uid

from advseg.errors import InputError
from advseg.io.base import Volume

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
RTSTRUCT_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"


def new_dataset(sop_class_uid: str, charset: str = "ISO_IR 100") -> Dataset:
    """An empty DICOM object to write: file meta (explicit VR little endian, pydicom's implementation
    UID), a new SOP Instance UID, the SOP Class UID and the character set."""
    sop_uid = generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class_uid
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = charset
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class_uid, sop_uid
    return ds
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
# Slice spacing may jitter by float rounding in real exports (1e-3 mm); a missing slice is a 100 % jump.
SPACING_TOLERANCE = 0.01  # relative to the median spacing
ORIENTATION_TOLERANCE = 1e-4  # direction cosines equal within this
OBLIQUE_TOLERANCE = 1e-3  # a cosine further than this from 0 or +-1 counts as oblique
SHEAR_TOLERANCE_MM = 0.01  # in-plane drift of the slice origin per slice beyond this = gantry tilt


@dataclass
class DicomFile:
    """One DICOM file's header (read without pixel data)."""

    path: Path
    ds: Dataset

    @property
    def modality(self) -> str:
        return str(self.ds.get("Modality", "")).upper()


@dataclass
class Scan:
    """What :func:`scan_folder` found: CT slices per SeriesInstanceUID, RTSTRUCT files, warnings."""

    root: Path
    ct: dict[str, list[DicomFile]] = field(default_factory=dict)
    rtstructs: list[DicomFile] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


@dataclass
class CTSeries:
    """A checked CT series, slices sorted along the normal.

    Attributes:
        files: slice files in ``Z`` order.
        headers: their headers (no pixel data), same order.
        positions: each slice's distance along the normal ``n`` (mm), increasing.
        affine_lps: 4 x 4 voxel ``(i, j, k)`` -> LPS mm of the volume grid.
        resampled: True when uneven slices were interpolated onto a regular grid (``positions`` are
            then those of the original slices, ``grid_positions`` those of the volume).
    """

    series_uid: str
    study_uid: str
    frame_uid: str
    files: list[Path]
    headers: list[Dataset]
    positions: np.ndarray
    affine_lps: np.ndarray
    rows: int
    columns: int
    resampled: bool = False
    grid_positions: np.ndarray | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def affine(self) -> np.ndarray:
        """NIfTI (RAS+) affine of the volume grid."""
        return LPS_TO_RAS @ self.affine_lps

    @property
    def sop_uids(self) -> list[str]:
        return [str(h.SOPInstanceUID) for h in self.headers]

    @property
    def shape(self) -> tuple[int, int, int]:
        n = len(self.files) if self.grid_positions is None else len(self.grid_positions)
        return (n, self.rows, self.columns)

    @property
    def normal(self) -> np.ndarray:
        return self.affine_lps[:3, 2] / np.linalg.norm(self.affine_lps[:3, 2])

    def index(self) -> dict[str, Any]:
        """The UIDs that tie a case back to its DICOM source (for ``dicom_index.json``)."""
        h = self.headers[0]
        return {
            "StudyInstanceUID": self.study_uid,
            "SeriesInstanceUID": self.series_uid,
            "FrameOfReferenceUID": self.frame_uid,
            "SeriesDescription": str(h.get("SeriesDescription", "")),
            "slices": len(self.files),
            "resampled": self.resampled,
        }

    def nearest_original_slice(self) -> np.ndarray:
        """For each grid slice ``k`` of the volume, the index of the nearest original slice."""
        if self.grid_positions is None:
            return np.arange(len(self.files))
        return np.abs(self.grid_positions[:, None] - self.positions[None, :]).argmin(axis=1)

    def read(self) -> Volume:
        """Read the pixel data as HU: ``(Z, Y, X)``, int16 when every slope/intercept is integral
        and the values fit, else float32."""
        slices, exact = [], True
        for path in self.files:
            try:
                ds = pydicom.dcmread(path)
            except Exception as exc:  # the header was readable at scan time: the file changed or is cut
                raise InputError(path, f"cannot read DICOM file ({type(exc).__name__}: {exc})") from None
            try:
                stored = ds.pixel_array
            except Exception as exc:  # pydicom raises many types for undecodable pixel data
                ts = ds.file_meta.get("TransferSyntaxUID", "?") if hasattr(ds, "file_meta") else "?"
                raise InputError(
                    path, f"cannot decode the pixel data (transfer syntax {ts}): {exc}"
                ) from None
            if stored.shape != (self.rows, self.columns):
                raise InputError(
                    path,
                    f"pixel data is {stored.shape}, expected {(self.rows, self.columns)} "
                    "(multi-frame or colour images are not CT slices)",
                )
            slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
            intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
            exact &= slope.is_integer() and intercept.is_integer()
            slices.append(stored.astype(np.float64) * slope + intercept)
        hu = np.stack(slices)
        if self.grid_positions is not None:
            hu = _interpolate_slices(hu, self.positions, self.grid_positions)
            exact = False
        if exact and hu.min() >= np.iinfo(np.int16).min and hu.max() <= np.iinfo(np.int16).max:
            array = hu.astype(np.int16)
        else:
            array = hu.astype(np.float32)
        return Volume(array, self.affine, meta={"format": "dicom", "dicom": self.index(), "series": self})


def is_dicom_folder(path: Path) -> bool:
    """True if ``path`` is a folder holding at least one DICOM file (checked by the 'DICM' preamble)."""
    if not path.is_dir():
        return False
    for f in _walk(path):
        try:
            with open(f, "rb") as fh:
                fh.seek(128)
                if fh.read(4) == b"DICM":
                    return True
        except OSError:
            continue
    return False


def _walk(root: Path) -> Iterable[Path]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith("."):
                yield Path(dirpath) / name


def scan_folder(root: str | Path) -> Scan:
    """Read every file header under ``root`` (no pixel data) and sort them into CT series and RTSTRUCTs.

    Files that are not DICOM, DICOMDIR files and other modalities (MR, RTDOSE, RTPLAN, ...) are
    skipped with one warning each (one per series for images). No DICOM at all is an error.
    """
    root = Path(root)
    if not root.exists():
        raise InputError(root, "DICOM folder not found")
    if not root.is_dir():
        raise InputError(root, "expected a folder of DICOM files")
    scan = Scan(root)
    others: dict[tuple[str, str], list[Path]] = {}
    for path in _walk(root):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception as exc:  # a truncated or corrupt file raises anything from EOFError to struct.error
            kind = "not a DICOM file" if isinstance(exc, InvalidDicomError) else f"unreadable DICOM ({exc})"
            scan.warnings.append(f"{path}: {kind}; skipped")
            continue
        f = DicomFile(path, ds)
        sop_class = str(ds.get("SOPClassUID", ""))
        if sop_class == "1.2.840.10008.1.3.10" or "DirectoryRecordSequence" in ds:  # DICOMDIR
            continue
        if f.modality == "RTSTRUCT" or sop_class == RTSTRUCT_STORAGE:
            scan.rtstructs.append(f)
        elif f.modality == "CT" and sop_class in (CT_IMAGE_STORAGE, ""):
            uid = str(ds.get("SeriesInstanceUID", ""))
            if not uid:
                raise InputError(path, "CT image without a SeriesInstanceUID")
            scan.ct.setdefault(uid, []).append(f)
        else:
            what = f.modality or "no Modality"
            if f.modality == "CT":
                what = f"CT of SOP class {sop_class} (only single-frame CT Image Storage is read)"
            others.setdefault((what, str(ds.get("SeriesInstanceUID", path))), []).append(path)
    for (what, _), paths in others.items():
        scan.warnings.append(
            f"{paths[0]}: {what}, not a CT image; {len(paths)} file(s) of this series skipped"
        )
    if not scan.ct and not scan.rtstructs:
        raise InputError(root, "no DICOM CT images in this folder tree")
    return scan


def build_series(files: list[DicomFile], resample: bool = False) -> CTSeries:
    """Check one series' geometry and sort its slices along the normal.

    Raises:
        InputError naming the offending file: a missing geometry tag, slices that differ in size,
        spacing, orientation or frame of reference, duplicate positions, sheared slices (gantry
        tilt), and a missing slice or uneven spacing unless ``resample`` (then a warning and linear
        interpolation onto a regular grid at the median spacing).
    """
    warnings: list[str] = []
    first = files[0]
    for f in files:
        for tag in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "Rows", "Columns"):
            if tag not in f.ds or f.ds.get(tag) in (None, ""):
                raise InputError(f.path, f"CT slice without {tag}")
        if "SOPInstanceUID" not in f.ds:
            raise InputError(f.path, "CT slice without SOPInstanceUID")
    iop0 = np.asarray(first.ds.ImageOrientationPatient, dtype=float)
    ps0 = np.asarray(first.ds.PixelSpacing, dtype=float)
    size0 = (int(first.ds.Rows), int(first.ds.Columns))
    frame0 = str(first.ds.get("FrameOfReferenceUID", ""))
    study0 = str(first.ds.get("StudyInstanceUID", ""))
    for f in files[1:]:
        if (int(f.ds.Rows), int(f.ds.Columns)) != size0:
            raise InputError(
                f.path,
                f"slice is {int(f.ds.Rows)} x {int(f.ds.Columns)}, the series' first "
                f"slice ({first.path.name}) {size0[0]} x {size0[1]}",
            )
        if np.abs(np.asarray(f.ds.ImageOrientationPatient, dtype=float) - iop0).max() > ORIENTATION_TOLERANCE:
            raise InputError(
                f.path,
                f"ImageOrientationPatient differs from the series' first slice "
                f"({first.path.name}): slices of one series must be parallel",
            )
        if np.abs(np.asarray(f.ds.PixelSpacing, dtype=float) - ps0).max() > 1e-4:
            raise InputError(
                f.path,
                f"PixelSpacing {list(f.ds.PixelSpacing)} differs from the series' first "
                f"slice ({first.path.name}: {list(ps0)})",
            )
        if str(f.ds.get("FrameOfReferenceUID", "")) != frame0:
            raise InputError(f.path, "FrameOfReferenceUID differs within one series")
    if ps0.min() <= 0:
        raise InputError(first.path, f"PixelSpacing must be positive, got {list(ps0)}")
    row, col = iop0[:3], iop0[3:]
    if abs(np.linalg.norm(row) - 1) > 1e-3 or abs(np.linalg.norm(col) - 1) > 1e-3 or abs(row @ col) > 1e-3:
        raise InputError(
            first.path, f"ImageOrientationPatient {list(iop0)} is not two orthonormal directions"
        )
    row, col = row / np.linalg.norm(row), col / np.linalg.norm(col)
    normal = np.cross(row, col)
    ipp = np.array([np.asarray(f.ds.ImagePositionPatient, dtype=float) for f in files])
    dist = ipp @ normal
    order = np.argsort(dist, kind="stable")
    files = [files[i] for i in order]
    ipp, dist = ipp[order], dist[order]
    if len(files) < 2:
        raise InputError(first.path, "the series has one slice; a 3D CT needs at least two")
    steps = np.diff(dist)
    dup = np.flatnonzero(steps < 1e-3)
    if dup.size:
        a, b = files[dup[0]], files[dup[0] + 1]
        raise InputError(
            b.path,
            f"same slice position ({dist[dup[0]]:.3f} mm along the normal) as {a.path.name}: "
            "duplicate slice or two series with one SeriesInstanceUID",
        )
    # Gantry tilt: slice origins drift in-plane as well as along the normal (a sheared grid).
    inplane = (ipp - ipp[0]) - np.outer(dist - dist[0], normal)
    drift = np.linalg.norm(inplane, axis=1)
    if drift.max() > SHEAR_TOLERANCE_MM:
        k = int(drift.argmax())
        tilt = np.degrees(np.arctan2(drift[k], dist[k] - dist[0]))
        raise InputError(
            files[k].path,
            f"slices are sheared ({tilt:.1f} deg: gantry tilt, or slice origins not "
            "on the normal); advseg reads only unsheared series: resample it "
            "(e.g. dcm2niix corrects gantry tilt) and import the result",
        )
    if np.abs(np.abs(iop0) - np.round(np.abs(iop0))).max() > OBLIQUE_TOLERANCE:
        warnings.append(
            f"{first.path}: oblique slices (ImageOrientationPatient {[round(v, 4) for v in iop0]}); "
            "the affine keeps the rotation"
        )
    dz = float(np.median(steps))
    uneven = np.abs(steps - dz) > SPACING_TOLERANCE * dz
    grid = None
    if uneven.any():
        k = int(np.flatnonzero(uneven)[0])
        gap = steps[k] / dz
        if abs(gap - round(gap)) < 0.05 and round(gap) >= 2:
            problem = (
                f"{round(gap) - 1} missing slice(s) between {dist[k]:.2f} and {dist[k + 1]:.2f} mm "
                f"(spacing {dz:.3f} mm, next file {files[k + 1].path.name})"
            )
        else:
            problem = f"uneven slice spacing ({steps.min():.3f} to {steps.max():.3f} mm, median {dz:.3f})"
        if not resample:
            raise InputError(files[k].path, f"{problem}; pass --resample to interpolate onto a regular grid")
        n = int(round((dist[-1] - dist[0]) / dz)) + 1
        grid = dist[0] + dz * np.arange(n)
        warnings.append(f"{files[k].path}: {problem}; resampled linearly to {n} slices at {dz:.3f} mm")
    if grid is None:  # the mean step: float jitter of single positions averages out over the series
        dz = float((dist[-1] - dist[0]) / (len(dist) - 1))
    affine = np.eye(4)
    affine[:3, 0] = row * ps0[1]
    affine[:3, 1] = col * ps0[0]
    affine[:3, 2] = normal * dz
    affine[:3, 3] = ipp[0]
    return CTSeries(
        series_uid=str(first.ds.SeriesInstanceUID),
        study_uid=study0,
        frame_uid=frame0,
        files=[f.path for f in files],
        headers=[f.ds for f in files],
        positions=dist,
        affine_lps=affine,
        rows=size0[0],
        columns=size0[1],
        resampled=grid is not None,
        grid_positions=grid,
        warnings=warnings,
    )


def _interpolate_slices(values: np.ndarray, positions: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Linear interpolation along axis 0 from irregular ``positions`` to ``grid`` (both mm, increasing)."""
    hi = np.clip(np.searchsorted(positions, grid, side="right"), 1, len(positions) - 1)
    lo = hi - 1
    w = ((grid - positions[lo]) / (positions[hi] - positions[lo])).clip(0, 1)
    w = np.where(w < 1e-6, 0.0, np.where(w > 1 - 1e-6, 1.0, w))[:, None, None]  # on a slice: its values
    return values[lo] * (1 - w) + values[hi] * w


def series_order(scan: Scan) -> list[str]:
    """SeriesInstanceUIDs in the order of their first file in the folder tree (sorted paths): the
    order a user sees in a file browser, and stable for one folder."""
    return sorted(scan.ct, key=lambda uid: min(str(f.path) for f in scan.ct[uid]))


def read_series_folder(path: str | Path, resample: bool = False) -> list[CTSeries]:
    """Every CT series under ``path``, checked, in :func:`series_order`."""
    scan = scan_folder(path)
    if not scan.ct:
        raise InputError(path, "no DICOM CT images in this folder tree")
    out = []
    for uid in series_order(scan):
        s = build_series(scan.ct[uid], resample=resample)
        if not out:  # the folder's own warnings (skipped files), reported once, with the first series
            s.warnings[:0] = scan.warnings
        out.append(s)
    return out
