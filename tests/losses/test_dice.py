"""Dice-family losses against hand-computed values; build_loss."""

from __future__ import annotations

import math

import pytest
import torch

from advseg.config import LossConfig, load_preset
from advseg.errors import InputError
from advseg.losses import (
    LOSS_NAMES,
    AdaptiveWeightedCE,
    CrossEntropy,
    DeepSupervisionLoss,
    Dice,
    DiceCE,
    GeneralizedDiceAttention,
    build_loss,
)

EPS = 1e-5  # MONAI's smooth_nr = smooth_dr

# sample 0 and sample 1: 2 classes x 4 voxels
SCORES = [
    [[2.0, 1.0, 0.0, -1.0], [0.0, 0.0, 1.0, 1.0]],
    [[0.0, 0.5, 0.0, 0.0], [1.0, 1.0, 1.0, -2.0]],
]
TARGETS = [[0, 0, 0, 1], [1, 1, 0, 0]]


def probs(sample: int) -> list[list[float]]:
    """softmax over the 2 classes, by hand: probs[c][i]."""
    s = SCORES[sample]
    p1 = [1 / (1 + math.exp(s[0][i] - s[1][i])) for i in range(4)]
    return [[1 - v for v in p1], p1]


def onehot(sample: int) -> list[list[float]]:
    return [[float(t == c) for t in TARGETS[sample]] for c in range(2)]


def logits(samples: tuple[int, ...] = (0,)) -> torch.Tensor:
    return torch.tensor([SCORES[s] for s in samples])


def target(samples: tuple[int, ...] = (0,)) -> torch.Tensor:
    return torch.tensor([TARGETS[s] for s in samples])


def soft_dice(p: list[float], g: list[float]) -> float:
    return (2 * sum(a * b for a, b in zip(p, g, strict=True)) + EPS) / (sum(p) + sum(g) + EPS)


def gdl_by_hand(sample: int) -> float:
    p, g = probs(sample), onehot(sample)
    r = [1 / sum(g[c]) ** 2 for c in range(2)]  # both classes present in both samples
    num = 2 * sum(r[c] * sum(a * b for a, b in zip(p[c], g[c], strict=True)) for c in range(2)) + EPS
    den = sum(r[c] * (sum(p[c]) + sum(g[c])) for c in range(2)) + EPS
    return 1 - num / den


def test_dice_by_hand() -> None:
    p, g = probs(0), onehot(0)
    expected = 1 - (soft_dice(p[0], g[0]) + soft_dice(p[1], g[1])) / 2
    assert Dice()(logits(), target()).item() == pytest.approx(expected, rel=1e-5)
    no_bg = 1 - soft_dice(p[1], g[1])
    assert Dice(include_background=False)(logits(), target()).item() == pytest.approx(no_bg, rel=1e-5)


def test_batch_dice_pools_samples() -> None:
    p = [probs(0)[c] + probs(1)[c] for c in range(2)]
    g = [onehot(0)[c] + onehot(1)[c] for c in range(2)]
    pooled = 1 - (soft_dice(p[0], g[0]) + soft_dice(p[1], g[1])) / 2
    both = (0, 1)
    assert Dice(batch=True)(logits(both), target(both)).item() == pytest.approx(pooled, rel=1e-5)
    per_sample = sum(1 - soft_dice(probs(b)[c], onehot(b)[c]) for b in both for c in range(2)) / 4
    assert Dice(batch=False)(logits(both), target(both)).item() == pytest.approx(per_sample, rel=1e-5)


def test_dice_ce_is_sum() -> None:
    p, g = probs(0), onehot(0)
    dice = 1 - (soft_dice(p[0], g[0]) + soft_dice(p[1], g[1])) / 2
    ce = -sum(math.log(p[TARGETS[0][i]][i]) for i in range(4)) / 4
    assert DiceCE()(logits(), target()).item() == pytest.approx(dice + ce, rel=1e-5)


def test_generalized_dice_attention_by_hand() -> None:
    both = (0, 1)
    gdl = [gdl_by_hand(0), gdl_by_hand(1)]
    loss = GeneralizedDiceAttention(beta=2.0)
    per_sample = loss.sample_losses(logits(both), target(both))
    assert per_sample.tolist() == pytest.approx(gdl, rel=1e-5)
    # a_b = (1 - dsc_b)^2 with dsc_b = 1 - GDL_b
    attention = [(1 - (1 - v)) ** 2 for v in gdl]
    assert loss.attention(per_sample).tolist() == pytest.approx(attention, rel=1e-5)
    expected = (attention[0] * gdl[0] + attention[1] * gdl[1]) / 2
    assert loss(logits(both), target(both)).item() == pytest.approx(expected, rel=1e-5)
    assert GeneralizedDiceAttention(beta=0.0)(logits(both), target(both)).item() == pytest.approx(
        sum(gdl) / 2, rel=1e-5)


def test_attention_weights_are_constants_for_the_gradient() -> None:
    both = (0, 1)
    loss = GeneralizedDiceAttention(beta=2.0)
    x = logits(both).requires_grad_(True)
    loss(x, target(both)).backward()
    # reference: the same attention values as fixed numbers times the differentiable GDL
    a = torch.tensor([gdl_by_hand(0) ** 2, gdl_by_hand(1) ** 2])
    y = logits(both).requires_grad_(True)
    (a * loss.sample_losses(y, target(both))).mean().backward()
    torch.testing.assert_close(x.grad, y.grad, rtol=1e-4, atol=1e-7)


def test_attention_favours_hard_samples() -> None:
    perfect = torch.tensor([[[9.0, 9.0, -9.0, -9.0], [-9.0, -9.0, 9.0, 9.0]]])
    wrong = -perfect
    tgt = torch.tensor([[0, 0, 1, 1]])
    loss = GeneralizedDiceAttention()
    easy = loss.attention(loss.sample_losses(perfect, tgt)).item()
    hard = loss.attention(loss.sample_losses(wrong, tgt)).item()
    assert easy < 1e-6 and hard > 0.99


@pytest.mark.parametrize("name,cls", [("adaptive_ce", AdaptiveWeightedCE), ("ce", CrossEntropy),
                                      ("dice", Dice), ("dice_ce", DiceCE),
                                      ("gdice_attention", GeneralizedDiceAttention)])
def test_build_loss(name: str, cls: type) -> None:
    cfg = LossConfig(name=name, deep_supervision_weights=[1.0, 0.5])
    loss = build_loss(cfg, 2, class_voxel_counts=[3, 1])
    assert isinstance(loss, DeepSupervisionLoss) and isinstance(loss.base, cls)
    assert loss.weights == (1.0, 0.5)
    value = loss([logits(), logits((1,))], target())
    assert torch.isfinite(value) and value.item() > 0
    assert set(LOSS_NAMES) >= {name}


def test_build_loss_settings() -> None:
    loss = build_loss(LossConfig(dice_momentum=0.5, ignore_index=7), 2, class_voxel_counts=[3, 1])
    assert loss.base.momentum == 0.5 and loss.base.ignore_index == 7
    assert loss.base.class_weights().tolist() == pytest.approx([2 + math.log(4 / 3), 2 + math.log(4)])
    gda = build_loss(LossConfig(name="gdice_attention", attention_beta=3.0), 2)
    assert gda.base.beta == 3.0
    preset = build_loss(load_preset("res_unet_aux+tiny").loss, 6)
    assert isinstance(preset.base, AdaptiveWeightedCE) and preset.weights == (1.0, 0.5, 0.25)


def test_build_loss_errors() -> None:
    with pytest.raises(InputError, match="choices: adaptive_ce, ce, dice, dice_ce, gdice_attention"):
        build_loss(LossConfig(name="focal"), 2)
    with pytest.raises(InputError, match="weights"):
        build_loss(LossConfig(deep_supervision_weights=[]), 2)
    with pytest.raises(InputError, match="momentum"):
        build_loss(LossConfig(dice_momentum=1.5), 2)
