"""CT series in: slice order, HU, affine (LPS -> RAS), agreement with dcm2niix, and bad input."""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from advseg.errors import InputError
from advseg.io import Volume, read_volume
from advseg.io.dicom.ctwrite import write_ct_series
from advseg.io.dicom.series import build_series, read_series_folder, scan_folder
from dicom_testing import PhantomCT, needs, run_tool


def _copy(series: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "dicom" / "ct"
    shutil.copytree(series, dst)
    return dst


def _edit(path: Path, **tags) -> None:
    ds = pydicom.dcmread(path)
    for k, v in tags.items():
        setattr(ds, k, v)
    ds.save_as(path)


def test_series_reads_back_exactly(phantom_ct: PhantomCT, phantom_series: Path) -> None:
    vol = read_volume(phantom_series)  # through advseg.io: a folder of one CT series
    assert vol.array.dtype == np.int16
    np.testing.assert_array_equal(vol.array, phantom_ct.image)
    np.testing.assert_allclose(vol.affine, phantom_ct.affine, atol=1e-3)
    assert vol.meta["dicom"]["slices"] == phantom_ct.image.shape[0]


def test_slices_sort_by_position_not_instance_number_and_rescale_applies(
    phantom_ct: PhantomCT, tmp_path: Path
) -> None:
    folder = tmp_path / "ct"
    write_ct_series(folder, Volume(phantom_ct.image, phantom_ct.affine), slope=2.0, intercept=-1000.0)
    files = sorted(folder.iterdir())
    n = len(files)
    for i, f in enumerate(files):  # reversed InstanceNumbers and shuffled file names
        _edit(f, InstanceNumber=n - i)
        f.rename(folder / f"x{(i * 7) % n:03d}_{i}.dcm")
    vol = read_volume(folder)
    # slope 2: stored values are rounded HU / 2, so HU come back within 1 (even values exactly)
    assert np.abs(vol.array.astype(float) - phantom_ct.image).max() <= 1.0
    np.testing.assert_allclose(vol.affine, phantom_ct.affine, atol=1e-3)


def test_oblique_series_keeps_its_rotation_with_a_warning(phantom_ct: PhantomCT, tmp_path: Path) -> None:
    t = np.radians(20)
    rot = np.eye(4)
    rot[:3, :3] = [[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]]
    affine = rot @ phantom_ct.affine
    write_ct_series(tmp_path / "ct", Volume(phantom_ct.image, affine))
    s = read_series_folder(tmp_path / "ct")[0]
    assert any("oblique" in w for w in s.warnings)
    np.testing.assert_allclose(s.affine, affine, atol=1e-3)


def test_dcm2niix_builds_the_same_volume_and_affine(phantom_series: Path, tmp_path: Path) -> None:
    """Independent check: dcm2niix's NIfTI of the series equals what advseg reads (after both are
    brought to the closest canonical orientation, since dcm2niix flips rows)."""
    tool = needs("dcm2niix")
    run_tool(tool, "-z", "y", "-b", "n", "-o", tmp_path, "-f", "d2n", phantom_series)
    theirs = nib.as_closest_canonical(nib.load(tmp_path / "d2n.nii.gz"))
    vol = read_volume(phantom_series)
    ours = nib.as_closest_canonical(nib.Nifti1Image(vol.array.transpose(2, 1, 0), vol.affine))
    assert theirs.shape == ours.shape
    np.testing.assert_allclose(theirs.affine, ours.affine, atol=1e-3)
    np.testing.assert_array_equal(np.asarray(theirs.dataobj), np.asarray(ours.dataobj))


def test_dcm2niix_agrees_on_an_oblique_rescaled_series(phantom_ct: PhantomCT, tmp_path: Path) -> None:
    tool = needs("dcm2niix")
    t = np.radians(15)
    rot = np.eye(4)
    rot[:3, :3] = [[1, 0, 0], [0, np.cos(t), -np.sin(t)], [0, np.sin(t), np.cos(t)]]
    write_ct_series(
        tmp_path / "ct", Volume(phantom_ct.image, rot @ phantom_ct.affine), slope=1.0, intercept=-1024.0
    )
    run_tool(tool, "-z", "y", "-b", "n", "-o", tmp_path, "-f", "d2n", tmp_path / "ct")
    theirs = nib.load(tmp_path / "d2n.nii.gz")
    vol = read_volume(tmp_path / "ct")
    ours = nib.Nifti1Image(vol.array.transpose(2, 1, 0), vol.affine)
    # Compare voxel-to-world of the corner voxels and the values in world space via orientation.
    ornt = nib.orientations.ornt_transform(nib.io_orientation(theirs.affine), nib.io_orientation(ours.affine))
    theirs_data = nib.orientations.apply_orientation(np.asarray(theirs.dataobj), ornt)
    theirs_aff = theirs.affine @ nib.orientations.inv_ornt_aff(ornt, theirs.shape)
    np.testing.assert_allclose(theirs_aff, ours.affine, atol=1e-3)
    np.testing.assert_array_equal(theirs_data, np.asarray(ours.dataobj))


# ---- bad input -------------------------------------------------------------------------------


def test_missing_slice_is_an_error_naming_the_file(phantom_series: Path, tmp_path: Path) -> None:
    folder = _copy(phantom_series, tmp_path)
    (folder / "CT_0005.dcm").unlink()
    with pytest.raises(InputError, match="1 missing slice") as exc:
        read_series_folder(folder)
    assert "CT_0004.dcm" in str(exc.value) and "--resample" in str(exc.value)


def test_missing_slice_resamples_with_a_warning_when_asked(
    phantom_ct: PhantomCT, phantom_series: Path, tmp_path: Path
) -> None:
    folder = _copy(phantom_series, tmp_path)
    (folder / "CT_0005.dcm").unlink()
    s = read_series_folder(folder, resample=True)[0]
    assert any("resampled" in w for w in s.warnings)
    vol = s.read()
    assert vol.shape == phantom_ct.image.shape
    np.testing.assert_allclose(vol.affine, phantom_ct.affine, atol=1e-3)
    np.testing.assert_allclose(vol.array[4], phantom_ct.image[4])  # untouched slices stay exact
    expected = (phantom_ct.image[4].astype(float) + phantom_ct.image[6]) / 2
    np.testing.assert_allclose(vol.array[5], expected, atol=1e-3)  # the gap: linear interpolation


def test_uneven_spacing_is_an_error(phantom_series: Path, tmp_path: Path) -> None:
    folder = _copy(phantom_series, tmp_path)
    f = folder / "CT_0007.dcm"
    ipp = [float(v) for v in pydicom.dcmread(f).ImagePositionPatient]
    _edit(f, ImagePositionPatient=[ipp[0], ipp[1], ipp[2] + 3.0])
    with pytest.raises(InputError, match="uneven slice spacing"):
        read_series_folder(folder)


def test_gantry_tilt_is_an_error(phantom_series: Path, tmp_path: Path) -> None:
    folder = _copy(phantom_series, tmp_path)
    for i, f in enumerate(sorted(folder.iterdir())):  # origins drift in y: a 15 degree tilt
        ds = pydicom.dcmread(f)
        ipp = [float(v) for v in ds.ImagePositionPatient]
        _edit(f, ImagePositionPatient=[ipp[0], ipp[1] + i * 10.73 * np.tan(np.radians(15)), ipp[2]])
    with pytest.raises(InputError, match=r"sheared \(15.0 deg: gantry tilt"):
        read_series_folder(folder)


def test_slices_of_different_size_in_one_series_are_an_error(phantom_series: Path, tmp_path: Path) -> None:
    folder = _copy(phantom_series, tmp_path)
    _edit(folder / "CT_0003.dcm", PixelSpacing=[1.0, 1.0])
    with pytest.raises(InputError, match="CT_0003.dcm: PixelSpacing"):
        read_series_folder(folder)


def test_duplicate_slice_is_an_error(phantom_series: Path, tmp_path: Path) -> None:
    folder = _copy(phantom_series, tmp_path)
    ds = pydicom.dcmread(folder / "CT_0003.dcm")
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.save_as(folder / "CT_0003b.dcm")
    with pytest.raises(InputError, match="duplicate slice"):
        read_series_folder(folder)


def test_several_series_and_modalities_in_one_folder(
    phantom_ct: PhantomCT, phantom_series: Path, tmp_path: Path
) -> None:
    folder = _copy(phantom_series, tmp_path)
    write_ct_series(tmp_path / "second", Volume(phantom_ct.image[:8], phantom_ct.affine))
    for f in (tmp_path / "second").iterdir():
        shutil.move(f, folder / f"second_{f.name}")
    mr = pydicom.dcmread(folder / "CT_0000.dcm")
    mr.Modality, mr.SeriesInstanceUID, mr.SOPClassUID = (
        "MR",
        pydicom.uid.generate_uid(),
        "1.2.840.10008.5.1.4.1.1.4",
    )
    mr.SOPInstanceUID = pydicom.uid.generate_uid()
    mr.save_as(folder / "mr.dcm")
    (folder / "notes.txt").write_text("not DICOM")
    scan = scan_folder(tmp_path / "dicom")
    assert len(scan.ct) == 2  # grouped by SeriesInstanceUID
    assert sorted(len(v) for v in scan.ct.values()) == [8, 16]
    assert any("mr.dcm: MR, not a CT image" in w for w in scan.warnings)
    assert any("notes.txt: not a DICOM file" in w for w in scan.warnings)
    with pytest.raises(InputError, match="2 CT series in this folder"):
        read_volume(folder)


def test_folder_without_dicom_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(InputError, match="no DICOM CT images"):
        scan_folder(tmp_path)


def test_non_ct_modality_alone_is_an_error(phantom_series: Path, tmp_path: Path) -> None:
    folder = _copy(phantom_series, tmp_path)
    for f in folder.iterdir():
        _edit(f, Modality="MR")
    with pytest.raises(InputError, match="no DICOM CT images"):
        read_series_folder(folder)


def test_slice_without_geometry_is_an_error(phantom_series: Path, tmp_path: Path) -> None:
    folder = _copy(phantom_series, tmp_path)
    ds = pydicom.dcmread(folder / "CT_0002.dcm")
    del ds.ImagePositionPatient
    ds.save_as(folder / "CT_0002.dcm")
    scan = scan_folder(folder)
    with pytest.raises(InputError, match="CT_0002.dcm: CT slice without ImagePositionPatient"):
        build_series(next(iter(scan.ct.values())))


@pytest.mark.parametrize(
    "tool, args",
    [("dcmcjpeg", []), ("dcmcjpls", []), ("dcmcrle", [])],  # JPEG lossless SV1, JPEG-LS lossless, RLE
)
def test_compressed_slices_read_the_same(tool: str, args: list[str], phantom_ct: PhantomCT,
                                         phantom_series: Path, tmp_path: Path) -> None:
    """Slices compressed by dcmtk (independent encoder) decode to the same HU."""
    exe = needs(tool)
    folder = _copy(phantom_series, tmp_path)
    for f in sorted(folder.iterdir())[::2]:
        run_tool(exe, *args, f, f.with_suffix(".tmp"))
        f.with_suffix(".tmp").replace(f)
    assert pydicom.dcmread(folder / "CT_0000.dcm").file_meta.TransferSyntaxUID.is_compressed
    np.testing.assert_array_equal(read_volume(folder).array, phantom_ct.image)


def test_undecodable_pixel_data_names_the_file(phantom_series: Path, tmp_path: Path) -> None:
    folder = _copy(phantom_series, tmp_path)
    ds = pydicom.dcmread(folder / "CT_0003.dcm")
    ds.PixelData = ds.PixelData[:100]  # truncated pixel data
    ds.save_as(folder / "CT_0003.dcm")
    with pytest.raises(InputError, match="CT_0003.dcm: cannot decode the pixel data"):
        read_volume(folder)
