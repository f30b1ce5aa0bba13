"""From the TPS and back: ``advseg import-dicom`` and ``advseg predict --rtstruct/--dicom-seg`` on DICOM
series, checked by dciodvfy and plastimatch; the real TotalSegmentator CT through DICOM."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from typer.testing import CliRunner

from advseg.cli.main import app
from advseg.data.phantom import LABELS
from advseg.io import Volume, read_volume
from advseg.io.dicom.ctwrite import write_ct_series
from advseg.io.dicom.rtstruct import write_rtstruct
from advseg.io.dicom.series import read_series_folder
from conftest import SHARED_DATA
from dicom_testing import PhantomCT, dsc, needs, run_tool

runner = CliRunner()


def _lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.strip()]


def test_import_dicom_command(phantom_series: Path, phantom_ct: PhantomCT, tmp_path: Path) -> None:
    root = tmp_path / "export"
    shutil.copytree(phantom_series, root / "CT")
    series = read_series_folder(root / "CT")[0]
    write_rtstruct(root / "RS.dcm", phantom_ct.label, {1: "Prostate", 2: "Blase", 3: "Rectum"}, series)
    res = runner.invoke(
        app,
        [
            "import-dicom",
            str(root),
            str(tmp_path / "ds"),
            "--structures",
            "Prostate=prostate,Blase=bladder,Rectum=rectum",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "1 labeled and 0 unlabeled" in res.output and "2 bladder" in res.output
    res = runner.invoke(app, ["validate", str(tmp_path / "ds")])
    assert res.exit_code == 0, res.output


def test_import_dicom_bad_input_is_one_line_exit_2_nothing_written(
    phantom_series: Path, tmp_path: Path
) -> None:
    root = tmp_path / "export"
    shutil.copytree(phantom_series, root / "CT")
    (root / "CT" / "CT_0004.dcm").unlink()
    res = runner.invoke(app, ["import-dicom", str(root), str(tmp_path / "ds")])
    assert res.exit_code == 2
    lines = _lines(res.output)
    assert len(lines) == 1 and lines[0].startswith("error: ") and "CT_0003.dcm" in lines[0]
    assert "missing slice" in lines[0] and "Traceback" not in res.output
    assert not (tmp_path / "ds").exists()


@pytest.fixture(scope="module")
def dicom_run(tiny_phantom: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A supervised tiny S-net trained long enough (200 iterations, ~10 s) to predict several organs
    (not well: the tests compare the RTSTRUCT with the prediction, not with the truth)."""
    from advseg.config import apply_overrides, load_preset
    from advseg.training.api import train_run

    out = tmp_path_factory.mktemp("dicom_run") / "run"
    cfg = apply_overrides(
        load_preset("res_unet+tiny"),
        ["train.iterations=200", "train.val_every=0", "train.checkpoint_every=200"],
    )
    train_run(cfg, tiny_phantom, out, progress=False)
    return out


def _predict_rtstruct(run: Path, series_dir: Path, out: Path, *extra: str):
    return runner.invoke(app, ["predict", str(run), str(series_dir), str(out), "--rtstruct", *extra])


def test_predict_writes_rtstruct_and_seg_that_reference_the_series(
    dicom_run: Path, phantom_series: Path, tmp_path: Path
) -> None:
    out = tmp_path / "pred"
    res = _predict_rtstruct(dicom_run, phantom_series, out, "--dicom-seg")
    assert res.exit_code == 0, res.output
    series = read_series_folder(phantom_series)[0]
    labels = read_volume(out / "case_000.nii.gz")
    np.testing.assert_allclose(labels.affine, series.affine, atol=1e-6)
    rs = pydicom.dcmread(out / "case_000_RTSTRUCT.dcm")
    ref = rs.ReferencedFrameOfReferenceSequence[0]
    assert rs.StudyInstanceUID == series.study_uid and ref.FrameOfReferenceUID == series.frame_uid
    se = ref.RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
    assert se.SeriesInstanceUID == series.series_uid
    assert [i.ReferencedSOPInstanceUID for i in se.ContourImageSequence] == series.sop_uids
    present = [int(v) for v in np.unique(labels.array) if v]
    assert len(present) >= 2
    assert [r.ROIName for r in rs.StructureSetROISequence] == [LABELS[v] for v in present]
    assert {o.RTROIInterpretedType for o in rs.RTROIObservationsSequence} == {"ORGAN"}
    seg = pydicom.dcmread(out / "case_000_SEG.dcm")
    assert seg.Modality == "SEG" and seg.FrameOfReferenceUID == series.frame_uid
    index = json.loads((out / "dicom_index.json").read_text())
    assert index["case_000"]["RTSTRUCT"]["SOPInstanceUID"] == rs.SOPInstanceUID
    assert index["case_000"]["SeriesInstanceUID"] == series.series_uid


def test_predicted_rtstruct_passes_dciodvfy_and_plastimatch_rasterises_it_back(
    dicom_run: Path, phantom_series: Path, tmp_path: Path
) -> None:
    dciodvfy, plastimatch = needs("dciodvfy"), needs("plastimatch")
    out = tmp_path / "pred"
    res = _predict_rtstruct(dicom_run, phantom_series, out)
    assert res.exit_code == 0, res.output
    report = run_tool(dciodvfy, out / "case_000_RTSTRUCT.dcm")
    assert [line for line in (report.stdout + report.stderr).splitlines() if line.startswith("Error")] == []
    run_tool(
        plastimatch,
        "convert",
        "--input",
        out / "case_000_RTSTRUCT.dcm",
        "--referenced-ct",
        phantom_series,
        "--output-prefix",
        tmp_path / "back",
        "--prefix-format",
        "nii.gz",
    )
    labels = read_volume(out / "case_000.nii.gz").array
    rs = pydicom.dcmread(out / "case_000_RTSTRUCT.dcm")
    names = [r.ROIName for r in rs.StructureSetROISequence]
    assert len(names) >= 2, "the tiny model predicted too little to check"
    values = [int(v) for v in np.unique(labels) if v]
    for value, name in zip(values, names, strict=True):
        back = np.asarray(nib.load(tmp_path / "back" / f"{name}.nii.gz").dataobj).transpose(2, 1, 0) > 0
        assert dsc(back, labels == value) > 0.95, name


def test_an_empty_prediction_warns_and_writes_no_rtstruct(
    tiny_run: Path, phantom_series: Path, tmp_path: Path
) -> None:
    res = _predict_rtstruct(
        tiny_run, phantom_series, tmp_path / "pred", "--dicom-seg"
    )  # 4 iterations: nothing
    assert res.exit_code == 0, res.output
    if read_volume(tmp_path / "pred" / "case_000.nii.gz").array.any():
        pytest.skip("the 4-iteration run predicted an organ here; nothing to check")
    assert "warning: case_000" in res.output and "no organ predicted" in res.output
    assert not list((tmp_path / "pred").glob("*.dcm"))


def test_rtstruct_needs_dicom_input(tiny_run: Path, phantom_ct: PhantomCT, tmp_path: Path) -> None:
    res = _predict_rtstruct(tiny_run, phantom_ct.nifti, tmp_path / "out.nii.gz")
    assert res.exit_code == 2 and "--rtstruct needs a folder of DICOM CT series" in res.output
    assert not (tmp_path / "out.nii.gz").exists()


def test_predict_refuses_a_bad_series_before_writing(
    tiny_run: Path, phantom_series: Path, tmp_path: Path
) -> None:
    root = tmp_path / "in"
    shutil.copytree(phantom_series, root)
    ds = pydicom.dcmread(root / "CT_0006.dcm")
    ds.ImagePositionPatient = [float(ds.ImagePositionPatient[0]) + 5, *ds.ImagePositionPatient[1:]]
    ds.save_as(root / "CT_0006.dcm")
    res = _predict_rtstruct(tiny_run, root, tmp_path / "pred")
    assert res.exit_code == 2 and _lines(res.output)[0].startswith("error: ") and "CT_0006.dcm" in res.output
    assert not (tmp_path / "pred").exists()


def test_totalsegmentator_ct_through_dicom_to_rtstruct(dicom_run: Path, tmp_path: Path) -> None:
    """The real CT: NIfTI -> DICOM series -> ``advseg predict --rtstruct`` -> an RTSTRUCT that
    references that series and opens with pydicom."""
    ct = SHARED_DATA / "totalsegmentator-example" / "example_ct_sm.nii.gz"
    if not ct.exists():
        pytest.skip("../shared/data/totalsegmentator-example not present")
    vol = read_volume(ct)
    write_ct_series(tmp_path / "series", Volume(vol.array, vol.affine))
    back = read_volume(tmp_path / "series")
    np.testing.assert_array_equal(back.array, vol.array)
    np.testing.assert_allclose(back.affine, vol.affine, atol=1e-3)
    res = _predict_rtstruct(dicom_run, tmp_path / "series", tmp_path / "pred")
    assert res.exit_code == 0, res.output
    rs = pydicom.dcmread(tmp_path / "pred" / "case_000_RTSTRUCT.dcm")
    series = read_series_folder(tmp_path / "series")[0]
    se = rs.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
    assert se.SeriesInstanceUID == series.series_uid and rs.StudyInstanceUID == series.study_uid
    assert len(se.ContourImageSequence) == vol.shape[0]
    uids = set(series.sop_uids)
    for rc in rs.ROIContourSequence:
        for c in rc.get("ContourSequence", []):
            assert c.ContourImageSequence[0].ReferencedSOPInstanceUID in uids


def test_one_rtstruct_per_series_of_a_mixed_folder(
    dicom_run: Path, phantom_series: Path, phantom_ct: PhantomCT, tmp_path: Path
) -> None:
    root = tmp_path / "in"
    shutil.copytree(phantom_series, root / "a")
    write_ct_series(root / "b", Volume(phantom_ct.image[:, :, ::-1].copy(), phantom_ct.affine))
    (root / "b" / "README").write_text("not DICOM")
    out = tmp_path / "pred"
    res = _predict_rtstruct(dicom_run, root, out)
    assert res.exit_code == 0, res.output
    assert "README: not a DICOM file; skipped" in res.output
    for name, folder in (("case_000", root / "a"), ("case_001", root / "b")):
        series = read_series_folder(folder)[0]
        rs = pydicom.dcmread(out / f"{name}_RTSTRUCT.dcm")
        se = (
            rs.ReferencedFrameOfReferenceSequence[0]
            .RTReferencedStudySequence[0]
            .RTReferencedSeriesSequence[0]
        )
        assert se.SeriesInstanceUID == series.series_uid
    # a second run into the same folder is allowed (its own outputs); a foreign file is not
    (out / "mine.txt").write_text("keep")
    res = _predict_rtstruct(dicom_run, root, out)
    assert res.exit_code == 2 and "mine.txt" in res.output
    assert (out / "mine.txt").read_text() == "keep"
