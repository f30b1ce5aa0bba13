"""The synthesis report's measures, on arrays with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from advseg.synthesis.metrics import (
    hu_errors,
    largest_component_voxels,
    ncc_distances,
    nearest_training,
    organ_means,
    organs_found,
    training_nearest_other,
)


def _labels() -> np.ndarray:
    lab = np.zeros((6, 8, 8), dtype=np.uint8)
    lab[1:3, 1:3, 1:3] = 1  # 8 voxels
    lab[3:6, 4:8, 4:8] = 2  # 48 voxels
    return lab


def test_hu_error_of_a_sample_made_of_the_organ_means_is_zero() -> None:
    lab = _labels()
    reference = {1: 40.0, 2: 10.0}
    hu = np.full(lab.shape, -1000.0, dtype=np.float32)
    for c, v in reference.items():
        hu[lab == c] = v
    means = organ_means(hu, lab, [1, 2, 3])
    assert means == {1: 40.0, 2: 10.0}  # organ 3 absent: left out, not NaN
    assert hu_errors([means], reference) == {1: [0.0], 2: [0.0]}


def test_hu_error_is_the_absolute_difference_per_sample() -> None:
    lab = _labels()
    a = np.where(lab == 1, 55.0, 0.0)  # organ 1 at +15 HU from its reference
    b = np.where(lab == 1, 30.0, 0.0)  # organ 1 at -10 HU
    b[lab == 2] = 0.0
    errors = hu_errors([organ_means(a, lab, [1, 2]), organ_means(b, np.where(lab == 2, 0, lab), [1, 2])],
                       {1: 40.0, 2: 10.0})
    assert errors[1] == pytest.approx([15.0, 10.0])
    assert errors[2] == pytest.approx([10.0])  # only the first sample holds organ 2


def test_largest_component_and_organs_found() -> None:
    lab = _labels()
    lab[0, 7, 0] = 1  # a stray voxel of organ 1: a second, 1-voxel component
    assert largest_component_voxels(lab == 1) == 8
    assert largest_component_voxels(lab == 3) == 0
    found = organs_found(lab, {1: 8, 2: 49, 3: 1})
    assert found == {1: True, 2: False, 3: False}


def test_ncc_distance_zero_for_identical_and_linear_copies() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 4, 6, 6))
    d = ncc_distances(x, np.concatenate([x, 2.0 * x + 5.0]))
    assert np.allclose(np.diag(d[:, :3]), 0.0, atol=1e-12)
    assert np.allclose(np.diag(d[:, 3:]), 0.0, atol=1e-12)  # NCC ignores a linear change of intensity
    assert np.all(d[0, [1, 2]] > 0.5)  # independent noise: NCC near 0, distance near 1
    with pytest.raises(ValueError, match="cannot be compared"):
        ncc_distances(x, x[:, :2])


def test_a_sample_copying_a_training_volume_or_its_mirror_has_distance_zero() -> None:
    rng = np.random.default_rng(1)
    train = rng.normal(size=(5, 4, 6, 6))
    samples = np.stack([train[2], train[4][..., ::-1], rng.normal(size=(4, 6, 6))])
    d, j = nearest_training(samples, train)
    assert d[0] == pytest.approx(0.0, abs=1e-12) and j[0] == 2
    assert d[1] == pytest.approx(0.0, abs=1e-12) and j[1] == 4  # the mirror image counts as a copy
    assert d[2] > 0.5
    d_plain, _ = nearest_training(samples[1:2], train, mirror=False)
    assert d_plain[0] > 0.5  # without mirrors the flipped copy is not found


def test_training_nearest_other_ignores_each_volume_itself() -> None:
    rng = np.random.default_rng(2)
    base = rng.normal(size=(4, 6, 6))
    train = np.stack([base, base + 0.01 * rng.normal(size=base.shape), rng.normal(size=base.shape)])
    d = training_nearest_other(train)
    assert d[0] == pytest.approx(d[1]) and 0 < d[0] < 1e-3  # the near-twins find each other, not themselves
    assert d[2] > 0.5
    sym = np.stack([base, base[..., ::-1].copy()])
    assert training_nearest_other(sym) == pytest.approx([0.0, 0.0], abs=1e-12)  # mirrors of each other
    with pytest.raises(ValueError, match="two training volumes"):
        training_nearest_other(train[:1])
