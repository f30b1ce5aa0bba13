"""Deep supervision: one voxel-wise loss applied to every full-resolution output of the segmenter."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

Outputs = torch.Tensor | Sequence[torch.Tensor]


def main_output(outputs: Outputs) -> torch.Tensor:
    """The segmentation logits of a network output: the tensor itself, or the first (fused) element of
    a deep-supervision tuple."""
    if isinstance(outputs, torch.Tensor):
        return outputs
    return outputs[0]


class DeepSupervisionLoss(nn.Module):
    """``L = sum_k weights[k] * base(outputs[k], target)``.

    ``outputs`` is what the segmenter returns: a tensor ``(B, C, *S)`` (then ``L = base(outputs,
    target)``, whatever the weights) or, from :class:`~advseg.networks.ResUNet` with ``aux=True`` in
    training mode, the tuple ``(fused, up(aux_1/2), up(aux_1/4))`` of full-resolution logits. With the
    default weights ``(1.0, 0.5, 0.25)``: ``L = L(fused) + 0.5 L(aux_1/2) + 0.25 L(aux_1/4)`` - the
    auxiliary heads get the same relative weights as in the fused output. Outputs beyond
    ``len(weights)`` and outputs with weight 0 are not evaluated (``weights=(1.0,)`` supervises the
    fused output only). The weights are not normalised, so a single-output network sees the plain
    base loss.

    A stateful base loss (one with ``update_dice``, e.g. :class:`AdaptiveWeightedCE`) is updated
    once per call, in training mode, from the fused output, and its pure ``compute`` is applied to
    every output.
    """

    def __init__(self, base: nn.Module, weights: Sequence[float] = (1.0, 0.5, 0.25)) -> None:
        super().__init__()
        weights = tuple(float(w) for w in weights)
        if not weights or weights[0] <= 0 or min(weights) < 0:
            raise ValueError("deep-supervision weights must be >= 0 with a positive first one, "
                             f"got {list(weights)}")
        self.base = base
        self.weights = weights

    def forward(self, outputs: Outputs, target: torch.Tensor) -> torch.Tensor:
        if isinstance(outputs, torch.Tensor):
            return self.base(outputs, target)
        outputs = list(outputs)
        if not outputs:
            raise ValueError("no outputs to supervise")
        stateful = hasattr(self.base, "update_dice") and hasattr(self.base, "compute")
        if stateful and self.training:
            self.base.update_dice(outputs[0], target)
        loss_fn = self.base.compute if stateful else self.base
        total = None
        for out, w in zip(outputs, self.weights, strict=False):
            if w == 0:
                continue
            term = w * loss_fn(out, target)
            total = term if total is None else total + term
        return total

    def extra_repr(self) -> str:
        return f"weights={self.weights}"
