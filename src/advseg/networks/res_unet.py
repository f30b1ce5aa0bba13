"""The residual U-Net family (the segmenter S of the pelvic CT study).

``ResUNet(pooling="max", aux=False)`` is the study's ``3d_res_Unet`` baseline; ``pooling="multiscale"``
and ``aux=True`` are its two additions (multi-scale pooling, two auxiliary classifiers).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from advseg.errors import InputError
from advseg.networks.blocks import (
    ACTS,
    NORMS,
    POOLINGS,
    act_layer,
    check_spatial_dims,
    conv,
    down_layer,
    norm_layer,
    residual_stage,
    up_conv,
)


class ResUNet(nn.Module):
    """Residual U-Net, 2D or 3D.

    Architecture (``L = len(channels)`` resolution levels; level ``l`` has ``channels[l]`` features
    at resolution ``1 / 2**l``):

    * encoder level 0: ``res_blocks`` residual blocks ``in_channels -> channels[0]``;
      level ``l > 0``: down-sampling (``pooling``: stride-2 max-pool or :class:`MultiScalePool`) then
      ``res_blocks`` residual blocks ``channels[l-1] -> channels[l]``. Level ``L-1`` is the bottleneck.
    * decoder level ``l = L-2 .. 0``: transposed convolution (kernel 2, stride 2,
      ``channels[l+1] -> channels[l]``), concatenation with the encoder skip of level ``l``
      (``2 * channels[l]``), ``res_blocks`` residual blocks ``-> channels[l]``.
      Up-sampling choice: a transposed convolution is learned, exact for even sizes and cheaper than
      trilinear interpolation followed by a 3-wide convolution (8 vs 27 weights per channel pair).
    * classifier: 1 x 1 (x 1) convolution ``channels[0] -> out_channels`` (logits, no softmax).

    The paper preset uses ``channels=(64, 128, 256)``: three levels (full, 1/2, 1/4 resolution),
    two down-samplings, as the study's widths list three levels; on a 16 x 128 x 128 slab the
    bottleneck is 4 x 32 x 32. More levels (e.g. a 1/8 bottleneck with ``(64, 128, 256, 512)``) are
    supported. Every input spatial size must be divisible by ``2 ** (L - 1)``; otherwise forward raises
    :class:`InputError` naming the shape.

    Strided first stage (``stem_stride=2``, a speed variant, not the study's network): a 3-wide
    convolution with in-plane stride 2 (``(1, 2, 2)``: Z keeps its 16 slices) + norm + activation
    ``in_channels -> channels[0]`` before encoder level 0, so the whole U-Net above runs at half the
    in-plane resolution (4x fewer voxels at the widest level; MONAI's ``UNet`` strides its first
    layer the same way), and a transposed convolution (kernel = stride = ``(1, 2, 2)``) + norm +
    activation back to full resolution before the classifier. Sizes must then be divisible by
    ``2 ** levels``.

    Auxiliary classifiers (``aux=True``): ``len(aux_weights)`` 1 x 1 convolutions on the decoder
    features at 1/2, 1/4, ... resolution (decoder level ``k = 1 .. len(aux_weights)``; the deepest
    level's "decoder feature" is the bottleneck output, e.g. the 1/4 head of a 3-level network),
    each up-sampled to full resolution by (bi/tri)linear interpolation (``align_corners=False``)::

        fused = main + aux_weights[0] * up(aux_1/2) + aux_weights[1] * up(aux_1/4)

    Forward contract:

    * ``aux=False``: a tensor ``(B, out_channels, *S)`` in both modes.
    * ``aux=True``, eval mode: the fused logits ``(B, out_channels, *S)``.
    * ``aux=True``, training mode: a tuple ``(fused, up(aux_1/2), up(aux_1/4), ...)`` of full-resolution
      logits, the fused output first (deep supervision; see
      :class:`advseg.losses.DeepSupervisionLoss`, whose weights ``(1.0, 0.5, 0.25)`` apply to these
      outputs in this order). ``self.deep_supervision`` is True exactly when training-mode forward
      returns a tuple; :meth:`forward_heads` gives ``main``, the aux logits and ``fused`` in any mode.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        channels: Sequence[int] = (64, 128, 256),
        res_blocks: int = 1,
        pooling: str = "max",
        aux: bool = False,
        aux_weights: Sequence[float] = (0.5, 0.25),
        norm: str = "batch",
        act: str = "relu",
        dropout: float = 0.0,
        stem_stride: int = 1,
    ) -> None:
        super().__init__()
        check_spatial_dims(spatial_dims)
        channels = tuple(int(c) for c in channels)
        if len(channels) < 2:
            raise ValueError(f"channels needs at least 2 levels, got {list(channels)}")
        if min(channels) < 1 or in_channels < 1 or out_channels < 1:
            raise ValueError("channel counts must be positive")
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {', '.join(NORMS)}, got {norm!r}")
        if act not in ACTS:
            raise ValueError(f"act must be one of {', '.join(ACTS)}, got {act!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if stem_stride not in (1, 2):
            raise ValueError(f"stem_stride must be 1 or 2, got {stem_stride}")
        aux_weights = tuple(float(w) for w in aux_weights) if aux else ()
        if aux and not 1 <= len(aux_weights) <= len(channels) - 1:
            raise ValueError(f"aux needs 1 to {len(channels) - 1} aux_weights for {len(channels)} levels, "
                             f"got {list(aux_weights)}")
        self.spatial_dims = spatial_dims
        self.channels = channels
        self.levels = len(channels)
        self.aux = bool(aux)
        self.aux_weights = aux_weights
        self._interp = "trilinear" if spatial_dims == 3 else "bilinear"

        def stage(in_ch: int, out_ch: int) -> nn.Sequential:
            return residual_stage(spatial_dims, in_ch, out_ch, res_blocks, norm, act, dropout)

        self.stem_stride = int(stem_stride)
        self.stem: nn.Module = nn.Identity()
        self.stem_up: nn.Module = nn.Identity()
        first_in = in_channels
        if self.stem_stride == 2:
            # In-plane only: the 16-slice slabs of the study would otherwise reach a 1-slice
            # bottleneck (and a multi-scale pool on 2 slices) in a 4-level network.
            inplane = (1, 2, 2) if spatial_dims == 3 else (2, 2)
            conv_cls = nn.Conv3d if spatial_dims == 3 else nn.Conv2d
            up_cls = nn.ConvTranspose3d if spatial_dims == 3 else nn.ConvTranspose2d
            self.stem = nn.Sequential(
                conv_cls(in_channels, channels[0], 3, stride=inplane, padding=1, bias=False),
                norm_layer(norm, spatial_dims, channels[0]), act_layer(act))
            self.stem_up = nn.Sequential(
                up_cls(channels[0], channels[0], kernel_size=inplane, stride=inplane, bias=False),
                norm_layer(norm, spatial_dims, channels[0]), act_layer(act))
            first_in = channels[0]
        self.encoder = nn.ModuleList([stage(first_in, channels[0])])
        self.down = nn.ModuleList()
        for lvl in range(1, self.levels):
            self.down.append(down_layer(pooling, spatial_dims, channels[lvl - 1], norm, act))
            self.encoder.append(stage(channels[lvl - 1], channels[lvl]))
        # decoder modules indexed by the level they produce (0 .. L-2)
        self.up = nn.ModuleList(up_conv(spatial_dims, channels[lvl + 1], channels[lvl])
                                for lvl in range(self.levels - 1))
        self.decoder = nn.ModuleList(stage(2 * c, c) for c in channels[:-1])
        self.head = conv(spatial_dims, channels[0], out_channels, 1)
        self.aux_heads = nn.ModuleList(conv(spatial_dims, channels[k], out_channels, 1)
                                       for k in range(1, len(aux_weights) + 1))

    @property
    def deep_supervision(self) -> bool:
        """True when training-mode forward returns the tuple ``(fused, aux_1/2, aux_1/4, ...)``."""
        return self.aux

    @property
    def size_divisor(self) -> int:
        """Every input spatial size must be a multiple of this (``2 ** (levels - 1)``)."""
        return 2 ** (self.levels - 1) * self.stem_stride

    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != self.spatial_dims + 2:
            axes = "B, C, Z, Y, X" if self.spatial_dims == 3 else "B, C, Y, X"
            raise InputError(None, f"network input must be ({axes}), got shape {tuple(x.shape)}")
        spatial = tuple(x.shape[2:])
        if any(s % self.size_divisor for s in spatial):
            raise InputError(None, f"network input spatial size {spatial} must be divisible by "
                                   f"{self.size_divisor} (2^(levels-1) for {self.levels} levels) in every "
                                   "dimension; change data.patch_size or network.channels")

    def forward_heads(self, x: torch.Tensor) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        """All outputs, any mode: ``{"main": (B, C, *S), "aux": [up(aux_1/2), ...] (each (B, C, *S)),
        "fused": main + sum_k aux_weights[k] * aux[k]}`` (``fused is main`` without aux)."""
        self._check_input(x)
        skips = []
        h = self.stem(x)
        for lvl in range(self.levels):
            if lvl > 0:
                h = self.down[lvl - 1](h)
            h = self.encoder[lvl](h)
            skips.append(h)
        # decoder features by level; the deepest is the bottleneck output
        features = {self.levels - 1: h}
        for lvl in range(self.levels - 2, -1, -1):
            h = self.decoder[lvl](torch.cat([self.up[lvl](h), skips[lvl]], dim=1))
            features[lvl] = h
        main = self.head(self.stem_up(h))
        size = tuple(x.shape[2:])
        aux = [F.interpolate(head(features[k + 1]), size=size, mode=self._interp, align_corners=False)
               for k, head in enumerate(self.aux_heads)]
        fused = main
        for w, a in zip(self.aux_weights, aux, strict=True):
            fused = fused + w * a
        return {"main": main, "aux": aux, "fused": fused}

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """``x``: ``(B, in_channels, *S)``. Returns logits; see the class docstring for the contract."""
        out = self.forward_heads(x)
        if self.aux and self.training:
            return (out["fused"], *out["aux"])
        return out["fused"]
