"""Dice-family losses (MONAI implementations behind advseg's ``(logits, index target)`` interface).

All take ``logits`` ``(B, C, *S)`` and ``target`` ``(B, *S)`` or ``(B, 1, *S)`` int64 class
indices; the softmax and the one-hot encoding happen inside. ``p`` below is ``softmax(logits)``,
``g`` the one-hot target, sums run over voxels ``i``; MONAI adds ``eps = 1e-5`` to numerator and
denominator.
"""

from __future__ import annotations

import torch
from monai.losses import DiceCELoss, DiceLoss, GeneralizedDiceLoss
from torch import nn

from advseg.losses.weighted_ce import index_target


class Dice(nn.Module):
    """Soft Dice loss ``L = 1 - 1/C sum_c (2 sum_i p_ic g_ic + eps) / (sum_i p_ic + sum_i g_ic + eps)``.

    ``batch=True`` pools the sums over the whole batch (per class), which keeps the loss defined for
    small patches that miss a class; ``batch=False`` averages per-sample Dice.
    """

    def __init__(self, include_background: bool = True, batch: bool = True) -> None:
        super().__init__()
        self.loss = DiceLoss(include_background=include_background, to_onehot_y=True, softmax=True,
                             batch=batch)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.loss(logits.float(), index_target(target, logits).unsqueeze(1))


class DiceCE(nn.Module):
    """``L = L_Dice + L_CE`` (both as in :class:`Dice` and plain voxel-mean cross-entropy)."""

    def __init__(self, include_background: bool = True, batch: bool = True) -> None:
        super().__init__()
        self.loss = DiceCELoss(include_background=include_background, to_onehot_y=True, softmax=True,
                               batch=batch)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.loss(logits.float(), index_target(target, logits).unsqueeze(1))


class GeneralizedDiceAttention(nn.Module):
    """ASDNet's generalized multi-class Dice loss with sample attention.

    Per sample ``b`` (Sudre et al. 2017 generalized Dice, class weights ``r_bc = 1 / (sum_i g_bic)^2``;
    a class absent from the sample gets the largest weight of the present ones, as in MONAI)::

        GDL_b = 1 - (2 sum_c r_bc sum_i p_bic g_bic + eps) / (sum_c r_bc sum_i (p_bic + g_bic) + eps)

    Sample attention (ASDNet, Nie et al. 2018): hard samples - low Dice - weigh more::

        a_b = (1 - dsc_b) ** beta,   dsc_b = 1 - GDL_b   (recomputed every call, no gradient)
        L = 1/B sum_b a_b * GDL_b

    ``dsc_b`` is the soft generalized Dice of the sample, i.e. the quantity the loss optimises, so
    ``a_b = GDL_b ** beta`` numerically; because ``a_b`` is detached the gradient is
    ``a_b * dGDL_b``, a focal-style re-weighting of samples rather than a change of the objective.
    The weights are not normalised (the loss shrinks as samples are learned).
    """

    def __init__(self, beta: float = 2.0, include_background: bool = True) -> None:
        super().__init__()
        if beta < 0:
            raise ValueError(f"beta must be >= 0, got {beta}")
        self.beta = beta
        self.gdl = GeneralizedDiceLoss(include_background=include_background, to_onehot_y=True, softmax=True,
                                       reduction="none", batch=False)

    def sample_losses(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``GDL_b``, shape ``(B,)``."""
        per_sample = self.gdl(logits.float(), index_target(target, logits).unsqueeze(1))
        return per_sample.reshape(logits.shape[0])

    def attention(self, sample_losses: torch.Tensor) -> torch.Tensor:
        """``a_b = (1 - dsc_b) ** beta`` from ``GDL_b`` (``dsc_b = 1 - GDL_b``), no gradient."""
        with torch.no_grad():
            dsc = 1.0 - sample_losses.detach()
            return (1.0 - dsc).clamp(min=0.0) ** self.beta

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        losses = self.sample_losses(logits, target)
        return (self.attention(losses) * losses).mean()
