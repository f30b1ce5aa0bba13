"""NIfTI reading/writing through the one io interface."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from advseg.errors import InputError
from advseg.io import Volume, read_volume, strip_suffix, write_volume


def test_round_trip_keeps_array_affine_and_axis_order(tmp_path: Path) -> None:
    arr = np.arange(2 * 3 * 4, dtype=np.int16).reshape(2, 3, 4)  # (Z, Y, X)
    affine = np.diag([0.8, 0.9, 2.5, 1.0])
    affine[:3, 3] = [-10, 20, 30]
    write_volume(tmp_path / "a.nii.gz", Volume(arr, affine))
    # On disk NIfTI order is (x, y, z).
    assert nib.load(tmp_path / "a.nii.gz").shape == (4, 3, 2)
    vol = read_volume(tmp_path / "a.nii.gz")
    np.testing.assert_array_equal(vol.array, arr)
    np.testing.assert_allclose(vol.affine, affine)
    assert vol.spacing == pytest.approx((2.5, 0.9, 0.8))


def test_write_is_atomic_and_leaves_no_temp_files(tmp_path: Path) -> None:
    write_volume(tmp_path / "b.nii", Volume(np.zeros((2, 2, 2), np.uint8)), dtype=np.uint8)
    assert [p.name for p in tmp_path.iterdir()] == ["b.nii"]
    assert (tmp_path / "b.nii").stat().st_mode & 0o044  # readable by others, like any written file


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [("missing.nii.gz", None, "file not found"), ("empty.nii.gz", b"", "file is empty"),
     ("garbage.nii.gz", b"hello", "cannot read NIfTI"), ("image.png", b"x", "unsupported file type")],
)
def test_bad_files_name_the_file(tmp_path: Path, name: str, content: bytes | None, message: str) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(InputError) as err:
        read_volume(path)
    assert str(path) in err.value.one_line() and message in err.value.one_line()


def test_4d_image_is_refused(tmp_path: Path) -> None:
    nib.save(nib.Nifti1Image(np.zeros((3, 3, 3, 2), np.float32), np.eye(4)), tmp_path / "t.nii.gz")
    with pytest.raises(InputError, match="expected a 3D image"):
        read_volume(tmp_path / "t.nii.gz")


def test_strip_suffix() -> None:
    assert strip_suffix("x/case_001.nii.gz") == "case_001"
    assert strip_suffix("case.nii") == "case"
