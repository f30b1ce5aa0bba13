"""Adversarial losses for the segmenter S and the discriminator D, and a D-collapse monitor.

D outputs logits ``z`` (:mod:`advseg.networks.discriminators`); every loss here is binary cross-entropy on
logits, ``BCE(z, t) = -[t log sigmoid(z) + (1 - t) log(1 - sigmoid(z))]``, averaged over all elements
(batch and voxels) - numerically stable where ``sigmoid`` saturates. The callers weight the terms:

* pelvic study: ``L_S = L_vox + lambda_adv L_adv + lambda_semi L_semi`` (lambda_adv 0.01 labeled, 0.001
  unlabeled; lambda_semi 0.1); ``L_D = BCE(D(x*y), 1) + BCE(D(x*S(x)), 0)``.
* Kohl et al. 2017: ``L_S = -log D(S(x))`` (pure) or ``L_mce / 2 - log D(S(x))`` (hybrid); k D steps per
  S step.
* ASDNet (Nie et al. 2018): ``L_S = L_gdice_att + lambda1 L_adv + lambda2 L_semi`` (0.03, 0.3).
* Pan et al. 2022: the fusion D learns ``truth better than prediction`` on mask-poisoned truth.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

# Re-exported so that one import serves a trainer; the loss lives with the other semi-supervised ones.
from advseg.losses.semi import semi_supervised_loss

__all__ = [
    "CollapseMonitor",
    "adversarial_loss_s",
    "discriminator_loss",
    "fusion_discriminator_loss",
    "hybrid_adversarial_loss",
    "mask_poisoning",
    "pure_adversarial_loss",
    "semi_supervised_loss",
]


def _bce_const(logits: torch.Tensor, target: float) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target), reduction="mean")


def adversarial_loss_s(d_logits_fake: torch.Tensor) -> torch.Tensor:
    """L_adv for S: ``mean BCE(D(x * S(x)), 1) = -mean log sigmoid(D(x * S(x)))`` (pelvic study, Hung et al.).

    ``d_logits_fake``: D's logits on S's (non-detached) output, ``(B, 1, *spatial)`` or ``(B, 1)``; the mean
    runs over batch and voxels. Scalar; the caller multiplies by lambda_adv (0.01 labeled, 0.001 unlabeled).
    The gradient also reaches D's parameters: freeze D during S's step
    (:func:`advseg.networks.discriminators.set_requires_grad`) or zero D's gradients before D's step.
    """
    return _bce_const(d_logits_fake, 1.0)


def discriminator_loss(
    d_logits_real: torch.Tensor,
    d_logits_fake: torch.Tensor,
    real_target: float = 1.0,
    fake_target: float | torch.Tensor = 0.0,
) -> torch.Tensor:
    """L_D = ``mean BCE(D(x * y), 1) + mean BCE(D(x * S(x)), 0)`` (each term averaged over batch and voxels).

    ``d_logits_real``: D on the ground truth input; ``d_logits_fake``: D on S's output computed from
    ``S(x).detach()`` by the caller, so that L_D updates D only and no gradient reaches S.
    ``real_target``: 1 (the study) or ``1 - s`` (one-sided label smoothing). ``fake_target``: 0 (the
    study), or a per-voxel target map of ``d_logits_fake``'s shape (``adversarial.d_target: errors``:
    the real target where S's label is right, 0 where it is wrong).
    """
    real = _bce_const(d_logits_real, real_target)
    if isinstance(fake_target, torch.Tensor):
        if fake_target.shape != d_logits_fake.shape:
            raise ValueError(f"fake target {tuple(fake_target.shape)} does not match D's output "
                             f"{tuple(d_logits_fake.shape)}")
        fake = F.binary_cross_entropy_with_logits(d_logits_fake, fake_target.to(d_logits_fake.dtype))
        return real + fake
    return real + _bce_const(d_logits_fake, float(fake_target))


def pure_adversarial_loss(d_logits_fake: torch.Tensor) -> torch.Tensor:
    """Kohl et al. 2017: ``L_S = -log D(S(x))`` with the image-level D, ``(B, 1)`` logits, averaged over B.

    The non-saturating generator loss, identical in form to :func:`adversarial_loss_s` (BCE with target 1).
    """
    return _bce_const(d_logits_fake, 1.0)


def hybrid_adversarial_loss(mce: torch.Tensor, d_logits_fake: torch.Tensor) -> torch.Tensor:
    """Kohl et al. 2017 hybrid: ``L = L_mce / 2 + L_S`` with ``L_S = -log D(S(x))`` and ``mce`` S's
    (already reduced) multi-class cross-entropy on the labeled batch."""
    return 0.5 * mce + pure_adversarial_loss(d_logits_fake)


def fusion_discriminator_loss(d_logit_truth_better: torch.Tensor) -> torch.Tensor:
    """Pan et al. 2022: ``mean BCE(D(x, y~, S(x)), 1)``, the fusion D taught that the (mask-poisoned) truth
    ``y~`` beats S's detached segmentation. The antisymmetric :class:`FusionDiscriminator` makes
    ``BCE(D(x, S(x), y~), 0)`` the same number, so one order suffices. ``(B, 1)`` logits -> scalar."""
    return _bce_const(d_logit_truth_better, 1.0)


def mask_poisoning(
    onehot_target: torch.Tensor, std: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Pan et al. 2022 "mask poisoning": ``y~ = normalise(max(y + std * n, 0))`` with ``n ~ N(0, 1)`` per
    voxel and class, normalised to sum 1 over classes, so D cannot recognise the truth by being exactly
    one-hot.

    ``onehot_target``: ``(B, C, *spatial)`` one-hot (or any distribution over C). Returns a new tensor of
    the same shape: non-negative, summing to 1 over C at every voxel; a voxel where every class fell to 0
    keeps its original value. ``std = 0`` returns an unchanged copy. ``generator`` (on the tensor's device)
    makes the noise reproducible.
    """
    if std < 0:
        raise ValueError(f"mask poisoning std must be >= 0, got {std}")
    if std == 0:
        return onehot_target.clone()
    noise = torch.randn(
        onehot_target.shape, generator=generator, device=onehot_target.device, dtype=onehot_target.dtype
    )
    noisy = (onehot_target + std * noise).clamp_min(0)
    total = noisy.sum(dim=1, keepdim=True)
    return torch.where(total > 0, noisy / total.clamp_min(torch.finfo(noisy.dtype).tiny), onehot_target)


class CollapseMonitor:
    """Warn when the discriminator collapses (hfslyc/AdvSemiSeg issues 39 and 56).

    Two failure signs, each counted over consecutive iterations:

    * ``L_D < eps_loss``: D separates real from fake perfectly, and S's adversarial gradient vanishes;
    * ``|D(real) - D(fake)| < eps_gap`` with the MEAN CONFIDENCES (``sigmoid`` of D's logits) on real and
      fake inputs: D no longer tells them apart and its signal to S is noise.

    :meth:`update` returns a message when a run reaches ``window`` iterations, and again every further
    ``window`` iterations while it lasts; otherwise None. A NaN value breaks a run (NaN is the trainer's).
    """

    def __init__(self, window: int = 200, eps_loss: float = 1e-3, eps_gap: float = 0.02) -> None:
        if window < 1:
            raise ValueError(f"collapse window must be >= 1, got {window}")
        self.window, self.eps_loss, self.eps_gap = window, eps_loss, eps_gap
        self.low_loss_run = 0
        self.small_gap_run = 0

    def update(self, loss_d: float, d_real_mean: float, d_fake_mean: float) -> str | None:
        """Record one iteration (floats or 0-dim tensors); a warning message, or None."""
        loss_d, real, fake = float(loss_d), float(d_real_mean), float(d_fake_mean)
        self.low_loss_run = self.low_loss_run + 1 if loss_d < self.eps_loss else 0
        self.small_gap_run = self.small_gap_run + 1 if abs(real - fake) < self.eps_gap else 0
        messages = []
        if self.low_loss_run and self.low_loss_run % self.window == 0:
            messages.append(
                f"discriminator collapse: L_D < {self.eps_loss:g} for {self.low_loss_run} iterations "
                f"(L_D = {loss_d:.2e}); D wins outright and S gets no adversarial gradient"
            )
        if self.small_gap_run and self.small_gap_run % self.window == 0:
            messages.append(
                f"discriminator collapse: |D(real) - D(fake)| < {self.eps_gap:g} for {self.small_gap_run} "
                f"iterations (D(real) = {real:.3f}, D(fake) = {fake:.3f}); D no longer tells truth from S"
            )
        return "; ".join(messages) or None

    def state_dict(self) -> dict[str, Any]:
        return {"low_loss_run": self.low_loss_run, "small_gap_run": self.small_gap_run}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.low_loss_run = int(state["low_loss_run"])
        self.small_gap_run = int(state["small_gap_run"])
