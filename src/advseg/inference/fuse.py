"""Inference-only rewrites of a trained segmenter S: batch norm folded into the convolutions.

In eval mode a batch norm is a fixed per-channel affine map, ``y = gamma * (x - mu) / sqrt(var + eps)
+ beta``, so a convolution followed by it is one convolution with weight ``W * gamma / sqrt(var +
eps)`` (per output channel) and bias ``beta + (b - mu) * gamma / sqrt(var + eps)``. Folding removes
one full pass over every feature map per convolution (the norm reads and writes the whole
``(B, C, Z, Y, X)`` tensor) and, in bf16, one rounding step. Instance norm depends on the input and
cannot be folded; those layers are left as they are.
"""

from __future__ import annotations

import copy

from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from advseg.networks.blocks import ResidualBlock

_CONVS = (nn.Conv2d, nn.Conv3d)
_BNS = (nn.BatchNorm2d, nn.BatchNorm3d)


def _foldable(conv: nn.Module, norm: nn.Module) -> bool:
    return (isinstance(conv, _CONVS) and isinstance(norm, _BNS) and norm.track_running_stats
            and norm.running_mean is not None)


def fold_batchnorm(net: nn.Module, inplace: bool = False) -> tuple[nn.Module, int]:
    """``net`` (or an eval-mode copy of it) with every convolution -> batch norm pair merged into one
    convolution (:func:`torch.nn.utils.fusion.fuse_conv_bn_eval`; the norm becomes ``nn.Identity``).

    Pairs found: ``conv1 -> norm1`` and ``conv2 -> norm2`` of each :class:`ResidualBlock`, and
    consecutive ``Conv, BatchNorm`` entries of any ``nn.Sequential`` (projection shortcuts, the
    multi-scale pooling's 1 x 1 fusion). Outputs equal the unfolded network's in eval mode up to
    float rounding. Returns ``(network, number of norms folded)``; the result is for inference only
    (training it would train a network without norms).
    """
    if not inplace:
        net = copy.deepcopy(net)
    net.eval()
    folded = 0
    for module in net.modules():
        if isinstance(module, ResidualBlock):
            for c, n in (("conv1", "norm1"), ("conv2", "norm2")):
                conv, norm = getattr(module, c), getattr(module, n)
                if _foldable(conv, norm):
                    setattr(module, c, fuse_conv_bn_eval(conv, norm))
                    setattr(module, n, nn.Identity())
                    folded += 1
        elif isinstance(module, nn.Sequential):
            for i in range(len(module) - 1):
                if _foldable(module[i], module[i + 1]):
                    module[i] = fuse_conv_bn_eval(module[i], module[i + 1])
                    module[i + 1] = nn.Identity()
                    folded += 1
    return net, folded
