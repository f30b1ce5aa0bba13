"""Building blocks of the segmenter S: dimension-generic layers, the residual block and the pooling
modules that halve the resolution between encoder levels.

All blocks work on ``(B, C, Z, Y, X)`` tensors when ``spatial_dims=3`` and ``(B, C, Y, X)`` when
``spatial_dims=2``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from advseg.config import ACTS, NORMS, POOLINGS  # the names a config may use

_CONV = {2: nn.Conv2d, 3: nn.Conv3d}
_CONV_T = {2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}
_MAXPOOL = {2: nn.MaxPool2d, 3: nn.MaxPool3d}
_BATCHNORM = {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
_INSTANCENORM = {2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}
_DROPOUT = {2: nn.Dropout2d, 3: nn.Dropout3d}


def check_spatial_dims(spatial_dims: int) -> None:
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")


def conv(spatial_dims: int, in_ch: int, out_ch: int, kernel: int = 3, stride: int = 1,
         bias: bool = True) -> nn.Module:
    """A ``kernel``-wide convolution with 'same' padding (odd kernels) and the given stride."""
    return _CONV[spatial_dims](in_ch, out_ch, kernel, stride=stride, padding=kernel // 2, bias=bias)


def up_conv(spatial_dims: int, in_ch: int, out_ch: int) -> nn.Module:
    """Transposed convolution, kernel 2, stride 2: doubles every spatial size exactly."""
    return _CONV_T[spatial_dims](in_ch, out_ch, kernel_size=2, stride=2)


def norm_layer(norm: str, spatial_dims: int, channels: int) -> nn.Module:
    """``batch`` -> BatchNorm; ``instance`` -> InstanceNorm with learned affine (as in nnU-Net)."""
    if norm == "batch":
        return _BATCHNORM[spatial_dims](channels)
    if norm == "instance":
        return _INSTANCENORM[spatial_dims](channels, affine=True)
    raise ValueError(f"norm must be one of {', '.join(NORMS)}, got {norm!r}")


def act_layer(act: str) -> nn.Module:
    """``relu`` or ``leakyrelu`` (negative slope 0.01)."""
    if act == "relu":
        return nn.ReLU(inplace=True)
    if act == "leakyrelu":
        return nn.LeakyReLU(0.01, inplace=True)
    raise ValueError(f"act must be one of {', '.join(ACTS)}, got {act!r}")


class ResidualBlock(nn.Module):
    """``y = act(norm(conv3(act(norm(conv3(x))))) + shortcut(x))``.

    ``shortcut`` is the identity when ``in_ch == out_ch`` and a 1 x 1 (x 1) convolution followed by
    a norm otherwise (projection shortcut, He et al. 2016). Convolutions followed by a norm carry no
    bias (the norm's shift replaces it). ``dropout`` (channel dropout) sits between the two
    convolutions. Shape: ``(B, in_ch, *S) -> (B, out_ch, *S)``.
    """

    def __init__(self, spatial_dims: int, in_ch: int, out_ch: int, norm: str = "batch",
                 act: str = "relu", dropout: float = 0.0) -> None:
        super().__init__()
        self.conv1 = conv(spatial_dims, in_ch, out_ch, 3, bias=False)
        self.norm1 = norm_layer(norm, spatial_dims, out_ch)
        self.act1 = act_layer(act)
        self.drop = _DROPOUT[spatial_dims](dropout) if dropout > 0 else nn.Identity()
        self.conv2 = conv(spatial_dims, out_ch, out_ch, 3, bias=False)
        self.norm2 = norm_layer(norm, spatial_dims, out_ch)
        if in_ch == out_ch:
            self.shortcut: nn.Module = nn.Identity()
        else:
            self.shortcut = nn.Sequential(conv(spatial_dims, in_ch, out_ch, 1, bias=False),
                                          norm_layer(norm, spatial_dims, out_ch))
        self.act2 = act_layer(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.drop(self.act1(self.norm1(self.conv1(x))))
        y = self.norm2(self.conv2(y))
        return self.act2(y + self.shortcut(x))


def residual_stage(spatial_dims: int, in_ch: int, out_ch: int, n_blocks: int, norm: str, act: str,
                   dropout: float) -> nn.Sequential:
    """``n_blocks`` residual blocks; the first maps ``in_ch -> out_ch``, the rest keep ``out_ch``."""
    if n_blocks < 1:
        raise ValueError(f"res_blocks must be >= 1, got {n_blocks}")
    blocks = [ResidualBlock(spatial_dims, in_ch, out_ch, norm, act, dropout)]
    blocks += [ResidualBlock(spatial_dims, out_ch, out_ch, norm, act, dropout) for _ in range(n_blocks - 1)]
    return nn.Sequential(*blocks)


def _mean3_stride2_along(x: torch.Tensor, axis: int) -> torch.Tensor:
    """Mean over windows ``[2i-1, 2i+1]`` (stride 2) along ``axis``, out-of-range positions excluded."""
    index: list[slice] = [slice(None)] * x.ndim
    index[axis] = slice(0, None, 2)
    even = x[tuple(index)]
    index[axis] = slice(1, None, 2)
    odd = x[tuple(index)]
    m, k = even.shape[axis], odd.shape[axis]
    total = even.clone(memory_format=torch.preserve_format)
    total.narrow(axis, 0, k).add_(odd)  # x[2i+1]
    if m > 1:
        total.narrow(axis, 1, m - 1).add_(odd.narrow(axis, 0, m - 1))  # x[2i-1]
    i = torch.arange(m, device=x.device)
    count = 1.0 + (i < k).to(x.dtype) + (i >= 1).to(x.dtype)
    shape = [1] * x.ndim
    shape[axis] = m
    return total / count.view(shape)


def avg_pool3_stride2(x: torch.Tensor) -> torch.Tensor:
    """``avg_pool(kernel=3, stride=2, padding=1, count_include_pad=False)`` over all spatial axes.

    PyTorch's CPU ``avg_pool3d`` has no channels-last kernel: on a ``channels_last_3d`` tensor it is
    ~4x slower and returns a contiguous tensor (forcing a copy in the following concatenation). For
    channels-last inputs the same mean is computed separably (one strided 3-tap mean per axis), which
    keeps the layout; contiguous inputs use ``avg_pool``, the faster one there.
    """
    spatial = x.ndim - 2
    if spatial == 3 and x.is_contiguous(memory_format=torch.channels_last_3d) and not x.is_contiguous():
        for axis in range(2, x.ndim):
            x = _mean3_stride2_along(x, axis)
        return x
    pool = F.avg_pool3d if spatial == 3 else F.avg_pool2d
    return pool(x, kernel_size=3, stride=2, padding=1, count_include_pad=False)


class MultiScalePool(nn.Module):
    """Multi-scale pooling: halves every spatial size while aggregating context at several scales.

    Four parallel branches, all with stride 2, each ``(B, C, *S) -> (B, C, *S/2)``:

    * ``max2``: max-pool, kernel 2 - the baseline's down-sampling; keeps the strongest response of
      each non-overlapping 2-cell.
    * ``max3``: max-pool, kernel 3, padding 1 - overlapping windows, so a response on a cell border
      is not lost to the grid phase, and a 3-wide neighbourhood is summarised.
    * ``avg3``: average-pool, kernel 3, padding 1 (padding excluded from the mean) - the mean
      context, which keeps weak, diffuse evidence that max-pooling drops (low-contrast soft-tissue
      boundaries such as bladder / prostate / rectum). (:func:`avg_pool3_stride2`: layout-preserving.)
    * ``conv3``: a learned 3-wide convolution with stride 2 (``C -> C``) - data-driven down-sampling.

    Fusion: the branches are concatenated (``4C`` channels) and mixed by a 1 x 1 convolution back to
    ``C`` channels, then norm and activation. Concatenation + 1 x 1 convolution (rather than a sum)
    lets the network weight each scale per output channel, so it can fall back to plain max-pooling
    where that is best; norm + activation make the output a post-activation feature map like the
    max-pooled input the next residual block would otherwise see.

    With kernel 3 / padding 1 / stride 2 the output size is ``floor((n - 1) / 2) + 1``, which equals
    ``n / 2`` (the max2 size) for every even ``n``; the network checks divisibility before calling.
    """

    def __init__(self, spatial_dims: int, channels: int, norm: str = "batch", act: str = "relu") -> None:
        super().__init__()
        self.max2 = _MAXPOOL[spatial_dims](kernel_size=2, stride=2)
        self.max3 = _MAXPOOL[spatial_dims](kernel_size=3, stride=2, padding=1)
        self.conv3 = conv(spatial_dims, channels, channels, 3, stride=2, bias=False)
        self.fuse = nn.Sequential(
            conv(spatial_dims, 4 * channels, channels, 1, bias=False),
            norm_layer(norm, spatial_dims, channels),
            act_layer(act),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = [self.max2(x), self.max3(x), avg_pool3_stride2(x), self.conv3(x)]
        return self.fuse(torch.cat(branches, dim=1))


def down_layer(pooling: str, spatial_dims: int, channels: int, norm: str, act: str) -> nn.Module:
    """The resolution-halving layer between encoder levels: ``max`` (max-pool 2) or ``multiscale``."""
    if pooling == "max":
        return _MAXPOOL[spatial_dims](kernel_size=2, stride=2)
    if pooling == "multiscale":
        return MultiScalePool(spatial_dims, channels, norm, act)
    raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
