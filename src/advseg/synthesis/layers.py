"""PGGAN building blocks in 3D (Karras et al. 2018, "Progressive growing of GANs", section 4).

* Equalized learning rate (4.1): weights are drawn from N(0, 1) and scaled at run time by He's
  constant ``c = gain / sqrt(fan_in)``, so Adam's per-parameter step is equally effective for every
  layer whatever its fan-in.
* Pixel normalization (4.2): ``b = a / sqrt(mean_c(a^2) + 1e-8)`` per voxel, over channels.
* Minibatch standard deviation (3): the standard deviation of each feature and voxel over a group
  of samples, averaged to one value per group and appended as an extra channel.

Tensors are ``(B, C, Z, Y, X)``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class EqConv3d(nn.Module):
    """3D convolution with equalized learning rate; ``padding="same"`` for odd kernels when ``pad``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int, int],
                 gain: float = math.sqrt(2.0), pad: bool = True) -> None:
        super().__init__()
        k = (kernel_size,) * 3 if isinstance(kernel_size, int) else tuple(kernel_size)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, *k))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.scale = gain / math.sqrt(in_channels * math.prod(k))
        self.padding = tuple(s // 2 for s in k) if pad else 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv3d(x, self.weight * self.scale, self.bias, padding=self.padding)


class EqLinear(nn.Module):
    """Fully connected layer with equalized learning rate."""

    def __init__(self, in_features: int, out_features: int, gain: float = math.sqrt(2.0)) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(out_features))
        self.scale = gain / math.sqrt(in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.scale, self.bias)


def pixel_norm(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Normalize each voxel's feature vector to unit RMS over channels: ``(B, C, ...)`` -> same."""
    return x * torch.rsqrt(x.pow(2).mean(dim=1, keepdim=True) + eps)


def minibatch_std(x: torch.Tensor, group_size: int) -> torch.Tensor:
    """Append the minibatch standard deviation channel: ``(B, C, Z, Y, X)`` -> ``(B, C + 1, Z, Y, X)``.

    The batch is split into groups of ``g`` samples, ``g`` the largest divisor of ``B`` not above
    ``group_size`` (PGGAN requires ``B`` divisible by the group size; this keeps odd batches usable).
    """
    b = x.shape[0]
    g = max(d for d in range(1, min(group_size, b) + 1) if b % d == 0)
    y = x.reshape(g, b // g, *x.shape[1:]).float()  # sample i is in group i % (B / g), as PGGAN
    y = (y - y.mean(dim=0, keepdim=True)).pow(2).mean(dim=0)  # variance over each group
    y = torch.sqrt(y + 1e-8).mean(dim=(1, 2, 3, 4))  # (B / g,)
    y = y.to(x.dtype).reshape(-1, 1, 1, 1, 1).repeat(g, 1, *x.shape[2:])
    return torch.cat([x, y], dim=1)


def upsample(x: torch.Tensor, factor: tuple[int, int, int]) -> torch.Tensor:
    """Nearest-neighbour up-sampling by an integer factor per axis (1 keeps the axis)."""
    return x if factor == (1, 1, 1) else F.interpolate(x, scale_factor=factor, mode="nearest")


def downsample(x: torch.Tensor, factor: tuple[int, int, int]) -> torch.Tensor:
    """Average pooling by an integer factor per axis (real volumes and D's down-sampling)."""
    return x if factor == (1, 1, 1) else F.avg_pool3d(x, kernel_size=factor, stride=factor)
