"""Preprocessing: exact label round trip of both recipes, normalisation inverses, the cache."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

import advseg.data.preprocess as pp
from advseg.config import DataConfig
from advseg.data.dataset import Case, DatasetIndex
from advseg.data.preprocess import (
    Preprocessor,
    denormalize_ct,
    normalize_ct,
    preprocess_dataset,
)
from advseg.errors import InputError
from advseg.io import Volume, write_volume


def _affine(spacing_zyx, signs=(1, 1, 1), origin=(0.0, 0.0, 0.0)) -> np.ndarray:
    sz, sy, sx = spacing_zyx
    a = np.diag([sx * signs[2], sy * signs[1], sz * signs[0], 1.0])
    a[:3, 3] = origin
    return a


def _blocks(shape, block, rng, classes=6) -> np.ndarray:
    """Random labels constant on ``block``-sized cells (what a downsampling can keep)."""
    coarse = rng.integers(0, classes, [-(-s // b) for s, b in zip(shape, block, strict=True)])
    for axis, b in enumerate(block):
        coarse = np.repeat(coarse, b, axis=axis)
    return coarse[tuple(slice(0, s) for s in shape)].astype(np.uint8)


def _box(info) -> tuple[slice, ...]:
    return tuple(slice(a, b) for a, b in info["crop"])


# ---- pelvic recipe ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "shape, crop, resize, n_slices",
    [
        ((20, 41, 37), 30, 64, 16),  # crop + non-integer upsampling, odd shape, centre slices
        ((11, 40, 40), 64, 40, 16),  # slice smaller than crop (kept whole), fewer slices (padded)
        ((9, 33, 35), 33, 97, 9),  # odd upsampling factor, no z crop
    ],
)
def test_pelvic_label_round_trip_is_exact(shape, crop, resize, n_slices):
    rng = np.random.default_rng(1)
    label = rng.integers(0, 6, shape).astype(np.uint8)
    image = rng.normal(0, 200, shape).astype(np.float32)
    aff = _affine((2.5, 0.9, 0.8))
    pre = Preprocessor(DataConfig(recipe="pelvic", crop_xy=crop, resize_xy=resize, n_slices=n_slices), "CT")
    out = pre.forward(Volume(image, aff), Volume(label, aff))

    assert out.image.dtype == np.float32 and out.image.shape == (1, n_slices, resize, resize)
    assert out.label.dtype == np.uint8 and out.label.shape == (n_slices, resize, resize)
    json.dumps(out.info)  # JSON-serialisable
    back = pre.invert_label(out.label, out.info)
    assert back.shape == shape
    box = _box(out.info)
    np.testing.assert_array_equal(back[box], label[box])
    outside = np.ones(shape, bool)
    outside[box] = False
    assert not back[outside].any()


def test_pelvic_crop_is_centered_and_pads_slices_with_air():
    shape = (10, 50, 46)
    image = np.full(shape, -1000.0, np.float32)
    pre = Preprocessor(DataConfig(recipe="pelvic", crop_xy=20, resize_xy=20, n_slices=16), "CT")
    out = pre.forward(Volume(image, _affine((3, 1, 1))), Volume(np.ones(shape, np.uint8), np.eye(4)))
    assert out.info["crop"] == [[0, 10], [15, 35], [13, 33]]
    assert out.info["pad"][0] == [3, 3]
    assert np.all(out.image == -1.0)  # air -> -1, padding -> -1
    assert out.label[:3].max() == 0 and out.label[-3:].max() == 0 and out.label[3:13].min() == 1


def test_pelvic_downsampling_by_integer_factor_is_exact_on_blocks():
    rng = np.random.default_rng(2)
    shape = (8, 36, 36)
    label = _blocks(shape, (1, 3, 3), rng)
    pre = Preprocessor(DataConfig(recipe="pelvic", crop_xy=36, resize_xy=12, n_slices=8), "CT")
    out = pre.forward(Volume(np.zeros(shape, np.float32)), Volume(label))
    np.testing.assert_array_equal(pre.invert_label(out.label, out.info), label)


def test_downsampled_label_stays_centred_on_the_image_grid():
    """2x in-plane: the label of a disk must follow the (antialiased) image, not pick odd voxels."""
    shape = (4, 64, 64)
    yy, xx = np.mgrid[:64, :64]
    disk = ((yy - 30.0) ** 2 + (xx - 33.0) ** 2 < 13.5**2).astype(np.uint8)
    label = np.broadcast_to(disk, shape).copy()
    image = label.astype(np.float32) * 1000.0 - 500.0
    pre = Preprocessor(
        DataConfig(recipe="pelvic", crop_xy=64, resize_xy=32, n_slices=4, hu_window=[-500, 500]), "CT"
    )
    out = pre.forward(Volume(image), Volume(label))
    small = out.label[0] == 1
    # voxel j of the 32-grid is centred at 2j + 0.5 of the 64-grid
    cy, cx = [2.0 * float(np.mean(ix)) + 0.5 for ix in np.nonzero(small)]
    assert abs(cy - 30.0) < 0.3 and abs(cx - 33.0) < 0.3  # nearest neighbour: 29.5, 32.5
    assert abs(4 * small.sum() / disk.sum() - 1.0) < 0.03  # coverage kept, no half-voxel growth
    img = out.image[0, 0]  # the label is where the image crosses 50 % (exact ties go to the label)
    decided = np.abs(img) > 1e-4
    np.testing.assert_array_equal(small[decided], img[decided] > 0.0)


def test_image_downsampling_is_antialiased():
    """3x down (the study's 384 -> 128): a one-voxel checkerboard must average out, not alias."""
    z, y, x = np.indices((3, 48, 48))
    image = np.where((y + x) % 2 == 0, 1000.0, -1000.0).astype(np.float32)
    pre = Preprocessor(
        DataConfig(recipe="pelvic", crop_xy=48, resize_xy=16, n_slices=3, hu_window=[-1000, 1000]), "CT"
    )
    out = pre.forward(Volume(image))
    assert float(np.abs(out.image).max()) < 0.15  # point sampling would give +-1


# ---- general recipe ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "signs, target, block",
    [
        ((1, 1, 1), None, (1, 1, 1)),  # crop only
        ((1, -1, -1), [1.0, 0.45, 0.35], (1, 1, 1)),  # flips + anisotropic upsampling
        ((-1, 1, -1), [1.5, 0.9, 0.8], (1, 1, 1)),  # non-integer up/down mix, z unchanged below 1
    ],
)
def test_general_label_round_trip_is_exact(signs, target, block):
    rng = np.random.default_rng(3)
    shape = (17, 37, 33)  # odd
    spacing = (3.0, 0.9, 0.8)
    image = np.full(shape, -1000.0, np.float32)
    image[5:10, 9:24, 8:21] = rng.normal(40, 100, (5, 15, 13))
    label = _blocks(shape, block, rng)
    aff = _affine(spacing, signs, origin=(12.0, -7.0, 30.0))
    cfg = DataConfig(recipe="general", target_spacing=target)
    pre = Preprocessor(cfg, "CT")
    out = pre.forward(Volume(image, aff), Volume(label, aff))
    json.dumps(out.info)

    assert out.info["flip"] == [s < 0 for s in signs]
    if target is not None:
        assert np.allclose(out.info["spacing"], target, rtol=0.15)
    back = pre.invert_label(out.label, out.info)
    box = _box(out.info)
    assert back.shape == shape
    assert out.info["crop"] == [[3, 12], [3, 30], [1, 28]]  # body box + 5 mm
    np.testing.assert_array_equal(back[box], label[box])


def test_general_downsampling_loses_only_boundary_voxels():
    shape = (17, 37, 33)
    zz, yy, xx = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    label = ((((zz - 8) / 6.0) ** 2 + ((yy - 18) / 12.0) ** 2 + ((xx - 16) / 10.0) ** 2) < 1).astype(np.uint8)
    label[(label == 1) & (xx > 16)] = 2
    image = np.where(label > 0, 50.0, -1000.0).astype(np.float32)
    aff = _affine((3.0, 0.9, 0.8), (1, -1, 1))
    pre = Preprocessor(DataConfig(recipe="general", target_spacing=[6.0, 1.8, 1.6]), "CT")
    out = pre.forward(Volume(image, aff), Volume(label, aff))
    back = pre.invert_label(out.label, out.info)
    wrong = back != label
    assert 0 < wrong.mean() < 0.05
    # every wrong voxel touches a label boundary (within the 2-voxel footprint of the coarse grid)
    from scipy.ndimage import maximum_filter, minimum_filter

    edge = maximum_filter(label, size=3) != minimum_filter(label, size=3)
    assert np.all(edge[wrong])


def test_general_reorientation_and_affine_map_voxels_to_the_same_world_point():
    shape = (6, 10, 12)
    aff = _affine((2.0, 1.0, 1.0), (1, -1, -1), origin=(5.0, 3.0, -4.0))
    image = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)  # all > -500: no crop
    pre = Preprocessor(DataConfig(recipe="general", target_spacing=None, hu_window=[0, 1e4]), "CT")
    out = pre.forward(Volume(image, aff))
    assert out.info["crop"] == [[0, 6], [0, 10], [0, 12]] and out.info["flip"] == [False, True, True]
    new_aff = np.asarray(out.info["affine"])
    assert np.all(np.diag(new_aff)[:3] > 0)
    hu = denormalize_ct(out.image[0], [0, 1e4])
    z, y, x = 2, 3, 4  # a preprocessed voxel ...
    world = new_aff @ [x, y, z, 1]
    ox, oy, oz = np.round(np.linalg.solve(aff, world)[:3]).astype(int)  # ... and the original voxel there
    assert hu[z, y, x] == pytest.approx(image[oz, oy, ox], abs=1e-2)


def test_mr_zscore_uses_nonzero_percentiles_and_inverts():
    rng = np.random.default_rng(4)
    shape = (8, 24, 24)
    image = np.zeros(shape, np.float32)
    image[1:7, 3:21, 3:21] = rng.gamma(4.0, 50.0, (6, 18, 18))
    image[4, 10, 10] = 1e5  # outlier, clipped by the 99.5th percentile
    pre = Preprocessor(DataConfig(recipe="general", target_spacing=None, percentiles=[0.5, 99.5]), "MR")
    out = pre.forward(Volume(image, _affine((2, 1, 1))))
    stats = out.info["norm"]["channels"][0]
    body = out.image[0][out.image[0] != out.image[0].min()]
    assert out.image.max() < 10  # outlier clipped
    inner = image[image != 0]
    assert stats["hi"] == pytest.approx(np.percentile(inner, 99.5), rel=1e-5)
    assert body.mean() == pytest.approx(0.0, abs=0.05) and body.std() == pytest.approx(1.0, abs=0.05)
    back = pre.invert_image(out.image[0], out.info)
    box = _box(out.info)
    kept = (image[box] > stats["lo"]) & (image[box] < stats["hi"])
    np.testing.assert_allclose(back[box][kept], image[box][kept], rtol=1e-4, atol=1e-2)


def test_multichannel_and_shape_mismatch():
    a, b = np.ones((6, 8, 8), np.float32), np.zeros((6, 8, 8), np.float32)
    pre = Preprocessor(DataConfig(recipe="pelvic", crop_xy=8, resize_xy=8, n_slices=6), "MR")
    out = pre.forward([Volume(a), Volume(b)])
    assert out.image.shape == (2, 6, 8, 8) and out.label is None
    with pytest.raises(InputError, match="shape"):
        pre.forward([Volume(a), Volume(np.zeros((6, 8, 9), np.float32))])
    with pytest.raises(InputError, match="label"):
        pre.forward(Volume(a), Volume(np.zeros((6, 8, 9), np.uint8)))


# ---- normalisation and other inverses ---------------------------------------------------------


def test_ct_normalisation_and_its_inverse():
    hu = np.array([-3000.0, -1000.0, -250.0, 0.0, 400.0, 1000.0, 2500.0], np.float32)
    y = normalize_ct(hu, [-1000, 1000])
    np.testing.assert_allclose(y, [-1, -1, -0.25, 0, 0.4, 1, 1], atol=1e-6)
    np.testing.assert_allclose(denormalize_ct(y, [-1000, 1000]), np.clip(hu, -1000, 1000), atol=1e-3)
    t = normalize_ct(torch.tensor(hu), [-1000, 1000])
    assert isinstance(t, torch.Tensor)
    np.testing.assert_allclose(denormalize_ct(t, [-1000, 1000]).numpy(), np.clip(hu, -1000, 1000), atol=1e-3)


def test_invert_image_gives_hu_back_and_air_outside():
    rng = np.random.default_rng(5)
    shape = (10, 30, 30)
    image = rng.uniform(-1000, 1000, shape).astype(np.float32)
    pre = Preprocessor(
        DataConfig(recipe="pelvic", crop_xy=20, resize_xy=20, n_slices=8, hu_window=[-1000, 1000]), "CT"
    )
    out = pre.forward(Volume(image))
    back = pre.invert_image(out.image[0], out.info)
    box = _box(out.info)
    np.testing.assert_allclose(back[box], image[box], atol=0.05)
    assert back[0].max() == -1000.0 and back[:, :5].max() == -1000.0


def test_invert_probabilities_sum_to_one_and_background_outside():
    rng = np.random.default_rng(6)
    shape = (10, 21, 23)
    pre = Preprocessor(DataConfig(recipe="pelvic", crop_xy=16, resize_xy=32, n_slices=12), "CT")
    out = pre.forward(Volume(np.zeros(shape, np.float32)))
    logits = torch.tensor(rng.normal(size=(3, *out.info["shape"])))
    probs = torch.softmax(logits, 0).numpy().astype(np.float32)
    back = pre.invert_probabilities(probs, out.info)
    assert back.shape == (3, *shape)
    np.testing.assert_allclose(back.sum(0), 1.0, atol=1e-5)
    assert np.all(back[0, :, :2] == 1.0) and not back[1:, :, :2].any()
    assert not pre.invert_probabilities(probs[:1], out.info, outside_class=None)[:, :, :2].any()
    # argmax of the inverted probabilities agrees with invert_label of the argmax (same geometry)
    lab = pre.invert_label(probs.argmax(0).astype(np.uint8), out.info)
    box = _box(out.info)
    assert (back.argmax(0)[box] == lab[box]).mean() > 0.5


def test_invert_rejects_wrong_shape():
    pre = Preprocessor(DataConfig(recipe="pelvic", crop_xy=8, resize_xy=8, n_slices=4), "CT")
    out = pre.forward(Volume(np.zeros((4, 8, 8), np.float32)))
    with pytest.raises(ValueError, match="preprocessed shape"):
        pre.invert_label(np.zeros((4, 8, 9), np.uint8), out.info)


# ---- cache ------------------------------------------------------------------------------------


def _write_dataset(root: Path, n_labeled=2, n_unlabeled=1, missing_labels=False) -> DatasetIndex:
    rng = np.random.default_rng(7)
    aff = _affine((2.0, 1.0, 1.0))
    training, unlabeled = [], []
    for i in range(n_labeled + n_unlabeled):
        name = f"case_{i}"
        img = rng.uniform(-1000, 1000, (6, 12, 12)).astype(np.float32)
        write_volume(root / "imagesTr" / f"{name}_0000.nii.gz", Volume(img, aff))
        label_path = root / "labelsTr" / f"{name}.nii.gz"
        if i < n_labeled:
            if not missing_labels:
                write_volume(label_path, Volume(rng.integers(0, 3, (6, 12, 12)).astype(np.uint8), aff))
            training.append(Case(name, [root / "imagesTr" / f"{name}_0000.nii.gz"], label_path))
        else:
            unlabeled.append(Case(name, [root / "imagesTr" / f"{name}_0000.nii.gz"]))
    return DatasetIndex(
        root=root,
        name="Toy/1",
        layout="nnunet",
        labels={0: "bg", 1: "a", 2: "b"},
        modality="CT",
        channel_names=["CT"],
        training=training,
        unlabeled=unlabeled,
    )


_CFG = DataConfig(recipe="pelvic", crop_xy=8, resize_xy=8, n_slices=4, hu_window=[-1000, 1000])


def test_cache_reuses_cases_and_fingerprint_tracks_settings(tmp_path, monkeypatch):
    index = _write_dataset(tmp_path / "data")
    ds = preprocess_dataset(index, _CFG, cache_root=tmp_path / "cache", progress=False)
    assert ds.names == ["case_0", "case_1", "case_2"] and ds.labeled == {"case_0", "case_1"}
    case = ds.load("case_0")
    assert case.image.shape == (1, 4, 8, 8) and case.label.shape == (4, 8, 8)
    assert ds.load("case_2").label is None and ds.info("case_2")["has_label"] is False
    assert ds.root.parent.name == "Toy_1"
    mtimes = {p.name: p.stat().st_mtime_ns for p in ds.root.iterdir()}

    calls = []
    original = Preprocessor.forward
    monkeypatch.setattr(
        Preprocessor, "forward", lambda self, *a, **k: calls.append(1) or original(self, *a, **k)
    )
    again = preprocess_dataset(index, _CFG, cache_root=tmp_path / "cache", progress=False)
    assert again.root == ds.root and calls == []
    assert {p.name: p.stat().st_mtime_ns for p in ds.root.iterdir()} == mtimes
    np.testing.assert_array_equal(again.load("case_1").label, ds.load("case_1").label)

    # patch size is not a preprocessing setting; the crop is
    same = preprocess_dataset(
        index, replace(_CFG, patch_size=[2, 4, 4]), cache_root=tmp_path / "cache", progress=False
    )
    assert same.root == ds.root and calls == []
    other = preprocess_dataset(
        index, replace(_CFG, resize_xy=6), cache_root=tmp_path / "cache", progress=False
    )
    assert other.root != ds.root and len(calls) == 3 and other.load("case_0").image.shape == (1, 4, 6, 6)
    window = preprocess_dataset(
        index, replace(_CFG, hu_window=[-500, 500]), cache_root=tmp_path / "cache", progress=False
    )
    assert window.root not in (ds.root, other.root)

    # an input file that changes (size/mtime) moves the cache
    path = index.training[0].images[0]
    write_volume(path, Volume(np.zeros((6, 12, 12), np.float32), _affine((2.0, 1.0, 1.0))))
    changed = preprocess_dataset(index, _CFG, cache_root=tmp_path / "cache", progress=False)
    assert changed.root != ds.root
    assert np.all(changed.load("case_0").image == 0.0)
    assert not list(ds.root.glob(".*"))  # atomic writes leave no (hidden) temp files


def test_cache_root_from_environment(tmp_path, monkeypatch):
    index = _write_dataset(tmp_path / "data", n_labeled=1, n_unlabeled=0)
    monkeypatch.setenv("ADVSEG_CACHE", str(tmp_path / "env"))
    ds = preprocess_dataset(index, replace(_CFG, cache_dir=str(tmp_path / "cfg")), progress=False)
    assert (tmp_path / "env") in ds.root.parents
    monkeypatch.delenv("ADVSEG_CACHE")
    ds = preprocess_dataset(index, replace(_CFG, cache_dir=str(tmp_path / "cfg")), progress=False)
    assert (tmp_path / "cfg") in ds.root.parents


def test_cases_not_in_with_labels_never_open_their_label_file(tmp_path, monkeypatch):
    index = _write_dataset(tmp_path / "data", n_labeled=3, n_unlabeled=1)
    read = []
    original = pp.read_volume
    monkeypatch.setattr(pp, "read_volume", lambda p: read.append(Path(p)) or original(p))
    ds = preprocess_dataset(
        index, _CFG, cache_root=tmp_path / "cache", with_labels={"case_0"}, progress=False
    )
    labels_read = {p.name for p in read if p.parent.name == "labelsTr"}
    assert labels_read == {"case_0.nii.gz"}
    assert ds.load("case_1").label is None and ds.load("case_0").label is not None

    # a later run that wants case_1's label redoes it with the label; case_0 is reused
    read.clear()
    ds = preprocess_dataset(
        index,
        _CFG,
        cache_root=tmp_path / "cache",
        cases=["case_0", "case_1"],
        with_labels={"case_0", "case_1"},
        progress=False,
    )
    assert {p.name for p in read} == {"case_1_0000.nii.gz", "case_1.nii.gz"}
    assert ds.load("case_1").label is not None

    # and a run that treats case_1 as unlabeled does not get its (cached) label
    ds = preprocess_dataset(
        index, _CFG, cache_root=tmp_path / "cache", cases=["case_1"], with_labels=set(), progress=False
    )
    assert ds.load("case_1").label is None


def test_unlabeled_cases_work_when_label_files_do_not_exist(tmp_path):
    index = _write_dataset(tmp_path / "data", n_labeled=2, n_unlabeled=0, missing_labels=True)
    ds = preprocess_dataset(index, _CFG, cache_root=tmp_path / "cache", with_labels=set(), progress=False)
    assert ds.load("case_0").label is None
    with pytest.raises(InputError, match="file not found"):
        preprocess_dataset(
            index, _CFG, cache_root=tmp_path / "cache2", with_labels={"case_1"}, progress=False
        )
    assert not (tmp_path / "cache2").exists()  # nothing written before the input is validated


def test_unknown_case_is_an_input_error(tmp_path):
    index = _write_dataset(tmp_path / "data", n_labeled=1, n_unlabeled=0)
    with pytest.raises(InputError, match="no case named 'nope'"):
        preprocess_dataset(index, _CFG, cache_root=tmp_path / "cache", cases=["nope"], progress=False)


def test_with_labels_naming_a_case_without_label_is_an_input_error(tmp_path):
    index = _write_dataset(tmp_path / "data", n_labeled=1, n_unlabeled=1)
    with pytest.raises(InputError, match="case 'case_1' has no label file"):
        preprocess_dataset(index, _CFG, cache_root=tmp_path / "cache", with_labels={"case_1"}, progress=False)
