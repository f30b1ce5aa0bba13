"""Mean Teacher's pieces: softmax-MSE consistency, sigmoid ramp-up, EMA of the weights."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from advseg.losses.consistency import ema_update, sigmoid_rampup, softmax_mse


def test_softmax_mse_known_values_and_gradient_only_into_the_student() -> None:
    s = torch.zeros(1, 2, 3, requires_grad=True)  # softmax 0.5 / 0.5 everywhere
    t = torch.tensor([[[10.0, 10.0, 0.0], [-10.0, -10.0, 0.0]]], requires_grad=True)
    loss = softmax_mse(s, t)
    pt = torch.softmax(t.detach(), 1)
    assert loss.item() == pytest.approx(float(((0.5 - pt) ** 2).mean()))
    loss.backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert t.grad is None  # the teacher learns only through the moving average
    assert softmax_mse(t.detach(), t.detach()).item() == 0.0
    with pytest.raises(ValueError, match="differ in shape"):
        softmax_mse(torch.zeros(1, 2, 3), torch.zeros(1, 3, 3))


def test_sigmoid_rampup() -> None:
    assert sigmoid_rampup(0, 100) == pytest.approx(math.exp(-5))
    assert sigmoid_rampup(50, 100) == pytest.approx(math.exp(-5 * 0.25))
    assert sigmoid_rampup(100, 100) == 1.0 and sigmoid_rampup(500, 100) == 1.0
    assert sigmoid_rampup(3, 0) == 1.0
    values = [sigmoid_rampup(i, 10) for i in range(11)]
    assert values == sorted(values)


def test_ema_update_averages_the_first_steps_then_decays() -> None:
    teacher, student = nn.Linear(1, 1, bias=False), nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        teacher.weight.fill_(0.0)
        student.weight.fill_(1.0)
    assert ema_update(teacher, student, 0.99, iteration=0) == 0.0  # first step: teacher = student
    assert teacher.weight.item() == 1.0
    with torch.no_grad():
        student.weight.fill_(3.0)
    assert ema_update(teacher, student, 0.99, iteration=1) == 0.5  # mean of the two steps
    assert teacher.weight.item() == pytest.approx(2.0)
    with torch.no_grad():
        student.weight.fill_(2.0)
    assert ema_update(teacher, student, 0.9, iteration=1000) == 0.9
    assert teacher.weight.item() == pytest.approx(2.0)
    with torch.no_grad():
        student.weight.fill_(12.0)
    ema_update(teacher, student, 0.9, iteration=1001)
    assert teacher.weight.item() == pytest.approx(0.9 * 2.0 + 0.1 * 12.0)
