"""RT Structure Sets: read and rasterise the ROIs a TPS wrote; write predicted label maps as one.

Contours are closed planar polygons in patient LPS millimetres, one or more per ROI and slice
(PS3.3 C.8.8.6). They are rasterised with the even-odd rule on pixel centres: a pixel belongs to the
ROI if a ray from its centre crosses the ROI's contours on that slice an odd number of times. So a
contour inside another is a hole, and a *keyhole* contour (one polygon that runs out along a
zero-width cut, around the hole the other way and back, as Eclipse, Pinnacle and plastimatch write
holes) comes out right too. Each contour is filled with :func:`skimage.draw.polygon` (crossing-number
test of pixel centres) and the fills of one slice are XOR-ed.

Writing: per organ and slice, :func:`skimage.measure.find_contours` at level 0.5 of the binary mask
(padded by one pixel, so every contour closes) gives polygons through the midpoints between inside
and outside pixel centres; with the even-odd rule they rasterise back to the same pixels. Holes are
written as keyholes joined to their outline (:func:`_keyhole`), since not every reader XORs
separate contours.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid

from advseg.errors import InputError
from advseg.io.atomic import atomic_path
from advseg.io.dicom.series import CT_IMAGE_STORAGE, RTSTRUCT_STORAGE, CTSeries, new_dataset

STUDY_COMPONENT_SOP_CLASS = "1.2.840.10008.3.1.2.3.1"  # what RTReferencedStudySequence items reference
# Distinct ROI colours (RGB): TPSs show every organ in its own colour.
PALETTE = [
    (230, 25, 75),
    (60, 180, 75),
    (255, 225, 25),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (250, 190, 212),
    (0, 128, 128),
    (220, 190, 255),
    (170, 110, 40),
    (255, 250, 200),
    (128, 0, 0),
    (170, 255, 195),
    (128, 128, 0),
    (255, 215, 180),
    (0, 0, 128),
    (128, 128, 128),
]


@dataclass
class Contour:
    points: np.ndarray  # (N, 3) LPS mm
    geometric_type: str
    image_uids: list[str]


@dataclass
class Roi:
    number: int
    name: str
    frame_uid: str
    contours: list[Contour] = field(default_factory=list)


@dataclass
class StructureSet:
    """What an RTSTRUCT holds and references."""

    path: Path
    sop_uid: str
    frame_uids: list[str]
    series_uids: list[str]
    image_uids: list[str]
    rois: list[Roi]
    date: str = ""

    def roi(self, name: str) -> Roi:
        return next(r for r in self.rois if r.name == name)


def read_rtstruct(path: str | Path, ds: Dataset | None = None) -> StructureSet:
    """Parse an RTSTRUCT file (or its already read dataset ``ds``)."""
    path = Path(path)
    if ds is None or "ROIContourSequence" not in ds:
        try:
            ds = pydicom.dcmread(path)
        except Exception as exc:
            raise InputError(path, f"cannot read DICOM file ({type(exc).__name__}: {exc})") from None
    if str(ds.get("Modality", "")).upper() != "RTSTRUCT":
        raise InputError(path, f"not an RTSTRUCT (Modality {ds.get('Modality', 'missing')})")
    if "StructureSetROISequence" not in ds:
        raise InputError(path, "RTSTRUCT without StructureSetROISequence")
    frames, series, images = [], [], []
    for fr in ds.get("ReferencedFrameOfReferenceSequence", []):
        frames.append(str(fr.get("FrameOfReferenceUID", "")))
        for st in fr.get("RTReferencedStudySequence", []):
            for se in st.get("RTReferencedSeriesSequence", []):
                series.append(str(se.get("SeriesInstanceUID", "")))
                images += [
                    str(i.ReferencedSOPInstanceUID)
                    for i in se.get("ContourImageSequence", [])
                    if "ReferencedSOPInstanceUID" in i
                ]
    rois: dict[int, Roi] = {}
    for item in ds.StructureSetROISequence:
        n = int(item.ROINumber)
        rois[n] = Roi(
            n, str(item.get("ROIName", f"ROI {n}")), str(item.get("ReferencedFrameOfReferenceUID", ""))
        )
    for item in ds.get("ROIContourSequence", []):
        roi = rois.get(int(item.get("ReferencedROINumber", -1)))
        if roi is None:
            raise InputError(
                path,
                f"ROIContourSequence references ROI number {item.get('ReferencedROINumber')}, "
                "which StructureSetROISequence does not define",
            )
        for c in item.get("ContourSequence", []):
            data = [float(v) for v in (c.get("ContourData") or [])]
            if len(data) % 3:
                raise InputError(
                    path, f"ROI '{roi.name}': ContourData has {len(data)} values, not a multiple of 3"
                )
            uids = [
                str(i.ReferencedSOPInstanceUID)
                for i in c.get("ContourImageSequence", [])
                if "ReferencedSOPInstanceUID" in i
            ]
            roi.contours.append(
                Contour(
                    np.asarray(data, float).reshape(-1, 3),
                    str(c.get("ContourGeometricType", "")).upper(),
                    uids,
                )
            )
    return StructureSet(
        path,
        str(ds.get("SOPInstanceUID", "")),
        frames,
        series,
        images,
        list(rois.values()),
        date=f"{ds.get('StructureSetDate', '')}{ds.get('StructureSetTime', '')}",
    )


def rasterise_roi(roi: Roi, series: CTSeries, path: str | Path, warnings: list[str]) -> np.ndarray:
    """Even-odd fill of the ROI's closed planar contours on the series' grid: bool ``(Z, Y, X)``.

    Empty contours and non-closed ones (POINT, OPEN_PLANAR) are skipped with a warning. A contour
    that is not planar, not on one of the series' slices, or references a slice the series does not
    hold is an error naming ``path``; so is an ROI with nothing to fill.
    """
    from skimage.draw import polygon

    a = series.affine_lps
    dx, dy = np.linalg.norm(a[:3, 0]), np.linalg.norm(a[:3, 1])
    row, col, normal = a[:3, 0] / dx, a[:3, 1] / dy, series.normal
    sop = set(series.sop_uids)
    steps = np.diff(series.positions)
    tol = 0.3 * float(steps.min()) if steps.size else 0.5
    planes = np.zeros((len(series.files), series.rows, series.columns), dtype=bool)
    skipped = {"empty": 0, "not closed": 0}
    for c in roi.contours:
        if len(c.points) < 3:
            skipped["empty"] += 1
            continue
        if c.geometric_type not in ("CLOSED_PLANAR", ""):
            skipped["not closed"] += 1
            continue
        missing = [u for u in c.image_uids if u not in sop]
        if missing:
            raise InputError(
                path,
                f"ROI '{roi.name}': a contour references slice {missing[0]}, which is not in "
                f"series {series.series_uid}",
            )
        d = c.points @ normal
        if np.ptp(d) > tol:
            raise InputError(
                path,
                f"ROI '{roi.name}': a contour is not parallel to the slices ({np.ptp(d):.2f} mm "
                "out of plane)",
            )
        k = int(np.abs(series.positions - d.mean()).argmin())
        if abs(series.positions[k] - d.mean()) > tol:
            raise InputError(
                path,
                f"ROI '{roi.name}': a contour at {d.mean():.2f} mm along the slice normal lies "
                f"between slices (nearest {series.positions[k]:.2f} mm)",
            )
        rel = c.points - a[:3, 3]
        rr, cc = polygon(rel @ col / dy, rel @ row / dx, shape=(series.rows, series.columns))
        planes[k, rr, cc] ^= True
    for what, n in skipped.items():
        if n:
            warnings.append(f"{path}: ROI '{roi.name}': {n} {what} contour(s) skipped")
    if not planes.any():
        raise InputError(path, f"ROI '{roi.name}' has no closed contour with an inside (empty structure)")
    return planes[series.nearest_original_slice()]


def _slice_contours(mask: np.ndarray) -> list[np.ndarray]:
    """Closed polygons ``(N, 2)`` of (row, column) pixel coordinates around a 2D binary mask, each
    hole joined to the outline around it by a keyhole cut (:func:`_keyhole`)."""
    from skimage.measure import find_contours

    out = []
    for c in find_contours(np.pad(mask, 1).astype(np.float32), 0.5):
        c = c[:-1] - 1.0 if np.allclose(c[0], c[-1]) else c - 1.0
        if len(c) >= 3:
            out.append(c)
    return _keyhole(out)


def _keyhole(contours: list[np.ndarray]) -> list[np.ndarray]:
    """Join each hole to the outline that directly encloses it: one polygon that runs from the
    outline's vertex nearest the hole along a zero-width cut, around the hole and back.

    Why: readers differ on separate hole contours. An even-odd reader (advseg) makes a hole of a
    contour inside another, but plastimatch (measured: an 11 x 11 hole in a 21 x 21 square came back
    filled, 121 extra voxels) and TPSs that OR their contours fill it. A keyhole polygon comes out
    right under either rule. Contours of one level set never cross, so nesting depth (how many
    others contain a contour's first vertex) tells outlines (even) from holes (odd).
    """
    from skimage.measure import points_in_poly

    n = len(contours)
    if n < 2:
        return contours
    firsts = np.array([c[0] for c in contours])
    contains = np.array([points_in_poly(firsts, c) for c in contours])  # [i, j]: i encloses j
    np.fill_diagonal(contains, False)
    depth = contains.sum(axis=0)
    out = []
    for i in np.flatnonzero(depth % 2 == 0):
        poly = contours[i]
        for j in np.flatnonzero(contains[i] & (depth == depth[i] + 1)):
            hole = contours[j]
            d = ((poly[:, None, :] - hole[None, :, :]) ** 2).sum(-1)
            a, b = np.unravel_index(int(d.argmin()), d.shape)
            poly = np.concatenate([poly[: a + 1], hole[b:], hole[: b + 1], poly[a:]])
        out.append(poly)
    return out


def write_rtstruct(
    path: str | Path,
    labels: np.ndarray,
    names: dict[int, str],
    series: CTSeries,
    label: str = "advseg",
    description: str = "advseg auto-contours",
    software_version: str = "",
) -> Dataset:
    """Write ``labels`` (``(Z, Y, X)`` on ``series``' volume grid) as an RTSTRUCT referencing the series.

    One ROI per label value in ``names`` (0, background, skipped) that has any voxel: ROI name the
    label name, a distinct display colour, RTROIInterpretedType ORGAN, generation AUTOMATIC, one
    CLOSED_PLANAR contour per outline and slice in patient coordinates (holes as separate
    contours), each with a ContourImageSequence item naming its slice. The referenced-series block
    lists every slice of the series once. New SeriesInstanceUID and SOPInstanceUID; patient and
    study attributes copied from the series. Written atomically; returns the dataset.
    """
    labels = np.asarray(labels)
    if labels.shape != series.shape:
        raise InputError(path, f"label map {labels.shape} does not match the series grid {series.shape}")
    if series.grid_positions is not None:  # back onto the original slices: nearest grid slice
        gp = series.grid_positions
        labels = labels[np.abs(series.positions[:, None] - gp[None, :]).argmin(axis=1)]
    ref = series.headers[0]
    now = _dt.datetime.now()
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    ds = new_dataset(RTSTRUCT_STORAGE, ref.get("SpecificCharacterSet", "ISO_IR 100"))
    ds.InstanceCreationDate, ds.InstanceCreationTime = date, time
    # Patient and General Study modules: the CT's own, so the TPS files the structures with it.
    for kw in (
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientSex",
        "StudyInstanceUID",
        "StudyDate",
        "StudyTime",
        "ReferringPhysicianName",
        "StudyID",
        "AccessionNumber",
        "StudyDescription",
    ):
        setattr(ds, kw, ref.get(kw, ""))
    ds.StudyInstanceUID = series.study_uid
    # RT Series and General Equipment modules.
    ds.Modality = "RTSTRUCT"
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = 9001
    ds.SeriesDate, ds.SeriesTime = date, time
    ds.SeriesDescription = description
    ds.OperatorsName = ""
    ds.Manufacturer = "advseg"
    ds.ManufacturerModelName = "advseg"
    ds.SoftwareVersions = software_version or "advseg"
    ds.InstanceNumber = 1
    # Frame of Reference module (dciodvfy requires it of an RT Structure Set): the CT's.
    ds.FrameOfReferenceUID = series.frame_uid
    ds.PositionReferenceIndicator = ref.get("PositionReferenceIndicator", "")
    # Structure Set module.
    ds.StructureSetLabel = label[:16]
    ds.StructureSetName = label[:64]
    ds.StructureSetDescription = description
    ds.StructureSetDate, ds.StructureSetTime = date, time
    images = Sequence()
    for h in series.headers:
        item = Dataset()
        item.ReferencedSOPClassUID = str(h.get("SOPClassUID", CT_IMAGE_STORAGE))
        item.ReferencedSOPInstanceUID = str(h.SOPInstanceUID)
        images.append(item)
    se = Dataset()
    se.SeriesInstanceUID = series.series_uid
    se.ContourImageSequence = images
    st = Dataset()
    st.ReferencedSOPClassUID = STUDY_COMPONENT_SOP_CLASS
    st.ReferencedSOPInstanceUID = series.study_uid
    st.RTReferencedSeriesSequence = Sequence([se])
    fr = Dataset()
    fr.FrameOfReferenceUID = series.frame_uid
    fr.RTReferencedStudySequence = Sequence([st])
    ds.ReferencedFrameOfReferenceSequence = Sequence([fr])
    rois, contours, observations = Sequence(), Sequence(), Sequence()
    number = 0
    for value, name in sorted(names.items()):
        if value == 0 or not (labels == value).any():
            continue
        number += 1
        r = Dataset()
        r.ROINumber = number
        r.ReferencedFrameOfReferenceUID = series.frame_uid
        r.ROIName = name
        r.ROIGenerationAlgorithm = "AUTOMATIC"
        r.ROIGenerationDescription = description
        rois.append(r)
        rc = Dataset()
        rc.ReferencedROINumber = number
        rc.ROIDisplayColor = list(PALETTE[(number - 1) % len(PALETTE)])
        cs = Sequence()
        for k, h in enumerate(series.headers):
            mask = labels[k] == value
            if not mask.any():
                continue
            ipp = np.asarray(h.ImagePositionPatient, dtype=float)
            a = series.affine_lps
            for poly in _slice_contours(mask):
                pts = ipp + poly[:, 1:2] * a[:3, 0] + poly[:, 0:1] * a[:3, 1]
                c = Dataset()
                img = Dataset()
                img.ReferencedSOPClassUID = str(h.get("SOPClassUID", CT_IMAGE_STORAGE))
                img.ReferencedSOPInstanceUID = str(h.SOPInstanceUID)
                c.ContourImageSequence = Sequence([img])
                c.ContourGeometricType = "CLOSED_PLANAR"
                c.NumberOfContourPoints = len(pts)
                c.ContourNumber = len(cs) + 1
                c.ContourData = [f"{v:.3f}" for v in pts.ravel()]
                cs.append(c)
        rc.ContourSequence = cs
        contours.append(rc)
        o = Dataset()
        o.ObservationNumber = number
        o.ReferencedROINumber = number
        o.ROIObservationLabel = name[:16]
        o.RTROIInterpretedType = "ORGAN"
        o.ROIInterpreter = ""
        observations.append(o)
    ds.StructureSetROISequence = rois
    ds.ROIContourSequence = contours
    ds.RTROIObservationsSequence = observations
    ds.ApprovalStatus = "UNAPPROVED"  # auto-contours: a clinician reviews and approves them in the TPS
    path = Path(path)
    with atomic_path(path, suffix=".dcm") as tmp:
        ds.save_as(tmp, enforce_file_format=True)
    return ds
