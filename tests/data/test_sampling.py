"""Patch sampling: shapes, slab positions, foreground oversampling, determinism and exact resume."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from advseg.config import AugmentConfig
from advseg.data.sampling import PatchDataset, batches, collate
from advseg.transforms import build_augmentation


def _cases(n=2, shape=(20, 40, 40), seed=0):
    rng = np.random.default_rng(seed)
    images = [rng.normal(size=(1, *shape)).astype(np.float32) for _ in range(n)]
    labels = []
    for _ in range(n):
        lab = np.zeros(shape, np.uint8)
        lab[2:5, 30:34, 5:9] = 1  # small foreground far from the centre
        lab[15:17, 3:6, 33:36] = 2
        labels.append(lab)
    return images, labels


def test_3d_and_2d_patch_shapes_and_dtypes():
    images, labels = _cases()
    s = PatchDataset(images, labels, patch_size=(8, 16, 24), seed=0, names=["a", "b"]).sample()
    assert s["image"].shape == (1, 8, 16, 24) and s["image"].dtype == torch.float32
    assert s["label"].shape == (8, 16, 24) and s["label"].dtype == torch.int64
    assert s["case"] in ("a", "b")
    s = PatchDataset(images, labels, patch_size=(16, 24), seed=0).sample()
    assert s["image"].shape == (1, 16, 24) and s["label"].shape == (16, 24)
    two_channels = [np.stack([im[0], im[0] + 1]) for im in images]
    s = PatchDataset(two_channels, None, patch_size=(16, 24), seed=0).sample()
    assert s["image"].shape == (2, 16, 24) and "label" not in s
    torch.testing.assert_close(s["image"][1], s["image"][0] + 1)


def test_patch_content_matches_the_volume():
    z, y, x = np.meshgrid(np.arange(20), np.arange(40), np.arange(40), indexing="ij")
    image = (z * 10000 + y * 100 + x).astype(np.float32)[None]
    ds = PatchDataset([image], None, patch_size=(4, 8, 8), seed=3)
    for _ in range(20):
        p = ds.sample()["image"][0].numpy()
        z0, y0, x0 = int(p[0, 0, 0] // 10000), int(p[0, 0, 0] // 100 % 100), int(p[0, 0, 0] % 100)
        np.testing.assert_array_equal(p, image[0, z0:z0 + 4, y0:y0 + 8, x0:x0 + 8])


def test_pelvic_slab_start_positions_cover_0_to_48():
    image = np.broadcast_to(np.arange(64, dtype=np.float32)[None, :, None, None], (1, 64, 8, 8)).copy()
    ds = PatchDataset([image], None, patch_size=(16, 8, 8), seed=0)
    starts = {int(ds.sample()["image"][0, 0, 0, 0]) for _ in range(1500)}
    assert starts == set(range(49))


def test_volume_smaller_than_patch_is_padded_with_minimum_and_background():
    image = np.full((1, 5, 6, 7), 3.0, np.float32)
    image[0, 0, 0, 0] = -1.0
    label = np.ones((5, 6, 7), np.uint8)
    s = PatchDataset([image], [label], patch_size=(8, 10, 12), seed=0).sample()
    assert s["image"].shape == (1, 8, 10, 12)
    assert (s["image"] == -1.0).sum() == 8 * 10 * 12 - 5 * 6 * 7 + 1  # padding = channel minimum
    assert int(s["label"].sum()) == 5 * 6 * 7
    inner = s["label"][1:6, 2:8, 2:9]  # centred: (8-5)//2, (10-6)//2, (12-7)//2
    assert bool((inner == 1).all())


@pytest.mark.parametrize("patch", [(4, 10, 10), (10, 10)])
def test_foreground_oversampling_hits_foreground_more_often(patch):
    images, labels = _cases()

    def hit_rate(p):
        ds = PatchDataset(images, labels, patch_size=patch, foreground_oversample=p, seed=1)
        return np.mean([bool(ds.sample()["label"].any()) for _ in range(200)])

    uniform, oversampled = hit_rate(0.0), hit_rate(1.0)
    assert oversampled == 1.0 and uniform < 0.5
    assert uniform < hit_rate(0.5) < 1.0


def test_unlabeled_data_has_no_labels_and_ignores_oversampling():
    images, _ = _cases()
    ds = PatchDataset(images, None, patch_size=(4, 8, 8), foreground_oversample=1.0, seed=0)
    assert not ds.has_labels and ds.foreground_oversample == 0.0
    batch = next(batches(ds, 3))
    assert set(batch) == {"image", "case"} and batch["image"].shape == (3, 1, 4, 8, 8)


def _aug(seed=0):
    cfg = AugmentConfig(translate_prob=0.5, flip_prob=0.5, rotate_prob=0.5, contrast_prob=0.5, noise_prob=0.5)
    return build_augmentation(cfg, 3, seed=seed, swap_labels_on_flip=[(1, 2)])


def _take(it, n):
    return [next(it) for _ in range(n)]


def _same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x["case"] == y["case"]
        torch.testing.assert_close(x["image"], y["image"], rtol=0, atol=0)
        torch.testing.assert_close(x["label"], y["label"], rtol=0, atol=0)


def test_stream_is_deterministic_for_a_seed():
    images, labels = _cases()
    make = lambda seed: PatchDataset(images, labels, (4, 12, 12), 0.5, _aug(seed + 100), seed=seed)  # noqa: E731
    a, b, c = (_take(batches(make(s), 2), 4) for s in (5, 5, 6))
    _same(a, b)
    assert not all(torch.equal(x["image"], y["image"]) for x, y in zip(a, c, strict=True))


def test_exact_resume_from_state_dict_through_a_checkpoint():
    images, labels = _cases()
    ds = PatchDataset(images, labels, (4, 12, 12), 0.5, _aug(), seed=7)
    it = batches(ds, 2)
    _take(it, 3)
    buf = io.BytesIO()
    torch.save({"sampler": ds.state_dict()}, buf)
    expected = _take(it, 4)
    assert ds.state_dict()["drawn"] == 14

    buf.seek(0)
    state = torch.load(buf, weights_only=True)["sampler"]
    # a fresh process: new dataset (other seed) and new augmentation, then the saved state
    resumed = PatchDataset(images, labels, (4, 12, 12), 0.5, _aug(seed=123), seed=999)
    resumed.load_state_dict(state)
    _same(_take(batches(resumed, 2), 4), expected)


def test_dataloader_with_collate_in_process():
    images, labels = _cases()
    ds = PatchDataset(images, labels, (4, 12, 12), 0.3, None, seed=2)
    loader = DataLoader(ds, batch_size=2, collate_fn=collate, num_workers=0)
    batch = next(iter(loader))
    assert batch["image"].shape == (2, 1, 4, 12, 12) and batch["label"].shape == (2, 4, 12, 12)
    ref = PatchDataset(images, labels, (4, 12, 12), 0.3, None, seed=2)
    rows = [{k: batch[k][i] for k in ("image", "label", "case")} for i in range(2)]
    _same(rows, [ref.sample(), ref.sample()])


def test_bad_arguments():
    images, labels = _cases()
    with pytest.raises(ValueError, match="patch_size"):
        PatchDataset(images, labels, (4,))
    with pytest.raises(ValueError, match="label 0"):
        PatchDataset(images, [labels[0][:-1], labels[1]], (4, 8, 8))
    with pytest.raises(ValueError, match="foreground_oversample"):
        PatchDataset(images, labels, (4, 8, 8), 1.5)
