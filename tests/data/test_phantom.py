"""Synthetic pelvic CT phantom: determinism, anatomy/HU plausibility, orientation, dataset writer."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage as ndi

from advseg.data import phantom
from advseg.data.phantom import LABELS, case_seed, generate_case, write_phantom_dataset
from advseg.errors import InputError

SMALL = (32, 64, 64)


@pytest.fixture(scope="module")
def small_cases() -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    return [generate_case(seed, SMALL) for seed in range(4)]


def _world(affine: np.ndarray, zyx: np.ndarray) -> np.ndarray:
    """RAS+ world mm of a (z, y, x) voxel position."""
    return (affine @ np.array([zyx[2], zyx[1], zyx[0], 1.0]))[:3]


def _centroid(label: np.ndarray, cls: int) -> np.ndarray:
    return np.argwhere(label == cls).mean(axis=0)


def test_same_seed_same_case_and_different_seeds_differ():
    img1, lab1, aff1 = generate_case(11, SMALL)
    img2, lab2, aff2 = generate_case(11, SMALL)
    np.testing.assert_array_equal(img1, img2)
    np.testing.assert_array_equal(lab1, lab2)
    np.testing.assert_array_equal(aff1, aff2)
    img3, lab3, _ = generate_case(12, SMALL)
    assert not np.array_equal(img1, img3)
    assert not np.array_equal(lab1, lab3)


def test_types_shapes_and_every_class_present(small_cases):
    for image, label, affine in small_cases:
        assert image.shape == label.shape == SMALL
        assert image.dtype == np.int16 and label.dtype == np.uint8
        assert affine.shape == (4, 4)
        assert image.min() >= phantom.HU_MIN and image.max() <= phantom.HU_MAX
        assert set(np.unique(label)) == set(LABELS)


def test_hu_ranges(small_cases):
    for image, label, _ in small_cases:
        img = image.astype(np.float32)
        corners = np.concatenate([img[:, :3, :3].ravel(), img[:, :3, -3:].ravel()])
        assert abs(np.median(corners) + 1000.0) < 30.0  # air outside the body
        for cls in (1, 2, 3):  # soft tissue / urine / rectum (median: rectal gas is a minority)
            assert -150.0 <= np.median(img[label == cls]) <= 150.0, LABELS[cls]
        for cls in (4, 5):
            assert np.percentile(img[label == cls], 99) > 500.0  # femoral cortex


def test_prostate_low_contrast_femur_high_contrast(small_cases):
    for image, label, _ in small_cases:
        img = image.astype(np.float32)
        prostate = label == 1
        ring = ndi.binary_dilation(prostate, iterations=1) & ~prostate
        assert abs(img[prostate].mean() - img[ring].mean()) < 40.0
        femur = (label == 4) | (label == 5)
        ring = ndi.binary_dilation(femur, iterations=2) & ~femur
        assert img[femur].mean() - img[ring].mean() > 150.0


def test_orientation_left_femur_on_patient_left_and_anatomical_layout(small_cases):
    for _, label, affine in small_cases:
        assert nib.aff2axcodes(affine) == ("L", "P", "S")
        left, right = _centroid(label, 4), _centroid(label, 5)
        assert left[2] > right[2]  # documented: larger X index = patient's left
        # RAS+: +x points to the patient's right, so the left femur has the smaller world x
        assert _world(affine, left)[0] < _world(affine, right)[0]
        prostate, bladder, rectum = (_centroid(label, c) for c in (1, 2, 3))
        assert bladder[1] < rectum[1] and prostate[1] < rectum[1]  # smaller Y index = anterior
        assert prostate[0] < bladder[0]  # prostate inferior to the bladder
        assert _world(affine, bladder)[1] > _world(affine, rectum)[1]  # RAS+: +y anterior


def test_default_shape_case():
    image, label, affine = generate_case(0)
    assert image.shape == label.shape == phantom.DEFAULT_SHAPE
    sx, sy, sz = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    assert 2.5 <= sz <= 3.0 and 1.5 <= sx <= 3.5 and sx == pytest.approx(sy)
    slices_with = {c: int((label == c).any(axis=(1, 2)).sum()) for c in LABELS}
    assert slices_with[1] >= 8 and slices_with[2] >= 12 and slices_with[3] >= 32
    assert min(slices_with[4], slices_with[5]) >= 24
    # the body fits in the field of view: the image border is air
    border = np.concatenate([image[:, :, 0].ravel(), image[:, :, -1].ravel(), image[:, 0, :].ravel()])
    assert np.median(border) < -950


def test_bad_arguments_of_generate_case():
    with pytest.raises(ValueError, match="shape"):
        generate_case(0, (15, 64, 64))
    with pytest.raises(ValueError, match="shape"):
        generate_case(0, (32, 64))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="seed"):
        generate_case(-1, SMALL)


def test_smooth_field_equals_scipy_zoom():
    shape, coarse = (20, 24, 28), (3, 4, 5)
    field = phantom._smooth_field(np.random.default_rng(5), shape, coarse)
    coeffs = np.random.default_rng(5).standard_normal(coarse).astype(np.float32)
    zoomed = ndi.zoom(coeffs, np.divide(shape, coarse), order=3, mode="mirror", grid_mode=False)
    np.testing.assert_allclose(field, zoomed, atol=1e-4)


def test_case_seeds_depend_only_on_seed_role_and_index():
    seeds = {case_seed(0, role, i) for role in ("labeled", "unlabeled", "test") for i in range(5)}
    assert len(seeds) == 15
    assert case_seed(0, "labeled", 3) == case_seed(0, "labeled", 3) != case_seed(1, "labeled", 3)


def test_dataset_layout_and_json(tiny_phantom: Path):
    root = tiny_phantom  # conftest: labeled=4, unlabeled=3, test=2, shape (32, 64, 64), seed 0
    meta = json.loads((root / "dataset.json").read_text())
    assert meta["name"] == "AdvsegPhantomPelvis"
    assert meta["modality"] == {"0": "CT"}
    assert meta["labels"] == {str(k): v for k, v in LABELS.items()}
    assert meta["tensorImageSize"] == "3D"
    assert "synthetic" in meta["license"]
    assert meta["numTraining"] == 4 and meta["numTest"] == 2
    assert meta["training"] == [
        {"image": f"./imagesTr/phantom_{i:03d}.nii.gz", "label": f"./labelsTr/phantom_{i:03d}.nii.gz"}
        for i in range(4)
    ]
    assert meta["test"] == [f"./imagesTs/phantom_t{i:03d}.nii.gz" for i in range(2)]
    assert meta["unlabeled"] == [f"./imagesUnlabeled/phantom_u{i:03d}.nii.gz" for i in range(3)]
    for rel in [
        *(e[k] for e in meta["training"] for k in ("image", "label")),
        *meta["test"],
        *meta["unlabeled"],
    ]:
        assert (root / rel).is_file(), rel
    assert sorted(p.name for p in (root / "labelsTs").iterdir()) == [
        "phantom_t000.nii.gz",
        "phantom_t001.nii.gz",
    ]
    # unlabeled cases never get a label file, anywhere
    assert not any("phantom_u" in p.name for p in root.rglob("*") if p.parent.name.startswith("labels"))
    assert {p.name for p in root.iterdir()} == {
        "dataset.json",
        "imagesTr",
        "labelsTr",
        "imagesUnlabeled",
        "imagesTs",
        "labelsTs",
    }


def test_written_files_match_generate_case(tiny_phantom: Path):
    from advseg.io import read_volume

    img_file, lab_file = (
        tiny_phantom / "imagesTr/phantom_001.nii.gz",
        tiny_phantom / "labelsTr/phantom_001.nii.gz",
    )
    assert nib.load(str(img_file)).get_data_dtype() == np.int16
    assert nib.load(str(lab_file)).get_data_dtype() == np.uint8
    image, label, affine = generate_case(case_seed(0, "labeled", 1), SMALL)
    vol, lab = read_volume(img_file), read_volume(lab_file)
    np.testing.assert_array_equal(vol.array, image)
    np.testing.assert_array_equal(lab.array, label)
    np.testing.assert_allclose(vol.affine, affine, atol=1e-5)
    test_image = read_volume(tiny_phantom / "imagesTs/phantom_t000.nii.gz").array
    np.testing.assert_array_equal(test_image, generate_case(case_seed(0, "test", 0), SMALL)[0])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"labeled": 0}, "labeled"),
        ({"labeled": -1}, "labeled"),
        ({"unlabeled": -2}, "unlabeled"),
        ({"test": -1}, "test"),
        ({"shape": (15, 64, 64)}, "shape"),
        ({"shape": (32, 64)}, "shape"),
        ({"seed": -3}, "seed"),
    ],
)
def test_refuses_bad_counts_shape_seed_and_writes_nothing(tmp_path: Path, kwargs, message):
    out = tmp_path / "ds"
    with pytest.raises(InputError, match=message) as err:
        write_phantom_dataset(
            out, **{"labeled": 1, "unlabeled": 0, "test": 0, "shape": (16, 32, 32), **kwargs}
        )
    assert err.value.path == str(out)
    assert list(tmp_path.iterdir()) == []


def test_refuses_existing_non_empty_folder_or_file(tmp_path: Path):
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("x")
    with pytest.raises(InputError, match="not empty"):
        write_phantom_dataset(full, labeled=1, unlabeled=0, test=0, shape=(16, 32, 32))
    assert [p.name for p in full.iterdir()] == ["keep.txt"]
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(InputError, match="not a folder"):
        write_phantom_dataset(a_file, labeled=1, unlabeled=0, test=0, shape=(16, 32, 32))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "full"]


def test_empty_existing_folder_is_filled(tmp_path: Path):
    out = tmp_path / "empty"
    out.mkdir()
    assert write_phantom_dataset(out, labeled=1, unlabeled=1, test=0, shape=(16, 32, 32)) == out
    assert (out / "labelsTr/phantom_000.nii.gz").is_file()
    assert (out / "imagesUnlabeled/phantom_u000.nii.gz").is_file()
    assert json.loads((out / "dataset.json").read_text())["test"] == []
    assert [p.name for p in tmp_path.iterdir()] == ["empty"]  # no temporary folder left


def test_failure_midway_leaves_no_partial_dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    calls = []

    def failing(seed, shape):
        calls.append(seed)
        if len(calls) == 2:
            raise RuntimeError("disk on fire")
        return generate_case(seed, shape)

    monkeypatch.setattr(phantom, "generate_case", failing)
    with pytest.raises(RuntimeError, match="disk on fire"):
        write_phantom_dataset(tmp_path / "ds", labeled=2, unlabeled=1, test=0, shape=(16, 32, 32))
    assert list(tmp_path.iterdir()) == []
