"""RTSTRUCT: even-odd rasterisation (holes, keyholes, several contours a slice), writing, and the
independent checks (dciodvfy, plastimatch re-rasterisation)."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pydicom
import pytest

from advseg.data.phantom import LABELS
from advseg.errors import InputError
from advseg.io.dicom.rtstruct import Contour, Roi, rasterise_roi, read_rtstruct, write_rtstruct
from advseg.io.dicom.series import read_series_folder
from dicom_testing import PhantomCT, dsc, needs, run_tool


@pytest.fixture(scope="module")
def series(phantom_series):
    return read_series_folder(phantom_series)[0]


def _contour(series, k: int, rc: list[tuple[float, float]]) -> Contour:
    """A CLOSED_PLANAR contour on slice ``k`` through (row, column) pixel coordinates."""
    a = series.affine_lps
    pts = np.array([a[:3, 3] + c * a[:3, 0] + r * a[:3, 1] + k * a[:3, 2] for r, c in rc])
    return Contour(pts, "CLOSED_PLANAR", [series.sop_uids[k]])


def _square(r0, c0, r1, c1):
    return [(r0, c0), (r0, c1), (r1, c1), (r1, c0)]


def test_nested_contours_make_a_hole_and_islands_add(series) -> None:
    roi = Roi(
        1,
        "ring",
        series.frame_uid,
        [
            _contour(series, 3, _square(9.5, 9.5, 30.5, 30.5)),  # outer 21 x 21 pixels (10..30)
            _contour(series, 3, _square(14.5, 14.5, 25.5, 25.5)),  # inner 11 x 11: a hole
            _contour(series, 3, _square(39.5, 39.5, 44.5, 44.5)),  # a separate island, 5 x 5
        ],
    )
    mask = rasterise_roi(roi, series, "rs.dcm", [])
    expected = np.zeros(series.shape, bool)
    expected[3, 10:31, 10:31] = True
    expected[3, 15:26, 15:26] = False
    expected[3, 40:45, 40:45] = True
    np.testing.assert_array_equal(mask, expected)


def test_keyhole_contour_leaves_its_hole_empty(series) -> None:
    # One polygon: outer square clockwise, a zero-width cut in at row 20, the hole anticlockwise, out.
    outer = [(20, 9.5), (9.5, 9.5), (9.5, 30.5), (30.5, 30.5), (30.5, 9.5), (20, 9.5)]
    inner = [(20, 14.5), (25.5, 14.5), (25.5, 25.5), (14.5, 25.5), (14.5, 14.5), (20, 14.5)]
    roi = Roi(1, "keyhole", series.frame_uid, [_contour(series, 5, outer + inner)])
    mask = rasterise_roi(roi, series, "rs.dcm", [])
    assert mask[5, 12, 12] and mask[5, 28, 28] and mask[5, 20, 11]
    assert not mask[5, 15:26, 15:26].any()  # the hole
    assert mask[5].sum() == 21 * 21 - 11 * 11


def test_empty_and_open_contours_warn_and_an_empty_roi_is_an_error(series) -> None:
    empty = Contour(np.zeros((0, 3)), "CLOSED_PLANAR", [])
    line = _contour(series, 2, [(1, 1), (5, 5), (1, 9)])
    line.geometric_type = "OPEN_PLANAR"
    warnings: list[str] = []
    good = _contour(series, 2, _square(9.5, 9.5, 12.5, 12.5))
    mask = rasterise_roi(Roi(1, "x", series.frame_uid, [empty, line, good]), series, "rs.dcm", warnings)
    assert mask.sum() == 9
    assert any("1 empty contour" in w for w in warnings) and any("1 not closed" in w for w in warnings)
    with pytest.raises(InputError, match="rs.dcm: ROI 'x' has no closed contour"):
        rasterise_roi(Roi(1, "x", series.frame_uid, [empty]), series, "rs.dcm", [])


def test_contour_between_slices_or_on_an_absent_slice_is_an_error(series) -> None:
    c = _contour(series, 2, _square(9.5, 9.5, 12.5, 12.5))
    c.points = c.points + 0.5 * series.affine_lps[:3, 2]  # half a slice off
    with pytest.raises(InputError, match="lies between slices"):
        rasterise_roi(Roi(1, "x", series.frame_uid, [c]), series, "rs.dcm", [])
    c = _contour(series, 2, _square(9.5, 9.5, 12.5, 12.5))
    c.image_uids = ["1.2.3.4"]
    with pytest.raises(InputError, match="references slice 1.2.3.4, which is not in series"):
        rasterise_roi(Roi(1, "x", series.frame_uid, [c]), series, "rs.dcm", [])


def test_written_rtstruct_reads_back_to_the_same_masks(series, phantom_ct: PhantomCT, tmp_path) -> None:
    path = tmp_path / "RS.dcm"
    write_rtstruct(path, phantom_ct.label, LABELS, series)
    ds = pydicom.dcmread(path)
    assert ds.Modality == "RTSTRUCT" and ds.StudyInstanceUID == series.study_uid
    assert ds.SOPInstanceUID not in series.sop_uids and ds.SeriesInstanceUID != series.series_uid
    ref = ds.ReferencedFrameOfReferenceSequence[0]
    assert ref.FrameOfReferenceUID == series.frame_uid
    se = ref.RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
    assert se.SeriesInstanceUID == series.series_uid
    assert [i.ReferencedSOPInstanceUID for i in se.ContourImageSequence] == series.sop_uids  # one per slice
    assert [r.ROIName for r in ds.StructureSetROISequence] == [LABELS[k] for k in range(1, 6)]
    assert {o.RTROIInterpretedType for o in ds.RTROIObservationsSequence} == {"ORGAN"}
    colours = [tuple(int(v) for v in rc.ROIDisplayColor) for rc in ds.ROIContourSequence]
    assert len(set(colours)) == len(colours)
    ss = read_rtstruct(path)
    for k, name in LABELS.items():
        if k:
            mask = rasterise_roi(ss.roi(name), series, path, [])
            np.testing.assert_array_equal(mask, phantom_ct.label == k)


def test_a_hole_in_a_prediction_survives_the_round_trip(series, tmp_path) -> None:
    labels = np.zeros(series.shape, np.uint8)
    labels[4, 10:31, 10:31] = 1
    labels[4, 15:26, 15:26] = 0
    labels[4, 40:45, 40:45] = 1
    labels[4, 50, 50] = 1  # a single voxel
    write_rtstruct(tmp_path / "RS.dcm", labels, {0: "background", 1: "organ", 2: "absent"}, series)
    ss = read_rtstruct(tmp_path / "RS.dcm")
    assert [r.name for r in ss.rois] == ["organ"]  # an empty organ is not written
    np.testing.assert_array_equal(rasterise_roi(ss.rois[0], series, "RS.dcm", []), labels == 1)


def test_rtstruct_passes_dciodvfy(series, phantom_ct: PhantomCT, tmp_path) -> None:
    tool = needs("dciodvfy")
    write_rtstruct(tmp_path / "RS.dcm", phantom_ct.label, LABELS, series)
    res = run_tool(tool, tmp_path / "RS.dcm")
    report = res.stdout + res.stderr
    assert "RTStructureSet" in report
    assert [line for line in report.splitlines() if line.startswith("Error")] == []


def test_plastimatch_rasterises_our_rtstruct_back(
    phantom_series, series, phantom_ct: PhantomCT, tmp_path
) -> None:
    tool = needs("plastimatch")
    write_rtstruct(tmp_path / "RS.dcm", phantom_ct.label, LABELS, series)
    run_tool(
        tool,
        "convert",
        "--input",
        tmp_path / "RS.dcm",
        "--referenced-ct",
        phantom_series,
        "--output-prefix",
        tmp_path / "masks",
        "--prefix-format",
        "nii.gz",
    )
    for k, name in LABELS.items():
        if not k:
            continue
        img = nib.load(tmp_path / "masks" / f"{name}.nii.gz")
        np.testing.assert_allclose(img.affine, phantom_ct.affine, atol=1e-3)
        mask = np.asarray(img.dataobj).transpose(2, 1, 0) > 0
        assert dsc(mask, phantom_ct.label == k) > 0.95, name


def test_plastimatch_keeps_holes_and_islands_in_holes(phantom_series, series, tmp_path) -> None:
    """Separate hole contours came back filled from plastimatch (it ORs contours); keyholes do not."""
    tool = needs("plastimatch")
    labels = np.zeros(series.shape, np.uint8)
    labels[3, 0:30, 0:30] = 1  # touches the image corner
    labels[3, 10:20, 10:20] = 0  # a hole
    labels[5, 10:40, 10:40] = 1
    labels[5, 15:35, 15:35] = 0
    labels[5, 20:25, 20:25] = 1  # an island in the hole
    write_rtstruct(tmp_path / "RS.dcm", labels, {1: "organ"}, series)
    ss = read_rtstruct(tmp_path / "RS.dcm")
    assert len([c for c in ss.rois[0].contours if c.image_uids == [series.sop_uids[3]]]) == 1  # keyholed
    np.testing.assert_array_equal(rasterise_roi(ss.rois[0], series, "RS.dcm", []), labels == 1)
    run_tool(
        tool,
        "convert",
        "--input",
        tmp_path / "RS.dcm",
        "--referenced-ct",
        phantom_series,
        "--output-prefix",
        tmp_path / "masks",
        "--prefix-format",
        "nii.gz",
    )
    back = np.asarray(nib.load(tmp_path / "masks" / "organ.nii.gz").dataobj).transpose(2, 1, 0) > 0
    np.testing.assert_array_equal(back, labels == 1)


def test_rtstruct_of_a_resampled_series_contours_the_original_slices(phantom_series, tmp_path) -> None:
    import shutil

    shutil.copytree(phantom_series, tmp_path / "ct")
    (tmp_path / "ct" / "CT_0005.dcm").unlink()
    series = read_series_folder(tmp_path / "ct", resample=True)[0]
    assert series.shape[0] == 16 and len(series.files) == 15
    labels = np.zeros(series.shape, np.uint8)
    labels[:, 20:30, 20:30] = 1
    labels[5, 20:30, 20:30] = 0  # the interpolated slice: not a slice of the series, not written
    write_rtstruct(tmp_path / "RS.dcm", labels, {1: "organ"}, series)
    ss = read_rtstruct(tmp_path / "RS.dcm")
    uids = {c.image_uids[0] for c in ss.rois[0].contours}
    assert uids == set(series.sop_uids)  # every original slice has its contour, no other is named
    back = rasterise_roi(ss.rois[0], series, "RS.dcm", [])
    keep = [k for k in range(16) if k != 5]
    np.testing.assert_array_equal(back[keep], labels[keep] == 1)
