"""Augmentation: shapes/dtypes, determinism, the left-right flip with class swap, in-plane affine."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from advseg.config import AugmentConfig
from advseg.transforms import build_augmentation

OFF = AugmentConfig(translate_prob=0, flip_prob=0, contrast_prob=0, rotate_prob=0, noise_prob=0)
ALL = AugmentConfig(translate_prob=1, flip_prob=1, contrast_prob=1, rotate_prob=1, noise_prob=1)


def _sample(spatial=(6, 20, 24), seed=0):
    rng = np.random.default_rng(seed)
    image = torch.from_numpy(rng.normal(size=(1, *spatial)).astype(np.float32))
    label = torch.from_numpy(rng.integers(0, 6, (1, *spatial)).astype(np.uint8))
    return {"image": image, "label": label, "case": "x"}


@pytest.mark.parametrize("dims, spatial", [(3, (6, 20, 24)), (2, (20, 24))])
def test_shapes_dtypes_and_unlabeled_dicts(dims, spatial):
    aug = build_augmentation(ALL, dims, seed=0)
    out = aug(_sample(spatial))
    assert type(out["image"]) is torch.Tensor and out["image"].dtype == torch.float32
    assert out["image"].shape == (1, *spatial)
    assert type(out["label"]) is torch.Tensor and out["label"].dtype == torch.uint8
    assert out["label"].shape == (1, *spatial) and out["case"] == "x"
    assert set(out["label"].unique().tolist()) <= set(range(6))
    unlabeled = aug({"image": _sample(spatial)["image"]})
    assert set(unlabeled) == {"image"} and unlabeled["image"].shape == (1, *spatial)


def test_same_seed_same_output_and_reseeding():
    a, b = build_augmentation(ALL, 3, seed=4), build_augmentation(ALL, 3, seed=4)
    data = _sample()
    outs_a = [a(data) for _ in range(3)]
    outs_b = [b(data) for _ in range(3)]
    for x, y in zip(outs_a, outs_b, strict=True):
        assert torch.equal(x["image"], y["image"]) and torch.equal(x["label"], y["label"])
    assert not torch.equal(outs_a[0]["image"], outs_a[1]["image"])  # the stream moves on
    a.set_random_state(4)
    assert torch.equal(a(data)["image"], outs_a[0]["image"])


def test_all_off_is_identity():
    data = _sample()
    out = build_augmentation(OFF, 3, seed=0)(data)
    assert torch.equal(out["image"], data["image"]) and torch.equal(out["label"], data["label"])


def test_left_right_flip_swaps_paired_classes():
    cfg = AugmentConfig(translate_prob=0, flip_prob=1.0, contrast_prob=0, rotate_prob=0, noise_prob=0)
    data = _sample()
    out = build_augmentation(cfg, 3, seed=0, swap_labels_on_flip=[(4, 5)])(data)
    flipped = data["label"].flip(-1)
    expected = flipped.clone()
    expected[flipped == 4], expected[flipped == 5] = 5, 4
    assert torch.equal(out["image"], data["image"].flip(-1))  # X is the last axis
    assert torch.equal(out["label"], expected)
    # a left femur (4) on the left of the image is a right femur (5) on the right after the flip
    lab = torch.zeros(1, 2, 4, 6, dtype=torch.uint8)
    lab[..., :2], lab[..., 4:] = 4, 5
    aug = build_augmentation(cfg, 3, seed=0, swap_labels_on_flip=[(4, 5)])
    out = aug({"image": lab.float(), "label": lab})
    assert torch.equal(out["label"], lab)  # mirror image + swap: anatomically the same picture
    plain = build_augmentation(cfg, 3, seed=0)({"image": lab.float(), "label": lab})
    assert torch.equal(plain["label"], lab.flip(-1))
    with pytest.raises(ValueError, match="share"):
        build_augmentation(cfg, 3, swap_labels_on_flip=[(4, 5), (5, 6)])


def test_flip_2d_uses_the_last_axis():
    cfg = AugmentConfig(translate_prob=0, flip_prob=1.0, contrast_prob=0, rotate_prob=0, noise_prob=0)
    data = _sample((20, 24))
    out = build_augmentation(cfg, 2, seed=0, swap_labels_on_flip=[(4, 5)])(data)
    assert torch.equal(out["image"], data["image"].flip(-1))


def test_translation_is_a_whole_voxel_in_plane_shift():
    cfg = AugmentConfig(translate_prob=1.0, translate_max_voxels=3, flip_prob=0, contrast_prob=0,
                        rotate_prob=0, noise_prob=0)
    aug = build_augmentation(cfg, 3, seed=1)
    data = _sample((4, 20, 24))
    data["image"] = data["label"].float()
    shifts = set()
    for _ in range(6):
        out = aug(data)
        tfm = aug.transforms[0]
        dy, dx = tfm.shift
        shifts.add((dy, dx))
        assert max(abs(dy), abs(dx)) <= 3
        # backward mapping: out[y, x] = in[y + dy, x + dx] away from the border
        ref = torch.roll(data["label"], shifts=(-dy, -dx), dims=(-2, -1))
        torch.testing.assert_close(out["label"][..., 3:-3, 3:-3], ref[..., 3:-3, 3:-3], rtol=0, atol=0)
        inner = (..., slice(3, -3), slice(3, -3))
        torch.testing.assert_close(out["image"][inner], ref[inner].float(), atol=1e-4, rtol=0)
    assert len(shifts) > 2


def test_rotation_is_in_plane_and_labels_stay_consistent():
    cfg = AugmentConfig(translate_prob=0, flip_prob=0, contrast_prob=0, rotate_prob=1.0, rotate_deg=30,
                        noise_prob=0)
    aug = build_augmentation(cfg, 3, seed=2)
    slice_ = torch.zeros(24, 24)
    slice_[10:14, 4:20] = 3.0  # a horizontal bar
    image = slice_.expand(1, 5, 24, 24).clone()
    out = aug({"image": image, "label": image.to(torch.uint8)})
    angle = aug.transforms[0].angle
    assert 0 < abs(angle) <= 30
    for z in range(1, 5):  # every slice rotated alike: the rotation axis is Z
        assert torch.equal(out["image"][0, z], out["image"][0, 0])
    assert not torch.equal(out["image"], image)
    assert set(out["label"].unique().tolist()) <= {0, 3}
    # the nearest-neighbour label agrees with the thresholded bilinear image almost everywhere
    agree = ((out["image"] > 1.5) == (out["label"] == 3)).float().mean()
    assert agree > 0.97


def test_intensity_transforms_leave_labels_alone():
    cfg = AugmentConfig(translate_prob=0, flip_prob=0, contrast_prob=1.0, rotate_prob=0, noise_prob=1.0,
                        noise_std=0.1)
    data = _sample()
    out = build_augmentation(cfg, 3, seed=0)(data)
    assert torch.equal(out["label"], data["label"])
    diff = out["image"] - data["image"]
    assert 0.05 < float(diff.std()) < 2.0


def test_scaling_zooms_about_the_slice_centre():
    cfg = AugmentConfig(translate_prob=0, flip_prob=0, contrast_prob=0, rotate_prob=0, noise_prob=0,
                        scale_prob=1.0, scale_range=[1.2, 1.4])
    aug = build_augmentation(cfg, 3, seed=4)
    label = torch.zeros(1, 3, 40, 40, dtype=torch.uint8)
    label[..., 14:26, 14:26] = 2  # a centred 12 x 12 square
    out = aug({"image": label.float(), "label": label})
    scale = aug.transforms[0].scale
    assert 1.2 <= scale <= 1.4
    area = int((out["label"][0, 0] == 2).sum())
    assert area == pytest.approx(144 * scale**2, rel=0.15)  # > 1 enlarges
    ys, xs = torch.nonzero(out["label"][0, 0] == 2, as_tuple=True)
    assert float(ys.float().mean()) == pytest.approx(19.5, abs=0.6)  # the centre stays put
    assert float(xs.float().mean()) == pytest.approx(19.5, abs=0.6)


def test_scaling_off_keeps_the_random_stream():
    """Turning scaling on must not change what an existing config draws while it is off."""
    base = AugmentConfig(translate_prob=1.0, flip_prob=0, contrast_prob=0, rotate_prob=1.0, noise_prob=0)
    a = build_augmentation(base, 3, seed=7)
    a(_sample())
    b = build_augmentation(AugmentConfig(**{**base.__dict__, "scale_range": [0.9, 1.1]}), 3, seed=7)
    b(_sample())
    assert (a.transforms[0].shift, a.transforms[0].angle) == (b.transforms[0].shift, b.transforms[0].angle)
    assert b.transforms[0].scale == 1.0


def test_bad_scale_range_is_refused():
    from advseg.errors import InputError
    from advseg.transforms import RandInPlaneAffined

    with pytest.raises(ValueError, match="scale_range"):
        RandInPlaneAffined(["image"], scale_prob=1.0, scale_range=(1.2, 0.8))
    with pytest.raises(InputError, match="augment.scale_range"):  # a config error, one line, no traceback
        build_augmentation(AugmentConfig(scale_prob=0.5, scale_range=[0.0, 1.1]))
