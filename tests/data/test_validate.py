"""validate_dataset: every kind of bad input gives one line naming the file; nothing is written."""

from __future__ import annotations

import gzip
import json
import time
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from advseg.data.dataset import load_dataset
from advseg.data.validate import geometry_difference, validate_dataset
from advseg.errors import InputError, InputErrors
from advseg.io import Volume, write_volume

SHAPE = (8, 10, 12)  # (Z, Y, X)
AFFINE = np.diag([0.8, 0.8, 2.5, 1.0])
MSD_HIPPO = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "msd-hippocampus"


def _image(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(100, 20, SHAPE).astype(np.float32)


def _label(seed: int) -> np.ndarray:
    lab = np.zeros(SHAPE, np.uint8)
    lab[2:6, 3:7, 4 + seed % 3: 8] = 1
    lab[3:5, 4:6, 1:3] = 2
    return lab


def make_dataset(root: Path, n: int = 3, labels=None, channels=1) -> Path:
    """A valid MSD-style dataset (nnU-Net v2 naming when ``channels > 1``)."""
    for i in range(n):
        name = f"case_{i:03d}"
        for ch in range(channels):
            suffix = f"_{ch:04d}" if channels > 1 else ""
            write_volume(root / "imagesTr" / f"{name}{suffix}.nii.gz", Volume(_image(10 * i + ch), AFFINE))
        write_volume(root / "labelsTr" / f"{name}.nii.gz", Volume(_label(i), AFFINE))
    for ch in range(channels):
        suffix = f"_{ch:04d}" if channels > 1 else ""
        write_volume(root / "imagesTs" / f"case_100{suffix}.nii.gz", Volume(_image(100 + ch), AFFINE))
    if channels > 1:
        meta = {"channel_names": {str(c): f"MR{c}" for c in range(channels)},
                "labels": labels or {"background": 0, "a": 1, "b": 2}, "file_ending": ".nii.gz"}
    else:
        meta = {"modality": {"0": "MRI"}, "labels": labels or {"0": "background", "1": "a", "2": "b"}}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def _listing(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


def _write(path: Path, arr: np.ndarray, affine=AFFINE) -> None:
    write_volume(path, Volume(arr, affine))


def _raw_nifti(path: Path, data: np.ndarray) -> None:
    """Write a NIfTI of any dimensionality (write_volume only takes 3D)."""
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(path))


TR_IMG = "imagesTr/case_001.nii.gz"
TR_LAB = "labelsTr/case_001.nii.gz"


def _set_json(root: Path, text: str) -> None:
    (root / "dataset.json").write_text(text)


def _with(image: np.ndarray, value: float) -> np.ndarray:
    image[_label(1) == 1] = value
    return image


def _shifted(dx: float) -> np.ndarray:
    aff = AFFINE.copy()
    aff[0, 3] += dx
    return aff


# (id, corruption, file named in the error, words in the error)
CORRUPTIONS = [
    ("missing_json", lambda r: (r / "dataset.json").unlink(), "dataset.json", "not found"),
    ("bad_json", lambda r: _set_json(r, '{"labels": {"0": "bg",'), "dataset.json", "invalid JSON"),
    ("json_not_object", lambda r: _set_json(r, "[1, 2]"), "dataset.json", "JSON object"),
    ("no_labels_key", lambda r: _set_json(r, '{"modality": {"0": "MRI"}}'), "dataset.json", "'labels'"),
    ("region_labels", lambda r: _set_json(r, json.dumps({"channel_names": {"0": "CT"}, "labels": {
        "background": 0, "tumour": [1, 2]}})), "dataset.json", "region"),
    ("missing_label_file", lambda r: (r / TR_LAB).unlink(), TR_IMG, "no label file"),
    ("missing_image_file", lambda r: (r / TR_IMG).unlink(), TR_LAB, "label without an image"),
    ("shape_mismatch", lambda r: _write(r / TR_LAB, np.zeros((8, 10, 11), np.uint8)), TR_LAB, "shape"),
    ("spacing_mismatch", lambda r: _write(r / TR_LAB, _label(1), np.diag([0.8, 0.8, 3.0, 1.0])), TR_LAB,
     "spacing (z, y, x) (3, 0.8, 0.8) mm differs from (2.5, 0.8, 0.8) mm"),
    ("origin_mismatch", lambda r: _write(r / TR_LAB, _label(1), _shifted(5.0)), TR_LAB, "origin"),
    ("direction_mismatch", lambda r: _write(r / TR_LAB, _label(1), np.diag([-0.8, 0.8, 2.5, 1.0])),
     TR_LAB, "direction"),
    ("label_out_of_range", lambda r: _write(r / TR_LAB, _label(1) * 4), TR_LAB, "label values 4, 8 are not"),
    ("label_negative", lambda r: _write(r / TR_LAB, _label(1).astype(np.int16) - 1), TR_LAB, "values -1"),
    ("label_float_values", lambda r: _write(r / TR_LAB, _label(1) * np.float32(0.5)), TR_LAB, "non-integer"),
    ("nan_image", lambda r: _write(r / TR_IMG, _with(_image(1), np.nan)), TR_IMG, "NaN"),
    ("inf_image", lambda r: _write(r / TR_IMG, _with(_image(1), -np.inf)), TR_IMG, "Inf"),
    ("constant_image", lambda r: _write(r / TR_IMG, np.zeros(SHAPE, np.float32)), TR_IMG, "constant"),
    ("image_2d", lambda r: _raw_nifti(r / TR_IMG, np.ones((12, 10), np.float32)), TR_IMG, "3D"),
    ("image_4d", lambda r: _raw_nifti(r / TR_IMG, np.ones((12, 10, 8, 2), np.float32)), TR_IMG, "3D"),
    ("garbage_file", lambda r: (r / TR_IMG).write_bytes(gzip.compress(b"not a nifti at all" * 20)), TR_IMG,
     "cannot read NIfTI"),
    ("truncated_file", lambda r: (r / TR_IMG).write_bytes((r / TR_IMG).read_bytes()[:300]), TR_IMG,
     "cannot read NIfTI"),
    ("empty_file", lambda r: (r / TR_LAB).write_bytes(b""), TR_LAB, "empty"),
    ("unlabeled_nan", lambda r: _write(r / "imagesTs/case_100.nii.gz", np.full(SHAPE, np.nan, np.float32)),
     "imagesTs/case_100.nii.gz", "NaN"),
]


@pytest.mark.parametrize(("corrupt", "culprit", "words"), [c[1:] for c in CORRUPTIONS],
                         ids=[c[0] for c in CORRUPTIONS])
def test_each_corruption_gives_one_line_naming_the_file(tmp_path, corrupt, culprit, words):
    root = make_dataset(tmp_path / "ds")
    corrupt(root)
    before = _listing(root)
    with pytest.raises(InputError) as err, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. the listed-file fallback warning
        validate_dataset(load_dataset(root))
    message = str(err.value)
    assert "\n" not in message, message
    assert message.startswith(str(root / culprit) + ": "), message
    assert words in message, message
    assert _listing(root) == before  # nothing written, not even temporary files


def test_valid_dataset_passes_and_writes_nothing(tmp_path):
    root = make_dataset(tmp_path / "ds")
    before = _listing(root)
    assert validate_dataset(load_dataset(root)) == []
    assert _listing(root) == before


def test_every_problem_is_listed(tmp_path):
    root = make_dataset(tmp_path / "ds", n=4)
    _write(root / "labelsTr/case_000.nii.gz", _label(0) + 5)
    _write(root / "imagesTr/case_002.nii.gz", np.full(SHAPE, np.inf, np.float32))
    _write(root / "labelsTr/case_003.nii.gz", np.zeros((8, 10, 13), np.uint8))
    with pytest.raises(InputErrors) as err:
        validate_dataset(load_dataset(root))
    lines = str(err.value).splitlines()
    assert len(lines) == 3 and len(err.value.errors) == 3
    assert ["case_000" in lines[0], "case_002" in lines[1], "case_003" in lines[2]] == [True] * 3


def test_background_only_label_and_duplicate_image_are_warnings(tmp_path):
    root = make_dataset(tmp_path / "ds")
    _write(root / "labelsTr/case_000.nii.gz", np.zeros(SHAPE, np.uint8))
    _write(root / "imagesTs/case_100.nii.gz", _image(10))  # same voxels as training case_001
    warns = validate_dataset(load_dataset(root))
    assert len(warns) == 2
    assert warns[0].startswith(str(root / "labelsTr/case_000.nii.gz")) and "only background" in warns[0]
    assert "imagesTs/case_100.nii.gz: unlabeled image has the same voxels as" in warns[1]
    assert "imagesTr/case_001.nii.gz" in warns[1]
    assert validate_dataset(load_dataset(root), check_unlabeled=False) == warns[:1]


def test_integer_valued_float_labels_and_tiny_affine_noise_are_accepted(tmp_path):
    root = make_dataset(tmp_path / "ds")
    noisy = AFFINE.copy()
    noisy[:3, :] += 2e-5  # float32 rounding of another writer
    _write(root / TR_LAB, _label(1).astype(np.float64), noisy)
    assert validate_dataset(load_dataset(root)) == []


def test_multichannel_channels_must_agree(tmp_path):
    root = make_dataset(tmp_path / "ds", channels=2)
    assert validate_dataset(load_dataset(root)) == []
    _write(root / "imagesTr/case_001_0001.nii.gz", _image(3)[:, :, :11])
    with pytest.raises(InputErrors) as err:
        validate_dataset(load_dataset(root))
    lines = str(err.value).splitlines()
    # the channel differs from channel 0, and the label (compared with channel 0) is fine
    assert lines == [f"{root / 'imagesTr/case_001_0001.nii.gz'}: shape (z, y, x) (8, 10, 11) differs "
                     "from (8, 10, 12) of channel case_001_0000.nii.gz"]


def test_geometry_difference_tolerances():
    assert geometry_difference(AFFINE, AFFINE) is None
    assert geometry_difference(np.diag([0.8008, 0.8, 2.5, 1]), AFFINE) is None  # 1e-3 relative
    assert "spacing" in geometry_difference(np.diag([0.802, 0.8, 2.5, 1]), AFFINE)
    assert geometry_difference(_shifted(5e-4), AFFINE) is None  # < 1e-4 mm + 1e-3 voxel
    assert "origin (x, y, z) (0.002, 0, 0) mm differs from (0, 0, 0) mm" in geometry_difference(
        _shifted(2e-3), AFFINE)


@pytest.mark.skipif(not MSD_HIPPO.exists(), reason="../shared/data/msd-hippocampus not present (fresh clone)")
def test_real_msd_hippocampus_is_valid_and_fast():
    index = load_dataset(MSD_HIPPO)
    start = time.perf_counter()
    warns = validate_dataset(index, check_unlabeled=False)
    elapsed = time.perf_counter() - start
    assert warns == []
    assert elapsed < 20.0, f"validating 200 small cases took {elapsed:.1f} s"
