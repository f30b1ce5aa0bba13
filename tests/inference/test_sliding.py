"""Whole-volume inference: slab recipe, 2D slice-wise, flip TTA, largest component."""

from __future__ import annotations

import numpy as np
import torch

from advseg.inference.postprocess import keep_largest_component
from advseg.inference.sliding import flip_tta, predict_2d, predict_logits, predict_slabs


class Recorder(torch.nn.Module):
    """Returns a per-slab constant logit map so the stacking order is visible."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[tuple[int, ...]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.batches.append(tuple(x.shape))
        return torch.cat([x, -x], dim=1)


def test_slabs_are_one_batch_and_stack_back_in_order() -> None:
    model = Recorder()
    image = torch.arange(64, dtype=torch.float32).view(1, 1, 64, 1, 1).expand(1, 1, 64, 4, 4).contiguous()
    out = predict_slabs(model, image, 16)
    assert model.batches == [(4, 1, 16, 4, 4)]  # the study's four slabs, one forward pass
    torch.testing.assert_close(out[:, :1], image)


def test_slabs_with_a_remainder_cover_every_slice() -> None:
    image = torch.randn(1, 1, 40, 4, 4)
    out = predict_slabs(Recorder(), image, 16)
    torch.testing.assert_close(out[:, :1], image)


def test_slabs_mode_takes_whole_slices_when_the_net_is_fully_convolutional() -> None:
    """Trained on 16 x 8 x 16 patches of 16 x 16 slices: a net with a size_divisor predicts whole
    16 x 16 x 16 slabs in one batch; one without falls back to the (overlapping) sliding window."""
    image = torch.randn(1, 1, 32, 16, 16)
    fcn = Recorder()
    fcn.size_divisor = 8
    out = predict_logits(fcn, image, (16, 8, 16), mode="slabs")
    assert fcn.batches == [(2, 1, 16, 16, 16)]
    torch.testing.assert_close(out[:, :1], image)
    odd = Recorder()
    odd.size_divisor = 3  # 16 is not a multiple: whole slices would not fit the net
    predict_logits(odd, image, (16, 8, 16), mode="slabs")
    assert {b[2:] for b in odd.batches} == {(16, 8, 16)}
    plain = Recorder()  # no size_divisor (e.g. an arbitrary MONAI net): keep the trained patch size
    predict_logits(plain, image, (16, 8, 16), mode="slabs")
    assert {b[2:] for b in plain.batches} == {(16, 8, 16)}


def test_sliding_window_matches_identity_model() -> None:
    image = torch.randn(1, 1, 20, 24, 24)
    out = predict_logits(Recorder(), image, (16, 16, 16), mode="sliding_window", overlap=0.5)
    torch.testing.assert_close(out[:, :1], image, atol=1e-5, rtol=1e-5)


def test_2d_network_runs_slice_by_slice() -> None:
    image = torch.randn(1, 1, 5, 8, 8)
    model = Recorder()
    out = predict_2d(model, image, batch=2)
    assert out.shape == (1, 2, 5, 8, 8)
    assert all(len(b) == 4 for b in model.batches)
    torch.testing.assert_close(out[:, :1], image)


def test_flip_tta_swaps_left_right_classes() -> None:
    # A model that learned "the left organ (class 1) is at low x, the right one (class 2) at high x".
    # On the flipped image it still calls the low-x blob class 1; un-flipped, that blob is the patient's
    # right organ, so the pair must be swapped back before averaging.
    def predict(x: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        logits = torch.zeros(1, 3, *x.shape[2:])
        logits[:, 1, ..., :half] = 10 * (x[:, 0, ..., :half] > 0)
        logits[:, 2, ..., half:] = 10 * (x[:, 0, ..., half:] > 0)
        return logits

    x = -torch.ones(1, 1, 2, 2, 4)
    x[..., 0] = 1.0
    x[..., 3] = 1.0  # a blob on each side
    with_swap = flip_tta(predict, x, lr_pairs=[(1, 2)])
    without = flip_tta(predict, x, lr_pairs=())
    assert (with_swap[:, 1, ..., 0] > 0.99).all() and (with_swap[:, 2, ..., 3] > 0.99).all()
    assert (without[:, 2, ..., 3] < 0.6).all()  # the unswapped average mixes left and right


def test_keep_largest_component_per_class() -> None:
    lab = np.zeros((1, 10, 10), np.uint8)
    lab[0, 1:4, 1:4] = 1
    lab[0, 7, 7] = 1
    lab[0, 6:9, 1:3] = 2
    out = keep_largest_component(lab)
    assert out[0, 7, 7] == 0 and (out[0, 1:4, 1:4] == 1).all() and (out[0, 6:9, 1:3] == 2).all()


def test_slab_batch_splits_the_forward_passes_with_the_same_result() -> None:
    image = torch.randn(1, 1, 64, 8, 8)
    whole, split = Recorder(), Recorder()
    out = predict_slabs(whole, image, 16)
    out2 = predict_slabs(split, image, 16, batch=1)
    assert whole.batches == [(4, 1, 16, 8, 8)]
    assert split.batches == [(1, 1, 16, 8, 8)] * 4
    torch.testing.assert_close(out, out2)
    rem = Recorder()
    predict_slabs(rem, torch.randn(1, 1, 40, 8, 8), 16, batch=2)  # 3 slabs, the last aligned to the end
    assert rem.batches == [(2, 1, 16, 8, 8), (1, 1, 16, 8, 8)]
