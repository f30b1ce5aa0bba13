"""Cross-entropy losses and deep supervision against hand-computed values on 2 classes x 4 voxels."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from advseg.config import LossConfig
from advseg.errors import InputError
from advseg.losses import (
    AdaptiveWeightedCE,
    CrossEntropy,
    DeepSupervisionLoss,
    build_loss,
    class_voxel_counts,
    main_output,
)
from advseg.networks import ResUNet

# 1 sample, 2 classes, 4 voxels (spatial shape (4,)). argmax prediction: [0, 0, 1, 1]
SCORES = [[2.0, 1.0, 0.0, -1.0], [0.0, 0.0, 1.0, 1.0]]
TARGET = [0, 0, 0, 1]


def logits() -> torch.Tensor:
    return torch.tensor([SCORES])


def target() -> torch.Tensor:
    return torch.tensor([TARGET])


def nll(voxel: int, cls: int) -> float:
    """-log softmax(SCORES)[cls] at ``voxel``, by hand."""
    a, b = SCORES[0][voxel], SCORES[1][voxel]
    return -(SCORES[cls][voxel] - math.log(math.exp(a) + math.exp(b)))


def weighted_ce_by_hand(w: list[float], voxels: tuple[int, ...] = (0, 1, 2, 3)) -> float:
    return sum(w[TARGET[v]] * nll(v, TARGET[v]) for v in voxels) / len(voxels)


def test_cross_entropy_by_hand() -> None:
    expected = sum(nll(v, TARGET[v]) for v in range(4)) / 4
    assert CrossEntropy()(logits(), target()).item() == pytest.approx(expected, rel=1e-6)
    # (B, 1, *S) targets are accepted too
    assert CrossEntropy()(logits(), target()[:, None]).item() == pytest.approx(expected, rel=1e-6)
    ignored = torch.tensor([[0, 9, 0, 1]])
    expected_ignored = (nll(0, 0) + nll(2, 0) + nll(3, 1)) / 3
    assert CrossEntropy(ignore_index=9)(logits(), ignored).item() == pytest.approx(expected_ignored, rel=1e-6)


def test_initial_weights_and_eval_loss() -> None:
    loss = AdaptiveWeightedCE(2, class_voxel_counts=[3, 1]).eval()
    w = [2 + math.log(4 / 3), 2 + math.log(4)]  # DSC_c starts at 0
    assert loss.class_weights().tolist() == pytest.approx(w, rel=1e-6)
    assert loss(logits(), target()).item() == pytest.approx(weighted_ce_by_hand(w), rel=1e-6)
    assert loss.running_dice.tolist() == [0.0, 0.0]  # eval mode: no update
    assert int(loss.num_updates) == 0


def test_training_forward_updates_running_dice_then_weights() -> None:
    loss = AdaptiveWeightedCE(2, class_voxel_counts=[3, 1], momentum=0.9).train()
    # prediction [0,0,1,1] vs target [0,0,0,1]: dice_0 = 2*2/(2+3), dice_1 = 2*1/(2+1)
    d0, d1 = 0.8, 2 / 3
    value = loss(logits(), target()).item()
    dsc = [0.1 * d0, 0.1 * d1]
    assert loss.running_dice.tolist() == pytest.approx(dsc, rel=1e-6)
    w = [2 - dsc[0] + math.log(4 / 3), 2 - dsc[1] + math.log(4)]
    assert value == pytest.approx(weighted_ce_by_hand(w), rel=1e-6)
    loss(logits(), target())
    second = [0.9 * dsc[0] + 0.1 * d0, 0.9 * dsc[1] + 0.1 * d1]
    assert loss.running_dice.tolist() == pytest.approx(second, rel=1e-6)
    assert int(loss.num_updates) == 2


def test_gradient_by_hand() -> None:
    loss = AdaptiveWeightedCE(2, class_voxel_counts=[3, 1]).eval()
    x = logits().requires_grad_(True)
    loss(x, target()).backward()
    w1 = 2 + math.log(4)
    p1 = math.exp(SCORES[1][3]) / (math.exp(SCORES[0][3]) + math.exp(SCORES[1][3]))
    # d/dz of w_y * -log p_y / N is w_y / N * (p - onehot(y)); voxel 3 has y = 1
    assert x.grad[0, :, 3].tolist() == pytest.approx([w1 / 4 * (1 - p1), w1 / 4 * (p1 - 1)], rel=1e-5)
    assert loss.running_dice.requires_grad is False


def test_class_absent_from_batch_keeps_its_dice() -> None:
    loss = AdaptiveWeightedCE(2, momentum=0.5)
    loss.running_dice.fill_(0.4)
    all_background = torch.tensor([[[5.0, 5.0, 5.0, 5.0], [0.0, 0.0, 0.0, 0.0]]])
    loss.update_dice(all_background, torch.zeros(1, 4, dtype=torch.long))
    assert loss.running_dice.tolist() == pytest.approx([0.5 * 0.4 + 0.5 * 1.0, 0.4])


def test_weights_without_counts_and_with_a_zero_count() -> None:
    plain = AdaptiveWeightedCE(3)
    plain.running_dice.copy_(torch.tensor([0.9, 0.5, 0.0]))
    assert plain.class_weights().tolist() == pytest.approx([1.1, 1.5, 2.0])
    zero = AdaptiveWeightedCE(3, class_voxel_counts=[6, 2, 0])
    # N_c = 0 counts as one voxel
    expected = [2 + math.log(8 / 6), 2 + math.log(4), 2 + math.log(8)]
    assert zero.class_weights().tolist() == pytest.approx(expected)
    with pytest.raises(ValueError):
        AdaptiveWeightedCE(3, class_voxel_counts=[1, 2])


def test_ignore_index_in_loss_and_dice() -> None:
    loss = AdaptiveWeightedCE(2, class_voxel_counts=[3, 1], ignore_index=255).eval()
    tgt = torch.tensor([[0, 255, 0, 1]])
    w = [2 + math.log(4 / 3), 2 + math.log(4)]
    assert loss(logits(), tgt).item() == pytest.approx(weighted_ce_by_hand(w, (0, 2, 3)), rel=1e-6)
    # voxel 1 excluded: class 0 P={0}, G={0,2}; class 1 P={2,3}, G={3}
    assert loss.batch_dice(logits(), tgt).tolist() == pytest.approx([2 / 3, 2 / 3])


def test_state_dict_round_trip_resumes_exactly() -> None:
    a = AdaptiveWeightedCE(2, class_voxel_counts=[3, 1]).train()
    a(logits(), target())
    state = a.state_dict()
    assert set(state) == {"log_freq", "running_dice", "num_updates"}
    b = AdaptiveWeightedCE(2)  # no counts: everything comes from the checkpoint
    b.load_state_dict(state)
    assert torch.equal(b.running_dice, a.running_dice) and torch.equal(b.class_weights(), a.class_weights())
    assert int(b.num_updates) == 1
    assert b(logits(), target()).item() == pytest.approx(a(logits(), target()).item())


def test_class_voxel_counts() -> None:
    labels = [np.array([[0, 1], [2, 2]], dtype=np.uint8), np.array([1, 1, 0], dtype=np.int16)]
    counts = class_voxel_counts(labels, 4)
    assert counts.tolist() == [2.0, 3.0, 2.0, 0.0]
    with pytest.raises(InputError, match="label value 4"):
        class_voxel_counts([np.array([0, 4])], 4)


def test_deep_supervision_combination() -> None:
    torch.manual_seed(0)
    outs = [torch.randn(2, 3, 4, 4) for _ in range(3)]
    tgt = torch.randint(0, 3, (2, 4, 4))
    ce = CrossEntropy()
    terms = [ce(o, tgt).item() for o in outs]
    ds = DeepSupervisionLoss(ce, (1.0, 0.5, 0.25))
    assert ds(outs, tgt).item() == pytest.approx(terms[0] + 0.5 * terms[1] + 0.25 * terms[2], rel=1e-6)
    assert ds(tuple(outs), tgt).item() == pytest.approx(terms[0] + 0.5 * terms[1] + 0.25 * terms[2], rel=1e-6)
    assert ds(outs[1], tgt).item() == pytest.approx(terms[1], rel=1e-6)  # a tensor: the plain loss
    assert DeepSupervisionLoss(ce, (1.0,))(outs, tgt).item() == pytest.approx(terms[0], rel=1e-6)
    skip_middle = DeepSupervisionLoss(ce, (2.0, 0.0, 1.0))
    assert skip_middle(outs, tgt).item() == pytest.approx(2 * terms[0] + terms[2])
    assert main_output(outs) is outs[0] and main_output(outs[2]) is outs[2]
    with pytest.raises(ValueError):
        DeepSupervisionLoss(ce, (0.0, 1.0))


def test_deep_supervision_updates_adaptive_dice_once_from_fused() -> None:
    base = AdaptiveWeightedCE(2, class_voxel_counts=[3, 1])
    ds = DeepSupervisionLoss(base, (1.0, 0.5))
    other = -logits()  # a different prediction: [1, 1, 0, 0]
    ds.train()
    value = ds([logits(), other], target())
    assert int(base.num_updates) == 1
    assert base.running_dice.tolist() == pytest.approx([0.08, 0.1 * 2 / 3], rel=1e-6)
    expected = base.compute(logits(), target()) + 0.5 * base.compute(other, target())
    assert value.item() == pytest.approx(expected.item(), rel=1e-6)
    ds.eval()
    ds([logits(), other], target())
    assert int(base.num_updates) == 1


def test_network_and_loss_train_together() -> None:
    torch.manual_seed(0)
    net = ResUNet(3, 1, 3, (4, 8, 16), pooling="multiscale", aux=True).train()
    loss_fn = build_loss(LossConfig(), 3, class_voxel_counts=[100, 10, 1]).train()
    outs = net(torch.randn(2, 1, 8, 16, 16))
    loss = loss_fn(outs, torch.randint(0, 3, (2, 8, 16, 16)))
    loss.backward()
    assert torch.isfinite(loss) and loss.item() > 0
    assert net.aux_heads[1].weight.grad.abs().sum() > 0
    assert int(loss_fn.base.num_updates) == 1
