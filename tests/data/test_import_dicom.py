"""import-dicom: TPS-style exports (CT series + RTSTRUCT) -> MSD dataset; plastimatch's DICOM as an
independent source; bad input stops the import before anything is written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest

from advseg.data.dataset import load_dataset
from advseg.data.import_dicom import import_dicom
from advseg.data.phantom import LABELS
from advseg.errors import InputError
from advseg.io import Volume, read_volume
from advseg.io.dicom.ctwrite import write_ct_series
from advseg.io.dicom.rtstruct import write_rtstruct
from advseg.io.dicom.series import read_series_folder
from dicom_testing import PhantomCT, dsc, make_phantom, needs, run_tool

# How a TPS might name the phantom's organs.
TPS_NAMES = {0: "background", 1: "PROSTATE", 2: "Bladder", 3: "Rectum", 4: "Femur_L", 5: "FemoralHead_Rt"}


@pytest.fixture
def export(phantom_series: Path, phantom_ct: PhantomCT, tmp_path: Path) -> Path:
    """A TPS-like export: patient folder with the CT series, its RTSTRUCT, a second CT series
    without structures, and a stray non-DICOM file."""
    root = tmp_path / "export"
    shutil.copytree(phantom_series, root / "PAT001" / "CT")
    series = read_series_folder(root / "PAT001" / "CT")[0]
    write_rtstruct(root / "PAT001" / "RS.dcm", phantom_ct.label, TPS_NAMES, series)
    write_ct_series(
        root / "PAT002" / "CT",
        Volume(phantom_ct.image[:, ::-1].copy(), phantom_ct.affine),
        patient_id="PAT002",
    )
    (root / "PAT001" / "notes.txt").write_text("exported 2024")
    return root


def test_import_writes_an_msd_dataset_with_labels_and_an_unlabeled_pool(
    export: Path, phantom_ct: PhantomCT, tmp_path: Path
) -> None:
    out = tmp_path / "ds"
    result = import_dicom(export, out)
    assert any("notes.txt: not a DICOM file" in w for w in result.warnings)
    index = load_dataset(out)
    assert [c.name for c in index.training] == ["case_000"]  # cases in folder order: PAT001 first
    assert [c.name for c in index.unlabeled] == ["case_001"]
    assert index.labels == LABELS
    case = index.training[0]
    img, lab = read_volume(case.images[0]), read_volume(case.label)
    np.testing.assert_array_equal(img.array, phantom_ct.image)
    np.testing.assert_allclose(img.affine, phantom_ct.affine, atol=1e-3)
    np.testing.assert_array_equal(lab.array, phantom_ct.label)  # synonyms found every organ
    meta = json.loads((out / "dicom_index.json").read_text())
    entry = meta[case.name]
    assert (
        entry["SeriesInstanceUID"]
        == pydicom.dcmread(export / "PAT001" / "CT" / "CT_0000.dcm").SeriesInstanceUID
    )
    assert entry["RTSTRUCT"]["SOPInstanceUID"] == pydicom.dcmread(export / "PAT001" / "RS.dcm").SOPInstanceUID
    assert entry["RTSTRUCT"]["rois"]["left_femur"] == ["Femur_L"]
    assert "PAT001" not in (out / "dicom_index.json").read_text()  # no patient identifier by default
    assert all("PAT" not in p.name for p in out.rglob("*"))


def test_structures_choose_and_order_the_labels_and_patient_id_is_kept_on_request(
    export: Path, phantom_ct: PhantomCT, tmp_path: Path
) -> None:
    out = tmp_path / "ds"
    result = import_dicom(export, out, structures="Bladder=bladder,PROSTATE=prostate", keep_patient_id=True)
    assert result.labels == {0: "background", 1: "bladder", 2: "prostate"}
    assert any("not imported" in w and "Rectum" in w for w in result.warnings)
    assert result.labeled == ["PAT001_000"] and result.unlabeled == ["PAT002_001"]
    lab = read_volume(out / "labelsTr" / f"{result.labeled[0]}.nii.gz").array
    np.testing.assert_array_equal(lab == 1, phantom_ct.label == 2)
    np.testing.assert_array_equal(lab == 2, phantom_ct.label == 1)
    entry = json.loads((out / "dicom_index.json").read_text())[result.labeled[0]]
    assert entry["PatientID"] == "PAT001" and entry["RTSTRUCT"]["source"] == "PAT001/RS.dcm"


def test_plastimatch_ct_and_rtstruct_import_with_the_phantom_geometry(tmp_path: Path) -> None:
    """Independent source: plastimatch writes the CT series and the RTSTRUCT (keyholed contours)."""
    tool = needs("plastimatch")
    ph = make_phantom(tmp_path / "phantom", seed=4)
    run_tool(tool, "convert", "--input", ph.nifti, "--output-dicom", tmp_path / "export" / "ct")
    run_tool(
        tool,
        "convert",
        "--input-prefix",
        ph.masks,
        "--referenced-ct",
        tmp_path / "export" / "ct",
        "--output-dicom",
        tmp_path / "export" / "rs",
    )
    result = import_dicom(tmp_path / "export", tmp_path / "ds")
    assert len(result.labeled) == 1 and not result.unlabeled
    img = read_volume(tmp_path / "ds" / "imagesTr" / "case_000.nii.gz")
    lab = read_volume(tmp_path / "ds" / "labelsTr" / "case_000.nii.gz")
    assert img.shape == lab.shape == ph.label.shape
    np.testing.assert_allclose(img.affine, ph.affine, atol=1e-3)
    np.testing.assert_allclose(lab.affine, ph.affine, atol=1e-3)
    np.testing.assert_array_equal(img.array, ph.image)
    for k, name in LABELS.items():
        if k:
            assert dsc(lab.array == k, ph.label == k) > 0.95, name


# ---- bad input: one error naming the file, nothing written ----------------------------------


def _refuses(export: Path, out: Path, match: str, **kw) -> InputError:
    with pytest.raises(InputError, match=match) as exc:
        import_dicom(export, out, **kw)
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")]
    return exc.value


def test_rtstruct_of_an_absent_series_is_an_error(export: Path, tmp_path: Path) -> None:
    rs = export / "PAT001" / "RS.dcm"
    ds = pydicom.dcmread(rs)
    ds.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0].RTReferencedSeriesSequence[
        0
    ].SeriesInstanceUID = "1.2.3.999"
    ds.save_as(rs)
    err = _refuses(export, tmp_path / "ds", "references CT series 1.2.3.999, which is not in")
    assert err.path == str(rs)


def test_rtstruct_referencing_absent_slices_is_an_error(export: Path, tmp_path: Path) -> None:
    (export / "PAT001" / "CT" / "CT_0015.dcm").unlink()  # the top slice: the series stays regular
    _refuses(export, tmp_path / "ds", r"RS.dcm: references 1 slice\(s\) that series")


def test_unknown_roi_name_is_an_error(export: Path, tmp_path: Path) -> None:
    err = _refuses(export, tmp_path / "ds", "no ROI for 'spleen'", structures="Spleen=spleen")
    assert "PROSTATE" in err.problem and err.path.endswith("RS.dcm")


def test_empty_structure_is_an_error_and_an_empty_contour_a_warning(export: Path, tmp_path: Path) -> None:
    rs = export / "PAT001" / "RS.dcm"
    ds = pydicom.dcmread(rs)
    ds.ROIContourSequence[0].ContourSequence[0].ContourData = []  # prostate: one empty contour
    ds.ROIContourSequence[0].ContourSequence[0].NumberOfContourPoints = 0
    ds.save_as(rs)
    result = import_dicom(export, tmp_path / "ds1")
    assert any("ROI 'PROSTATE': 1 empty contour" in w for w in result.warnings)
    for c in ds.ROIContourSequence[1].ContourSequence:  # bladder: every contour empty
        c.ContourData = []
    ds.save_as(rs)
    _refuses(export, tmp_path / "ds2", "ROI 'Bladder' has no closed contour")


def test_missing_slice_is_an_error_unless_resampled(export: Path, tmp_path: Path) -> None:
    (export / "PAT002" / "CT" / "CT_0007.dcm").unlink()
    _refuses(export, tmp_path / "ds", "missing slice")
    result = import_dicom(export, tmp_path / "ds", resample=True)
    assert any("resampled" in w for w in result.warnings)
    assert read_volume(tmp_path / "ds" / "imagesUnlabeled" / f"{result.unlabeled[0]}.nii.gz").shape[0] == 16


def test_output_inside_the_input_or_not_empty_is_refused(export: Path, tmp_path: Path) -> None:
    _refuses(export, export / "ds", "output lies inside the input")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("keep me")
    with pytest.raises(InputError, match="not an empty folder"):
        import_dicom(export, tmp_path / "full")
    assert (tmp_path / "full" / "x").read_text() == "keep me"


def test_rtstruct_without_a_series_reference_pairs_by_frame_of_reference(
    export: Path, phantom_ct: PhantomCT, tmp_path: Path
) -> None:
    rs = export / "PAT001" / "RS.dcm"
    ds = pydicom.dcmread(rs)
    del ds.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence
    ds.save_as(rs)
    result = import_dicom(export, tmp_path / "ds")
    assert result.labeled == ["case_000"]
    np.testing.assert_array_equal(read_volume(tmp_path / "ds" / "labelsTr" / "case_000.nii.gz").array,
                                  phantom_ct.label)


def test_a_truncated_file_is_a_warning(export: Path, tmp_path: Path) -> None:
    data = (export / "PAT002" / "CT" / "CT_0000.dcm").read_bytes()
    (export / "PAT002" / "broken.dcm").write_bytes(data[:300])
    result = import_dicom(export, tmp_path / "ds")
    assert any("broken.dcm" in w and "skipped" in w for w in result.warnings)
