"""advseg.losses: the voxel-wise segmentation losses L_vox and deep supervision."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from torch import nn

from advseg.config import LOSS_NAMES, LossConfig
from advseg.errors import InputError
from advseg.losses.deep_supervision import DeepSupervisionLoss, main_output
from advseg.losses.dice import Dice, DiceCE, GeneralizedDiceAttention
from advseg.losses.weighted_ce import AdaptiveWeightedCE, CrossEntropy, class_voxel_counts, index_target


def _base_loss(cfg: LossConfig, num_classes: int,
               class_voxel_counts: Sequence[float] | np.ndarray | None) -> nn.Module:
    if cfg.name == "adaptive_ce":
        return AdaptiveWeightedCE(num_classes, class_voxel_counts, momentum=cfg.dice_momentum,
                                  ignore_index=cfg.ignore_index)
    if cfg.name == "ce":
        return CrossEntropy(ignore_index=cfg.ignore_index)
    if cfg.name == "dice":
        return Dice(include_background=cfg.dice_include_background, batch=cfg.dice_batch)
    if cfg.name == "dice_ce":
        return DiceCE(include_background=cfg.dice_include_background, batch=cfg.dice_batch)
    if cfg.name == "gdice_attention":
        return GeneralizedDiceAttention(beta=cfg.attention_beta,
                                        include_background=cfg.dice_include_background)
    raise InputError("loss.name", f"unknown loss '{cfg.name}' (choices: {', '.join(LOSS_NAMES)})")


def build_loss(cfg: LossConfig, num_classes: int,
               class_voxel_counts: Sequence[float] | np.ndarray | None = None) -> DeepSupervisionLoss:
    """The voxel-wise loss named by ``cfg.name``, wrapped in :class:`DeepSupervisionLoss` with
    ``cfg.deep_supervision_weights`` (so it takes a tensor or a network's deep-supervision tuple).

    ``class_voxel_counts`` (``N_c``, see :func:`class_voxel_counts`) feed ``adaptive_ce``'s frequency
    term; without them that term is 0. ``cfg.ignore_index`` applies to ``ce`` and ``adaptive_ce``.
    Call ``.train()`` / ``.eval()`` on the returned module along with the network: ``adaptive_ce``
    updates its running Dice only in training mode. Bad settings raise :class:`InputError`.
    """
    try:
        base = _base_loss(cfg, num_classes, class_voxel_counts)
        return DeepSupervisionLoss(base, cfg.deep_supervision_weights)
    except ValueError as exc:
        raise InputError("loss", str(exc)) from None


__all__ = [
    "LOSS_NAMES",
    "AdaptiveWeightedCE",
    "CrossEntropy",
    "DeepSupervisionLoss",
    "Dice",
    "DiceCE",
    "GeneralizedDiceAttention",
    "build_loss",
    "class_voxel_counts",
    "index_target",
    "main_output",
]
