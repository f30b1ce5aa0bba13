"""Predicted label maps as a DICOM Segmentation (binary SEG, one segment per organ) for PACS viewers.

Built with highdicom (:class:`highdicom.seg.Segmentation`): the segmentation shares the CT's frame of
reference and references each of its slices; one frame per slice and segment that has any voxel.
Segment property types are SNOMED CT codes looked up by the label name (``left_femur`` -> Femur;
the side stays in the segment label), falling back to "Organ"; the category is "Anatomical
Structure"; algorithm type AUTOMATIC, family "Artificial Intelligence".
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from advseg.errors import InputError
from advseg.io.atomic import atomic_path
from advseg.io.dicom.series import CTSeries

_SIDES = {"left", "right", "l", "r", "lt", "rt"}


def _property_type(name: str):
    words = [w for w in name.replace("-", "_").split("_") if w and w.lower() not in _SIDES]
    for keyword in (
        "".join(w.capitalize() for w in words),
        "".join(w.capitalize() for w in words).rstrip("s"),
    ):
        try:
            return getattr(codes.SCT, keyword)
        except AttributeError:
            continue
    return codes.SCT.Organ


def write_seg(
    path: str | Path,
    labels: np.ndarray,
    names: dict[int, str],
    series: CTSeries,
    software_version: str = "advseg",
) -> Dataset:
    """Write ``labels`` (``(Z, Y, X)`` on the series' volume grid) as a binary DICOM SEG; returns it.

    Segments are numbered 1.. in label order over the labels that have any voxel (DICOM requires
    consecutive segment numbers); each segment's label is the run's label name.
    """
    import highdicom as hd

    labels = np.asarray(labels)
    if labels.shape != series.shape:
        raise InputError(path, f"label map {labels.shape} does not match the series grid {series.shape}")
    if series.grid_positions is not None:  # back onto the original slices
        labels = labels[np.abs(series.positions[:, None] - series.grid_positions[None, :]).argmin(axis=1)]
    present = [v for v in sorted(names) if v != 0 and (labels == v).any()]
    if not present:
        raise InputError(path, "the prediction is empty: no organ to write as a DICOM SEG")
    label_map = np.zeros(labels.shape, dtype=np.uint8)
    algorithm = hd.AlgorithmIdentificationSequence(
        name="advseg", family=codes.cid7162.ArtificialIntelligence, version=software_version
    )
    descriptions = []
    for number, value in enumerate(present, start=1):
        label_map[labels == value] = number
        descriptions.append(
            hd.seg.SegmentDescription(
                segment_number=number,
                segment_label=names[value][:64],
                segmented_property_category=codes.SCT.AnatomicalStructure,
                segmented_property_type=_property_type(names[value]),
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=algorithm,
            )
        )
    with warnings.catch_warnings():  # highdicom's note on a one-part PatientName copied from the CT
        warnings.filterwarnings("ignore", message=".*intended person name.*")
        seg = _segmentation(hd, series, label_map, descriptions, software_version)
    path = Path(path)
    with atomic_path(path, suffix=".dcm") as tmp:
        seg.save_as(tmp)
    return seg


def _segmentation(hd, series: CTSeries, label_map: np.ndarray, descriptions: list, software_version: str):
    return hd.seg.Segmentation(
        source_images=series.headers,
        pixel_array=label_map,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=generate_uid(),
        series_number=9002,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="advseg",
        manufacturer_model_name="advseg",
        software_versions=software_version,
        device_serial_number="0",
        series_description="advseg auto-segmentation",
    )
