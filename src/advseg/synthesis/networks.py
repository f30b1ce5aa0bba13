"""3D PGGAN generator and discriminator with mirrored architectures (Karras et al. 2018, Table 2).

Both networks hold the blocks of every stage from the start; ``stage`` selects how many are used,
so the parameter set (and a checkpoint's keys) never changes while the networks grow.

Generator, for ``stages = [r_0, r_1, ..., r_S]`` (``r_0`` = 4 x 4 x 4) and ``channels = [c_0..c_S]``::

    z (B, L, r_0 / 2)  -> pixelnorm -> up x2 -> conv3 -> conv3        = h_0  (B, c_0, r_0)
    h_{s-1}            -> up (r_s / r_{s-1}) -> conv3 -> conv3        = h_s  (B, c_s, r_s)
    output at stage s, fade-in weight alpha:
        (1 - alpha) * up(toRGB_{s-1}(h_{s-1})) + alpha * toRGB_s(h_s)           (B, 1, r_s)

each conv3 followed by leaky ReLU (0.2) and pixel normalization; toRGB is a linear 1 x 1 x 1 conv.
The output is linear (no tanh), as PGGAN; samples are clipped to [-1, 1] when written as HU.

Discriminator, the mirror image::

    x (B, 1, r_s) -> fromRGB_s -> conv3 -> conv3 (c_s -> c_{s-1}) -> down  = g_{s-1} (B, c_{s-1}, r_{s-1})
    fade-in: g_{s-1} <- (1 - alpha) * fromRGB_{s-1}(down(x)) + alpha * g_{s-1}
    ... blocks s-1 .. 1 ...
    g_0 -> minibatch std -> conv3 -> conv (r_0, valid) -> linear -> score (B, 1)

Up-sampling is nearest neighbour and down-sampling average pooling, by the per-axis factor
``r_s / r_{s-1}`` (1 or 2, so the last step may be anisotropic, e.g. 64^3 -> 64 x 128 x 128).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from advseg.synthesis.config import GANConfig
from advseg.synthesis.layers import EqConv3d, EqLinear, downsample, minibatch_std, pixel_norm, upsample

Shape3 = tuple[int, int, int]


def _lrelu(x: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(x, 0.2)


def stage_factors(stages: Sequence[Sequence[int]]) -> list[Shape3]:
    """Per-axis resolution factor into each stage; ``(1, 1, 1)`` for the first."""
    out: list[Shape3] = [(1, 1, 1)]
    for prev, cur in zip(stages, stages[1:], strict=False):
        out.append(tuple(c // p for p, c in zip(prev, cur, strict=True)))  # type: ignore[arg-type]
    return out


class _GBlock(nn.Module):
    def __init__(self, cin: int, cout: int, factor: Shape3) -> None:
        super().__init__()
        self.factor = factor
        self.conv1 = EqConv3d(cin, cout, 3)
        self.conv2 = EqConv3d(cout, cout, 3)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        h = upsample(h, self.factor)
        h = pixel_norm(_lrelu(self.conv1(h)))
        return pixel_norm(_lrelu(self.conv2(h)))


class _DBlock(nn.Module):
    def __init__(self, cin: int, cout: int, factor: Shape3) -> None:
        super().__init__()
        self.factor = factor
        self.conv1 = EqConv3d(cin, cin, 3)
        self.conv2 = EqConv3d(cin, cout, 3)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        h = _lrelu(self.conv2(_lrelu(self.conv1(h))))
        return downsample(h, self.factor)


class Generator(nn.Module):
    """Maps noise ``(B, latent_channels, *stages[0] / 2)`` to a volume ``(B, 1, *stages[stage])``."""

    def __init__(self, stages: Sequence[Sequence[int]], channels: Sequence[int],
                 latent_channels: int) -> None:
        super().__init__()
        if len(stages) != len(channels):
            raise ValueError(f"{len(stages)} stages but {len(channels)} channel counts")
        self.stages = [tuple(int(v) for v in s) for s in stages]
        self.factors = stage_factors(self.stages)
        self.latent_shape = (latent_channels, *(v // 2 for v in self.stages[0]))
        self.input_block = _GBlock(latent_channels, channels[0], (2, 2, 2))
        self.blocks = nn.ModuleList(
            [_GBlock(channels[s - 1], channels[s], self.factors[s]) for s in range(1, len(stages))]
        )
        self.to_rgb = nn.ModuleList([EqConv3d(c, 1, 1, gain=1.0) for c in channels])

    @property
    def num_stages(self) -> int:
        return len(self.stages)

    def features(self, z: torch.Tensor, stage: int) -> list[torch.Tensor]:
        """Feature maps ``h_0 .. h_stage`` (``h_s``: ``(B, channels[s], *stages[s])``)."""
        if tuple(z.shape[1:]) != self.latent_shape:
            raise ValueError(f"noise shape {tuple(z.shape[1:])}, expected {self.latent_shape}")
        hs = [self.input_block(pixel_norm(z))]
        for s in range(1, stage + 1):
            hs.append(self.blocks[s - 1](hs[-1]))
        return hs

    def forward(self, z: torch.Tensor, stage: int | None = None, alpha: float = 1.0) -> torch.Tensor:
        """Volume ``(B, 1, *stages[stage])`` (default: the last stage); ``alpha`` fades in ``stage``."""
        stage = self.num_stages - 1 if stage is None else stage
        if not 0 <= stage < self.num_stages:
            raise ValueError(f"stage {stage} not in [0, {self.num_stages})")
        hs = self.features(z, stage)
        out = self.to_rgb[stage](hs[stage])
        if stage > 0 and alpha < 1.0:
            low = upsample(self.to_rgb[stage - 1](hs[stage - 1]), self.factors[stage])
            # lerp(a, b, 0) is exactly a: at alpha = 0 the output IS the previous stage's, up-sampled.
            out = torch.lerp(low, out, float(alpha))
        return out


class Discriminator(nn.Module):
    """Scores volumes ``(B, 1, *stages[stage])`` -> ``(B, 1)`` (WGAN critic: unbounded, higher = real)."""

    def __init__(self, stages: Sequence[Sequence[int]], channels: Sequence[int],
                 mbstd_group: int = 4) -> None:
        super().__init__()
        if len(stages) != len(channels):
            raise ValueError(f"{len(stages)} stages but {len(channels)} channel counts")
        self.stages = [tuple(int(v) for v in s) for s in stages]
        self.factors = stage_factors(self.stages)
        self.mbstd_group = mbstd_group
        self.from_rgb = nn.ModuleList([EqConv3d(1, c, 1) for c in channels])
        self.blocks = nn.ModuleList(
            [_DBlock(channels[s], channels[s - 1], self.factors[s]) for s in range(1, len(stages))]
        )
        c0 = channels[0]
        self.final_conv = EqConv3d(c0 + 1, c0, 3)
        self.final_dense = EqConv3d(c0, c0, self.stages[0], pad=False)  # r_0 -> 1 x 1 x 1
        self.final_linear = EqLinear(c0, 1, gain=1.0)

    @property
    def num_stages(self) -> int:
        return len(self.stages)

    def forward(self, x: torch.Tensor, stage: int | None = None, alpha: float = 1.0) -> torch.Tensor:
        stage = self.num_stages - 1 if stage is None else stage
        if not 0 <= stage < self.num_stages:
            raise ValueError(f"stage {stage} not in [0, {self.num_stages})")
        if tuple(x.shape[2:]) != self.stages[stage]:
            raise ValueError(f"input shape {tuple(x.shape[2:])}, stage {stage} expects {self.stages[stage]}")
        h = _lrelu(self.from_rgb[stage](x))
        if stage > 0:
            h = self.blocks[stage - 1](h)
            if alpha < 1.0:
                low = _lrelu(self.from_rgb[stage - 1](downsample(x, self.factors[stage])))
                h = torch.lerp(low, h, float(alpha))
            for s in range(stage - 1, 0, -1):
                h = self.blocks[s - 1](h)
        h = _lrelu(self.final_conv(minibatch_std(h, self.mbstd_group)))
        h = _lrelu(self.final_dense(h)).flatten(1)
        return self.final_linear(h)


def build_networks(cfg: GANConfig) -> tuple[Generator, Discriminator]:
    """G and D for a :class:`~advseg.synthesis.config.GANConfig`, initialised from the current RNG."""
    g = Generator(cfg.stages, cfg.channels, cfg.latent_channels)
    d = Discriminator(cfg.stages, cfg.channels, cfg.mbstd_group)
    return g, d
