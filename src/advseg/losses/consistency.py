"""Consistency between a student and a teacher segmentation (Mean Teacher, Tarvainen & Valpola 2017)."""

from __future__ import annotations

import math

import torch


def softmax_mse(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """``L_cons = mean_{b,c,v} (softmax(s)_{b,c,v} - softmax(t)_{b,c,v})^2``.

    ``student_logits``, ``teacher_logits``: ``(B, K, *spatial)``. The teacher's side is detached (it
    learns only through the moving average), so the gradient goes into the student alone.
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student {tuple(student_logits.shape)} and teacher {tuple(teacher_logits.shape)} "
                         "logits differ in shape")
    s = torch.softmax(student_logits.float(), dim=1)
    t = torch.softmax(teacher_logits.detach().float(), dim=1)
    return ((s - t) ** 2).mean()


def sigmoid_rampup(iteration: int, length: int) -> float:
    """``exp(-5 (1 - t / length)^2)`` for ``t < length``, then 1 (Laine & Aila 2017; the Mean Teacher
    schedule). ``length <= 0`` gives 1 from the start."""
    if length <= 0:
        return 1.0
    phase = 1.0 - min(max(iteration, 0), length) / length
    return float(math.exp(-5.0 * phase * phase))


@torch.no_grad()
def ema_update(teacher: torch.nn.Module, student: torch.nn.Module, decay: float, iteration: int) -> float:
    """``theta_t <- alpha theta_t + (1 - alpha) theta_s`` with ``alpha = min(1 - 1/(iteration + 1), decay)``
    (the teacher averages all steps so far until ``1/(1 - decay)`` steps have passed). Parameters only:
    the teacher's batch-norm statistics come from its own forward passes, as in the original code.
    Returns the ``alpha`` used."""
    alpha = min(1.0 - 1.0 / (iteration + 1), decay)
    for t, s in zip(teacher.parameters(), student.parameters(), strict=True):
        t.mul_(alpha).add_(s.detach(), alpha=1.0 - alpha)
    return alpha
