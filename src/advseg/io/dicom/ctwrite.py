"""Write a volume as a DICOM CT series (one CT Image Storage file per slice).

For converting a NIfTI CT into what a TPS or PACS reads, and for tests that need a series with known
geometry. The inverse of :mod:`advseg.io.dicom.series`: ``A_LPS = diag(-1, -1, 1, 1) @ affine``; the
row direction is ``A_LPS``'s first column, the column direction its second, slice ``k`` starts at
``A_LPS @ (0, 0, k, 1)``. Values are stored as int16 with RescaleSlope 1 and RescaleIntercept 0
(HU rounded to the integer) unless ``slope``/``intercept`` are given.
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from advseg.errors import InputError
from advseg.io.atomic import atomic_dir
from advseg.io.base import Volume
from advseg.io.dicom.series import CT_IMAGE_STORAGE, LPS_TO_RAS, new_dataset


def write_ct_series(
    folder: str | Path,
    volume: Volume,
    patient_id: str = "ANON",
    patient_name: str = "Anonymous^Advseg",
    study_uid: str | None = None,
    frame_uid: str | None = None,
    series_description: str = "advseg CT",
    slope: float = 1.0,
    intercept: float = 0.0,
) -> list[Path]:
    """Write ``volume`` (HU, ``(Z, Y, X)``, NIfTI affine) as ``folder/CT_0000.dcm``, ... .

    The folder must not exist or be empty; it is assembled beside its final place and renamed, so
    an interrupted write leaves nothing half-written. Returns the slice files in ``Z`` order.

    Raises:
        InputError: ``folder`` is a non-empty folder, or the affine is sheared (slices not
            perpendicular to the image plane cannot be a CT series without tilt).
    """
    folder = Path(folder)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise InputError(folder, "output exists and is not an empty folder")
    a = LPS_TO_RAS @ np.asarray(volume.affine, dtype=float)
    sx, sy, sz = np.linalg.norm(a[:3, :3], axis=0)
    row, col, step = a[:3, 0] / sx, a[:3, 1] / sy, a[:3, 2]
    normal = np.cross(row, col)
    if abs(abs(step @ normal) - sz) > 1e-4 * sz or abs(row @ col) > 1e-6:
        raise InputError(None, "the volume's affine is sheared or non-orthogonal; a CT series cannot hold it")
    stored = np.round((np.asarray(volume.array, dtype=np.float64) - intercept) / slope)
    if stored.min() < -32768 or stored.max() > 32767:
        raise InputError(None, "values do not fit int16 with this slope/intercept")
    stored = stored.astype(np.int16)
    study_uid = study_uid or generate_uid()
    frame_uid = frame_uid or generate_uid()
    series_uid = generate_uid()
    now = _dt.datetime.now()
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    with atomic_dir(folder) as tmp:
        paths = []
        for k in range(stored.shape[0]):
            ds = _slice(stored[k], a, k, (sx, sy, sz), row, col)
            ds.PatientName, ds.PatientID = patient_name, patient_id
            ds.PatientBirthDate, ds.PatientSex = "", "O"
            ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = (
                study_uid,
                series_uid,
                frame_uid,
            )
            ds.StudyDate = ds.SeriesDate = ds.ContentDate = date
            ds.StudyTime = ds.SeriesTime = ds.ContentTime = time
            ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = "1", "", ""
            ds.SeriesNumber, ds.InstanceNumber = 1, k + 1
            ds.SeriesDescription = series_description
            ds.RescaleSlope, ds.RescaleIntercept = _ds(slope), _ds(intercept)
            path = tmp / f"CT_{k:04d}.dcm"
            ds.save_as(path, enforce_file_format=True)
            paths.append(folder / path.name)
    return paths


def _ds(v: float) -> str:
    """A DS value of at most 16 characters."""
    return f"{v:.6g}" if len(f"{v:.6f}") > 16 else f"{v:.6f}".rstrip("0").rstrip(".") or "0"


def _slice(pixels: np.ndarray, a: np.ndarray, k: int, spacing, row, col) -> Dataset:
    ds = new_dataset(CT_IMAGE_STORAGE)
    ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
    ds.Modality = "CT"
    ds.Manufacturer = "advseg"
    ds.KVP = ""
    ds.PatientPosition = "HFS"
    ds.Laterality = ""  # Type 2C in General Series; empty: no paired organ imaged
    ds.AcquisitionNumber = 1
    ds.PositionReferenceIndicator = ""
    origin = a @ np.array([0.0, 0.0, float(k), 1.0])
    ds.ImagePositionPatient = [_ds(v) for v in origin[:3]]
    ds.ImageOrientationPatient = [_ds(v) for v in (*row, *col)]
    ds.PixelSpacing = [_ds(spacing[1]), _ds(spacing[0])]  # (row spacing dy, column spacing dx)
    ds.SliceThickness = _ds(spacing[2])
    ds.SliceLocation = _ds(float(origin[:3] @ np.cross(row, col)))
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = int(pixels.shape[0]), int(pixels.shape[1])
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleType = "HU"
    ds.WindowCenter, ds.WindowWidth = "40", "400"
    ds.PixelData = np.ascontiguousarray(pixels, dtype="<i2").tobytes()
    return ds
