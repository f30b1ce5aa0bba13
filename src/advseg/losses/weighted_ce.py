"""Cross-entropy losses: plain CE and the pelvic study's adaptive class-weighted CE.

All losses take ``logits`` ``(B, C, *S)`` (raw scores, no softmax) and ``target`` ``(B, *S)`` (or
``(B, 1, *S)``) int64 class indices, and return a scalar.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from advseg.errors import InputError
from advseg.ops import channel_argmax

_NO_IGNORE = -100  # torch's default ignore_index; never a class index here


def index_target(target: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """``target`` as ``(B, *S)`` int64 class indices (drops a singleton channel axis ``(B, 1, *S)``)."""
    if target.ndim == logits.ndim and target.shape[1] == 1:
        target = target[:, 0]
    if target.ndim != logits.ndim - 1 or target.shape != logits.shape[:1] + logits.shape[2:]:
        raise ValueError(f"target shape {tuple(target.shape)} does not match logits {tuple(logits.shape)}: "
                         "expected (B, *S) or (B, 1, *S)")
    return target.long()


def class_voxel_counts(labels: Iterable[np.ndarray], num_classes: int) -> np.ndarray:
    """``N_c``: the number of voxels of each class ``c = 0 .. num_classes-1`` over all ``labels``.

    Returns a float64 array ``(num_classes,)``; raises :class:`InputError` for a label value outside
    ``[0, num_classes)``.
    """
    counts = np.zeros(num_classes, dtype=np.float64)
    for i, lab in enumerate(labels):
        lab = np.asarray(lab)
        if lab.size == 0:
            continue
        lo, hi = int(lab.min()), int(lab.max())
        if lo < 0 or hi >= num_classes:
            bad = lo if lo < 0 else hi
            raise InputError(f"label #{i}", f"label value {bad} outside [0, {num_classes})")
        counts += np.bincount(lab.ravel().astype(np.int64), minlength=num_classes)
    return counts


class CrossEntropy(nn.Module):
    """Plain cross-entropy ``L = -1/N sum_i log p_{i, y_i}`` over the ``N`` non-ignored voxels."""

    def __init__(self, ignore_index: int | None = None) -> None:
        super().__init__()
        self.ignore_index = ignore_index

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        target = index_target(target, logits)
        ignore = _NO_IGNORE if self.ignore_index is None else self.ignore_index
        return F.cross_entropy(logits.float(), target, ignore_index=ignore)


class AdaptiveWeightedCE(nn.Module):
    """Class-weighted cross-entropy with weights that adapt to the running per-class Dice.

    Weights (pelvic CT study)::

        w_c = 2 - DSC_c + ln(N_all / N_c)

    * ``N_c``: voxels of class ``c`` over the training labels (``class_voxel_counts``),
      ``N_all = sum_c N_c``. A class with ``N_c = 0`` is counted as one voxel (``ln(N_all)``): its
      weight is then finite and irrelevant, since a class absent from every label never appears as a
      target. Without counts (``None``) the frequency term is 0: ``w_c = 2 - DSC_c``.
    * ``DSC_c``: exponential moving average of the hard Dice of class ``c`` on the training batches,
      ``DSC_c <- m * DSC_c + (1 - m) * dice_c(batch)``, ``m = momentum``. ``dice_c(batch) =
      2 |P_c & G_c| / (|P_c| + |G_c|)`` with ``P_c`` the voxels whose argmax prediction is ``c`` and
      ``G_c`` the target voxels of ``c``, pooled over the whole batch (ignored voxels excluded; under
      torchrun over the global batch of all ranks).
      Hard (argmax) Dice is the quantity the study reports, so the weights follow the metric. A class
      absent from both prediction and target of a batch has no Dice and keeps its running value.
      ``DSC_c`` starts at 0, so the first weights are ``2 + ln(N_all / N_c)`` (no class is
      considered learned yet). Computed under ``torch.no_grad``: the weights are constants for the
      gradient.

    Loss (voxel mean, as in the equation; not torch's ``sum(w_{y_i} l_i) / sum(w_{y_i})``, so the
    loss scale follows the weights)::

        L = -1/N sum_i w_{y_i} log softmax(logits)_{i, y_i}      over the N non-ignored voxels

    ``forward`` in training mode first updates ``DSC_c`` from this batch (:meth:`update_dice`), then
    returns :meth:`compute`; in eval mode it only computes (validation batches leave the weights
    alone). :class:`~advseg.losses.DeepSupervisionLoss` calls :meth:`update_dice` once on the fused
    output and :meth:`compute` on every output. ``running_dice``, ``log_freq`` and ``num_updates``
    are buffers, so they are saved in ``state_dict`` and resuming from a checkpoint is exact.
    """

    def __init__(self, num_classes: int, class_voxel_counts: Sequence[float] | np.ndarray | None = None,
                 momentum: float = 0.9, ignore_index: int | None = None) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        self.num_classes = num_classes
        self.momentum = momentum
        self.ignore_index = ignore_index
        log_freq = torch.zeros(num_classes, dtype=torch.float64)
        if class_voxel_counts is not None:
            counts = [float(c) for c in class_voxel_counts]
            if len(counts) != num_classes or min(counts) < 0:
                raise ValueError(f"class_voxel_counts must be {num_classes} non-negative numbers, "
                                 f"got {counts}")
            total = sum(counts)
            if total <= 0:
                raise ValueError("class_voxel_counts are all zero")
            log_freq = torch.tensor([math.log(total / max(c, 1.0)) for c in counts], dtype=torch.float64)
        self.register_buffer("log_freq", log_freq.float())
        self.register_buffer("running_dice", torch.zeros(num_classes))
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.int64))

    def class_weights(self) -> torch.Tensor:
        """``w_c = 2 - DSC_c + ln(N_all / N_c)``, shape ``(C,)``."""
        return 2.0 - self.running_dice + self.log_freq

    @torch.no_grad()
    def batch_dice(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Hard Dice per class pooled over the batch, ``(C,)``; NaN where the class is in neither the
        prediction nor the target."""
        target = index_target(target, logits)
        pred = channel_argmax(logits)
        valid = None if self.ignore_index is None else target != self.ignore_index
        classes = torch.arange(self.num_classes, device=logits.device).view(-1, *([1] * target.ndim))
        p = pred.unsqueeze(0) == classes  # (C, B, *S)
        g = target.unsqueeze(0) == classes
        if valid is not None:
            p = p & valid
            g = g & valid
        dims = tuple(range(1, p.ndim))
        inter = (p & g).sum(dims).double()
        denom = p.sum(dims).double() + g.sum(dims).double()
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            # under torchrun: pooled over the global batch (every rank's), so all ranks keep the same
            # weights and N ranks x batch b train as one process with batch N b
            counts = torch.cat([inter, denom])
            dist.all_reduce(counts)
            inter, denom = counts[: inter.numel()], counts[inter.numel() :]
        dice = 2.0 * inter / denom  # 0/0 -> NaN for absent classes
        return dice.float()

    @torch.no_grad()
    def update_dice(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        """``DSC_c <- m * DSC_c + (1 - m) * dice_c(batch)`` for every class present in the batch."""
        dice = self.batch_dice(logits.detach(), target).to(self.running_dice.device)
        present = ~torch.isnan(dice)
        updated = self.momentum * self.running_dice + (1.0 - self.momentum) * torch.nan_to_num(dice)
        self.running_dice.copy_(torch.where(present, updated, self.running_dice))
        self.num_updates += 1

    def compute(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The weighted CE with the current weights (no state change)."""
        target = index_target(target, logits)
        ignore = _NO_IGNORE if self.ignore_index is None else self.ignore_index
        weight = self.class_weights().to(device=logits.device, dtype=torch.float32)
        per_voxel = F.cross_entropy(logits.float(), target, weight=weight, ignore_index=ignore,
                                    reduction="none")
        n_valid = (target != ignore).sum().clamp(min=1)
        return per_voxel.sum() / n_valid

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.update_dice(logits, target)
        return self.compute(logits, target)

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, momentum={self.momentum}, ignore_index={self.ignore_index}"
