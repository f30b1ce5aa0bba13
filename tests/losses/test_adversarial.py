import math

import pytest
import torch

from advseg.losses.adversarial import (
    CollapseMonitor,
    adversarial_loss_s,
    discriminator_loss,
    fusion_discriminator_loss,
    hybrid_adversarial_loss,
    mask_poisoning,
    pure_adversarial_loss,
)
from advseg.losses.semi import (
    fusion_pseudo_label,
    gaussian_noise_copy,
    masked_self_training_loss,
    region_attention_loss,
    semi_supervised_loss,
    softmax_confidence,
)
from advseg.networks.discriminators import (
    FCDiscriminator,
    discriminator_input,
    onehot,
    onehot_straight_through,
)

LN3 = math.log(3.0)  # sigmoid(ln 3) = 3/4


def logit(p: float) -> float:
    return math.log(p / (1 - p))


# ------------------------------------------------------------------------------------------- BCE losses
def test_adversarial_loss_s_hand_computed():
    d = torch.tensor([[[0.0, LN3]]])  # (B=1, 1, 2 voxels): confidences 1/2, 3/4
    expected = (math.log(2) + math.log(4 / 3)) / 2
    assert adversarial_loss_s(d).item() == pytest.approx(expected, rel=1e-6)


def test_discriminator_loss_hand_computed():
    real = torch.tensor([[[LN3, 0.0]]])  # D(x*y): 3/4, 1/2
    fake = torch.tensor([[[0.0, -LN3]]])  # D(x*S(x)): 1/2, 1/4 -> BCE(., 0) = -log(1 - p)
    expected = (math.log(4 / 3) + math.log(2)) / 2 + (math.log(2) + math.log(4 / 3)) / 2
    assert discriminator_loss(real, fake).item() == pytest.approx(expected, rel=1e-6)


def test_discriminator_loss_is_stable_for_saturated_logits():
    loss = discriminator_loss(torch.full((1, 1, 2), 200.0), torch.full((1, 1, 2), -200.0))
    assert torch.isfinite(loss) and loss.item() == pytest.approx(0.0, abs=1e-30)
    assert adversarial_loss_s(torch.full((1, 1, 2), -200.0)).item() == pytest.approx(200.0)


def test_pure_and_hybrid_adversarial_loss_hand_computed():
    d = torch.tensor([[logit(0.8)], [logit(0.5)]])  # image-level (B=2, 1)
    l_s = (-math.log(0.8) - math.log(0.5)) / 2
    assert pure_adversarial_loss(d).item() == pytest.approx(l_s, rel=1e-6)
    mce = torch.tensor(1.3)
    assert hybrid_adversarial_loss(mce, d).item() == pytest.approx(0.65 + l_s, rel=1e-6)


def test_fusion_discriminator_loss_hand_computed():
    d = torch.tensor([[logit(0.9)], [logit(0.3)]])
    expected = -(math.log(0.9) + math.log(0.3)) / 2
    assert fusion_discriminator_loss(d).item() == pytest.approx(expected, rel=1e-6)


def test_discriminator_loss_does_not_reach_s_when_fake_is_detached():
    torch.manual_seed(0)
    s = torch.nn.Conv3d(1, 3, 1)  # stand-in segmenter
    d = FCDiscriminator(3, 3, (4, 4, 4, 4))
    x = torch.randn(2, 1, 4, 8, 8)
    y = onehot(torch.randint(0, 3, (2, 4, 8, 8)), 3)
    probs = torch.softmax(s(x), 1)
    fake_in = discriminator_input(x, onehot_straight_through(probs).detach())
    discriminator_loss(d(discriminator_input(x, y)), d(fake_in)).backward()
    assert all(p.grad is None for p in s.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in d.classifier.parameters())
    # whereas L_adv on the non-detached fake does reach S
    adversarial_loss_s(d(discriminator_input(x, onehot_straight_through(probs)))).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in s.parameters())


# ------------------------------------------------------------------------------------------- semi-supervised
def _semi_example():
    # 2 classes, 4 voxels (B=1, spatial (4,)): per-voxel logits; D confidences 0.9, 0.1, 0.5, 0.05
    seg = torch.tensor([[[LN3, 0.0, 0.0, 1.0], [0.0, 2.0, math.log(4), 0.0]]], requires_grad=True)
    d = torch.tensor([[[logit(0.9), logit(0.1), logit(0.5), logit(0.05)]]], requires_grad=True)
    return seg, d


def test_semi_supervised_loss_hand_computed():
    seg, d = _semi_example()
    loss, frac = semi_supervised_loss(seg, d, t_semi=0.2)
    # voxel 0: argmax class 0, p = 3/4; voxel 2: argmax class 1, p = 4/5; voxels 1, 3 masked out
    expected = (math.log(4 / 3) + math.log(5 / 4)) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert float(frac) == pytest.approx(0.5)
    assert not frac.requires_grad


def test_semi_supervised_mask_blocks_gradient_below_threshold():
    seg, d = _semi_example()
    loss, _ = semi_supervised_loss(seg, d, t_semi=0.2)
    loss.backward()
    grad = seg.grad[0]  # (C, 4)
    assert torch.all(grad[:, [1, 3]] == 0)  # confidence 0.1 and 0.05 < T_semi: exactly no gradient
    assert torch.all(grad[:, [0, 2]].abs() > 0)
    # d(CE)/d(logit) = (p - onehot) / n_masked at a passing voxel: voxel 0, class 0: (3/4 - 1) / 2
    assert grad[0, 0].item() == pytest.approx(-0.125, rel=1e-6)
    # the mask and the self-taught target carry no gradient into D
    assert d.grad is None


def test_semi_supervised_loss_with_no_voxel_passing_is_zero_and_backpropagates():
    seg, d = _semi_example()
    loss, frac = semi_supervised_loss(seg, d, t_semi=0.95)
    assert loss.item() == 0.0 and float(frac) == 0.0
    assert loss.requires_grad
    loss.backward()
    assert torch.all(seg.grad == 0)


def test_semi_supervised_loss_on_3d_batch_pools_samples():
    torch.manual_seed(0)
    seg = torch.randn(2, 6, 2, 3, 4, requires_grad=True)
    d = torch.randn(2, 1, 2, 3, 4)
    loss, frac = semi_supervised_loss(seg, d, t_semi=0.2)
    mask = torch.sigmoid(d)[:, 0] > 0.2
    ce = torch.nn.functional.cross_entropy(seg, seg.argmax(1), reduction="none")
    assert loss.item() == pytest.approx(ce[mask].mean().item(), rel=1e-6)
    assert float(frac) == pytest.approx(mask.float().mean().item())


def test_softmax_mask_keeps_the_voxels_s_itself_is_sure_of():
    """mask_source softmax: M_v = [max_c S(x)_{v,c} > T]; max-softmax: 3/4, 0.881, 4/5, 0.731."""
    seg, _ = _semi_example()
    conf = softmax_confidence(seg)
    assert conf.shape == (1, 1, 4) and not conf.requires_grad
    p1 = math.exp(2) / (1 + math.exp(2))
    assert conf[0, 0].tolist() == pytest.approx([0.75, p1, 0.8, math.e / (1 + math.e)], rel=1e-6)
    loss, frac = masked_self_training_loss(seg, conf, 0.76)  # voxels 1 and 2 pass
    assert loss.item() == pytest.approx((-math.log(p1) + math.log(5 / 4)) / 2, rel=1e-6)
    assert float(frac) == pytest.approx(0.5)
    loss.backward()
    assert torch.all(seg.grad[0][:, [0, 3]] == 0) and torch.all(seg.grad[0][:, [1, 2]].abs() > 0)
    # the D form is the same loss on sigmoid(D)
    seg, d = _semi_example()
    a, fa = semi_supervised_loss(seg, d, 0.2)
    b, fb = masked_self_training_loss(seg, torch.sigmoid(d), 0.2)
    assert a.item() == b.item() and float(fa) == float(fb)


def test_semi_supervised_loss_rejects_mismatched_confidence_map():
    with pytest.raises(ValueError, match="confidence map"):
        semi_supervised_loss(torch.randn(1, 3, 4, 4), torch.randn(1, 1, 4, 5))


def test_region_attention_loss_matches_threshold_gamma():
    seg, d = _semi_example()
    loss, frac = region_attention_loss(seg, d, gamma=0.6)  # only voxel 0 (0.9) is confident
    assert loss.item() == pytest.approx(math.log(4 / 3), rel=1e-6)
    assert float(frac) == pytest.approx(0.25)


# ------------------------------------------------------------------------------------------- fusion (Pan)
def test_fusion_pseudo_label_selects_preferred_segmentation_per_sample():
    a = torch.zeros(2, 3, 2, 2)
    a[:, 1] = 5.0  # a says class 1 everywhere
    b = torch.zeros(2, 3, 2, 2)
    b[:, 2] = 5.0  # b says class 2 everywhere
    pref = torch.tensor([[2.0], [-1.0]])  # sample 0 prefers a, sample 1 prefers b
    label = fusion_pseudo_label(a, b, pref)
    assert label.shape == (2, 2, 2) and label.dtype == torch.int64
    assert torch.all(label[0] == 1) and torch.all(label[1] == 2)
    assert torch.all(fusion_pseudo_label(a, b, torch.zeros(2, 1)) == 1)  # a tie goes to a
    with pytest.raises(ValueError, match="one preference"):
        fusion_pseudo_label(a, b, torch.zeros(3, 1))


def test_mask_poisoning_keeps_a_valid_distribution():
    target = onehot(torch.randint(0, 6, (2, 4, 8, 8), generator=torch.Generator().manual_seed(1)), 6)
    noisy = mask_poisoning(target, 0.3, torch.Generator().manual_seed(0))
    assert noisy.shape == target.shape
    assert torch.all(noisy >= 0)
    torch.testing.assert_close(noisy.sum(1), torch.ones(2, 4, 8, 8))
    assert not torch.equal(noisy, target)
    again = mask_poisoning(target, 0.3, torch.Generator().manual_seed(0))
    assert torch.equal(noisy, again)  # reproducible with the generator
    small = mask_poisoning(target, 0.05, torch.Generator().manual_seed(2))
    assert torch.equal(small.argmax(1), target.argmax(1))
    assert torch.equal(mask_poisoning(target, 0.0), target)
    huge = mask_poisoning(target, 100.0, torch.Generator().manual_seed(3))  # many all-zero voxels: fallback
    assert torch.all(huge >= 0) and torch.allclose(huge.sum(1), torch.ones(2, 4, 8, 8))
    with pytest.raises(ValueError):
        mask_poisoning(target, -1.0)


def test_gaussian_noise_copy():
    image = torch.zeros(1, 1, 4, 16, 16)
    noisy = gaussian_noise_copy(image, 0.1, torch.Generator().manual_seed(0))
    assert noisy.shape == image.shape
    assert 0.05 < noisy.std().item() < 0.15
    assert torch.equal(gaussian_noise_copy(image, 0.0), image)


# ------------------------------------------------------------------------------------------- collapse monitor
def test_collapse_monitor_low_loss_triggers_after_window():
    m = CollapseMonitor(window=5, eps_loss=1e-3, eps_gap=0.02)
    out = [m.update(1e-4, 0.99, 0.01) for _ in range(5)]
    assert out[:4] == [None] * 4
    assert out[4] is not None and "L_D" in out[4]
    assert [m.update(1e-4, 0.99, 0.01) for _ in range(5)][-1] is not None  # repeats every window
    m.update(0.5, 0.99, 0.01)  # a healthy iteration resets the run
    assert [m.update(1e-4, 0.99, 0.01) for _ in range(4)] == [None] * 4


def test_collapse_monitor_small_gap_triggers_and_healthy_does_not():
    m = CollapseMonitor(window=3)
    msgs = [m.update(1.38, 0.50, 0.49) for _ in range(3)]
    assert msgs[:2] == [None, None] and "D(real)" in msgs[2]
    healthy = CollapseMonitor(window=3)
    assert all(healthy.update(1.0, 0.7, 0.3) is None for _ in range(20))
    # alternating signs break every run
    alt = CollapseMonitor(window=3)
    assert all(alt.update(1e-4 if i % 2 else 1.0, 0.5, 0.5 if i % 2 else 0.1) is None for i in range(20))


def test_collapse_monitor_resume_is_exact():
    a = CollapseMonitor(window=4)
    for _ in range(3):
        a.update(1e-5, 0.5, 0.5)
    b = CollapseMonitor(window=4)
    b.load_state_dict(a.state_dict())
    assert a.update(1e-5, 0.5, 0.5) == b.update(torch.tensor(1e-5), torch.tensor(0.5), torch.tensor(0.5))
    assert b.state_dict() == a.state_dict() == {"low_loss_run": 4, "small_gap_run": 4}


def test_discriminator_loss_with_smoothing_and_a_per_voxel_fake_target() -> None:
    import torch.nn.functional as F

    real, fake = torch.randn(2, 1, 4, 4), torch.randn(2, 1, 4, 4)
    target = (torch.rand(2, 1, 4, 4) > 0.5).float() * 0.9
    expected = (F.binary_cross_entropy_with_logits(real, torch.full_like(real, 0.9))
                + F.binary_cross_entropy_with_logits(fake, target))
    assert torch.allclose(discriminator_loss(real, fake, 0.9, target), expected)
    assert torch.allclose(discriminator_loss(real, fake), discriminator_loss(real, fake, 1.0, 0.0))
    with pytest.raises(ValueError, match="does not match"):
        discriminator_loss(real, fake, 1.0, target[:1])
