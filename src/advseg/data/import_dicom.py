"""``advseg import-dicom``: a TPS export (CT series + RTSTRUCTs, any folder tree) -> an MSD dataset.

::

    OUT/dataset.json            labels 0 background, 1.. the structures in the order given
    OUT/imagesTr/case_000.nii.gz   OUT/labelsTr/case_000.nii.gz      CT series with an RTSTRUCT
    OUT/imagesUnlabeled/case_001.nii.gz                               CT series without one
    OUT/dicom_index.json        case -> Study/Series/FrameOfReference UIDs, RTSTRUCT SOPInstanceUID,
                                which ROI became which label

Every series and RTSTRUCT is checked (geometry, references, ROI names) before any file is written,
and the dataset is assembled beside ``OUT`` and renamed into place, so an error leaves nothing.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from advseg.errors import InputError
from advseg.io import Volume, write_volume
from advseg.io.atomic import atomic_dir
from advseg.io.dicom.names import load_synonyms, match_rois, parse_structures
from advseg.io.dicom.rtstruct import StructureSet, rasterise_roi, read_rtstruct
from advseg.io.dicom.series import CTSeries, build_series, scan_folder, series_order
from advseg.io.guard import refuse_overlap

# Without --structures: advseg's pelvic organs (the phantom's classes), found through the synonyms.
DEFAULT_STRUCTURES = ("prostate", "bladder", "rectum", "left_femur", "right_femur")


@dataclass
class ImportResult:
    out: Path
    labeled: list[str] = field(default_factory=list)
    unlabeled: list[str] = field(default_factory=list)
    labels: dict[int, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def _check_out(root: Path, out: Path, synonyms: str | Path | None) -> None:
    refuse_overlap([out], [root, synonyms])  # before anything is read
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(out, "output exists and is not an empty folder (nothing is overwritten)")


def match_structure_sets(
    structure_sets: list[StructureSet], series: dict[str, CTSeries]
) -> dict[str, StructureSet]:
    """``{SeriesInstanceUID: its RTSTRUCT}``: by the referenced series (RTReferencedSeriesSequence), or,
    if the RTSTRUCT names none, the one series of its FrameOfReferenceUID; checks that every slice
    it references (ContourImageSequence) is in that series."""
    out: dict[str, StructureSet] = {}
    for ss in structure_sets:
        uids = [u for u in dict.fromkeys(ss.series_uids) if u]
        if uids:
            present = [u for u in uids if u in series]
            if not present:
                raise InputError(ss.path, f"references CT series {uids[0]}, which is not in the DICOM folder")
            if len(present) > 1:
                raise InputError(
                    ss.path, f"references {len(present)} CT series; advseg reads one per RTSTRUCT"
                )
            uid = present[0]
        else:
            by_frame = [u for u, s in series.items() if s.frame_uid in ss.frame_uids]
            if len(by_frame) != 1:
                what = "no CT series" if not by_frame else f"{len(by_frame)} CT series"
                raise InputError(ss.path, f"names no series, and {what} share its FrameOfReferenceUID")
            uid = by_frame[0]
        s = series[uid]
        if ss.frame_uids and s.frame_uid not in ss.frame_uids:
            raise InputError(ss.path, f"FrameOfReferenceUID differs from that of its series {uid}")
        missing = sorted(set(ss.image_uids) - set(s.sop_uids))
        if missing:
            raise InputError(
                ss.path,
                f"references {len(missing)} slice(s) that series {uid} does not hold "
                f"(e.g. {missing[0]}): the export is incomplete",
            )
        if uid in out:
            raise InputError(
                ss.path,
                f"a second RTSTRUCT for series {uid} (the other: {out[uid].path}); keep "
                "one structure set per series",
            )
        out[uid] = ss
    return out


def _case_names(series: list[CTSeries], keep_patient_id: bool) -> list[str]:
    if not keep_patient_id:
        return [f"case_{i:03d}" for i in range(len(series))]
    names = []
    for i, s in enumerate(series):
        pid = re.sub(r"[^A-Za-z0-9_-]+", "_", str(s.headers[0].get("PatientID", "")).strip()) or "nopid"
        names.append(f"{pid}_{i:03d}")
    return names


def import_dicom(
    root: str | Path,
    out: str | Path,
    structures: str | None = None,
    synonyms: str | Path | None = None,
    keep_patient_id: bool = False,
    resample: bool = False,
) -> ImportResult:
    """Convert a DICOM folder tree into an MSD dataset (see the module docstring).

    Args:
        root: folder tree holding CT slices and RTSTRUCT files (any layout, any file names).
        out: dataset folder to create (must not exist, or be empty).
        structures: ``"ROI=label,..."`` (see :func:`advseg.io.dicom.names.parse_structures`);
            None: :data:`DEFAULT_STRUCTURES`. Labels are numbered 1.. in this order.
        synonyms: a YAML/JSON file ``{label: [ROI names]}`` that extends the built-in table.
        keep_patient_id: case names ``<PatientID>_000`` instead of ``case_000``, and source paths
            in ``dicom_index.json``; off by default so the dataset carries no patient identifier
            in its names.
        resample: interpolate series with a missing slice or uneven spacing onto a regular grid
            (with a warning) instead of refusing them.

    Raises:
        InputError naming the file: see :func:`advseg.io.dicom.series.build_series`,
        :func:`match_structure_sets`, :func:`advseg.io.dicom.rtstruct.rasterise_roi`; a wanted
        structure that an RTSTRUCT has no ROI for.
    """
    root, out = Path(root), Path(out)
    _check_out(root, out, synonyms)
    wanted = parse_structures(structures, DEFAULT_STRUCTURES)
    table = load_synonyms(synonyms)
    labels = {0: "background", **{i + 1: name for i, name in enumerate(wanted)}}
    result = ImportResult(out, labels=labels)
    scan = scan_folder(root)
    result.warnings += scan.warnings
    if not scan.ct:
        raise InputError(root, "no DICOM CT series in this folder tree (only RTSTRUCTs)")
    series = {uid: build_series(scan.ct[uid], resample=resample) for uid in series_order(scan)}
    for s in series.values():
        result.warnings += s.warnings
    structure_sets = [read_rtstruct(f.path, f.ds) for f in scan.rtstructs]
    by_series = match_structure_sets(structure_sets, series)
    ordered = list(series.values())
    names = _case_names(ordered, keep_patient_id)

    # Rasterise every RTSTRUCT first: an unknown ROI or bad contour stops the import before any write.
    label_maps: dict[str, np.ndarray] = {}
    roi_map: dict[str, dict[str, list[str]]] = {}
    for name, s in zip(names, ordered, strict=True):
        ss = by_series.get(s.series_uid)
        if ss is None:
            continue
        matched = match_rois([r.name for r in ss.rois], wanted, table)
        absent = [label for label, rois in matched.items() if not rois]
        if absent:
            raise InputError(
                ss.path,
                f"no ROI for '{absent[0]}' (ROIs: {', '.join(r.name for r in ss.rois)}); "
                f'name it with --structures "<ROI>={absent[0]}" or add it to a '
                "--synonyms file",
            )
        used = {r for rois in matched.values() for r in rois}
        unused = [r.name for r in ss.rois if r.name not in used]
        if unused:
            result.warnings.append(
                f"{ss.path}: ROI(s) not imported (not in --structures): {', '.join(unused)}"
            )
        lab = np.zeros(s.shape, dtype=np.uint8)
        for value, label in labels.items():
            if value == 0:
                continue
            mask = np.zeros(s.shape, dtype=bool)
            for roi_name in matched[label]:
                mask |= rasterise_roi(ss.roi(roi_name), s, ss.path, result.warnings)
            overlap = mask & (lab > 0)
            if overlap.any():
                others = sorted({labels[int(v)] for v in np.unique(lab[overlap])})
                result.warnings.append(
                    f"{ss.path}: {int(overlap.sum())} voxel(s) of '{label}' also in "
                    f"{', '.join(others)}; they are labelled '{label}'"
                )
            lab[mask] = value
        label_maps[name] = lab
        roi_map[name] = matched

    with atomic_dir(out) as tmp:
        training, unlabeled, index = [], [], {}
        for name, s in zip(names, ordered, strict=True):
            vol = s.read()
            entry: dict[str, Any] = dict(s.index())
            if name in label_maps:
                write_volume(tmp / "imagesTr" / f"{name}.nii.gz", Volume(vol.array, vol.affine))
                write_volume(
                    tmp / "labelsTr" / f"{name}.nii.gz", Volume(label_maps[name], vol.affine), np.uint8
                )
                training.append({"image": f"./imagesTr/{name}.nii.gz", "label": f"./labelsTr/{name}.nii.gz"})
                ss = by_series[s.series_uid]
                entry["RTSTRUCT"] = {"SOPInstanceUID": ss.sop_uid, "rois": roi_map[name]}
                result.labeled.append(name)
            else:
                write_volume(tmp / "imagesUnlabeled" / f"{name}.nii.gz", Volume(vol.array, vol.affine))
                unlabeled.append(f"./imagesUnlabeled/{name}.nii.gz")
                result.unlabeled.append(name)
            if keep_patient_id:
                entry["PatientID"] = str(s.headers[0].get("PatientID", ""))
                entry["source"] = [str(p.relative_to(root)) for p in s.files]
                if name in label_maps:
                    entry["RTSTRUCT"]["source"] = str(by_series[s.series_uid].path.relative_to(root))
            index[name] = entry
        if not training:
            result.warnings.append(f"{root}: no RTSTRUCT references any CT series; every case is unlabeled")
        meta = {
            "name": out.name,
            "description": f"imported from DICOM by advseg import-dicom ({len(training)} labeled, "
            f"{len(unlabeled)} unlabeled CT series)",
            "tensorImageSize": "3D",
            "modality": {"0": "CT"},
            "labels": {str(k): v for k, v in labels.items()},
            "numTraining": len(training),
            "numTest": 0,
            "numUnlabeled": len(unlabeled),
            "training": training,
            "test": [],
            "unlabeled": unlabeled,
        }
        (tmp / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n")
        (tmp / "dicom_index.json").write_text(json.dumps(index, indent=2) + "\n")
    return result
