"""DICOM SEG out (highdicom): reads back to the label map on the CT's grid; passes dciodvfy."""

from __future__ import annotations

import highdicom as hd
import numpy as np
import pytest

from advseg.data.phantom import LABELS
from advseg.errors import InputError
from advseg.io.dicom.seg import write_seg
from advseg.io.dicom.series import read_series_folder
from dicom_testing import PhantomCT, needs, run_tool


def test_seg_reads_back_to_the_labels(phantom_series, phantom_ct: PhantomCT, tmp_path) -> None:
    series = read_series_folder(phantom_series)[0]
    labels = phantom_ct.label.copy()
    labels[labels == 3] = 0  # an absent organ: segments stay consecutive
    write_seg(tmp_path / "SEG.dcm", labels, LABELS, series)
    seg = hd.seg.segread(tmp_path / "SEG.dcm")
    assert seg.FrameOfReferenceUID == series.frame_uid and seg.StudyInstanceUID == series.study_uid
    assert [d.SegmentLabel for d in seg.SegmentSequence] == [
        "prostate",
        "bladder",
        "left_femur",
        "right_femur",
    ]
    assert seg.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0].CodeMeaning == "Prostate"
    # Frames per source slice, in the series' order (slice k <-> SOPInstanceUID k).
    arr = seg.get_pixels_by_source_instance(series.sop_uids, combine_segments=True)
    expected = np.select([labels == v for v in (1, 2, 4, 5)], [1, 2, 3, 4], 0)
    np.testing.assert_array_equal(arr, expected)


def test_seg_of_an_empty_prediction_is_an_error(phantom_series, tmp_path) -> None:
    series = read_series_folder(phantom_series)[0]
    with pytest.raises(InputError, match="prediction is empty"):
        write_seg(tmp_path / "SEG.dcm", np.zeros(series.shape, np.uint8), LABELS, series)
    assert not (tmp_path / "SEG.dcm").exists()


def test_seg_passes_dciodvfy(phantom_series, phantom_ct: PhantomCT, tmp_path) -> None:
    tool = needs("dciodvfy")
    series = read_series_folder(phantom_series)[0]
    write_seg(tmp_path / "SEG.dcm", phantom_ct.label, LABELS, series)
    res = run_tool(tool, tmp_path / "SEG.dcm")
    assert [line for line in (res.stdout + res.stderr).splitlines() if line.startswith("Error")] == []
