"""Build the segmenter S from a :class:`~advseg.config.NetworkConfig`."""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

from advseg.config import MONAI_PREFIX, NetworkConfig, monai_segmenters
from advseg.errors import InputError
from advseg.networks.res_unet import ResUNet


def _choices() -> str:
    return ", ".join(["res_unet", *(MONAI_PREFIX + n for n in sorted(monai_segmenters()))])


def _build_res_unet(cfg: NetworkConfig) -> nn.Module:
    args: dict[str, Any] = dict(
        spatial_dims=cfg.spatial_dims, in_channels=cfg.in_channels, out_channels=cfg.out_channels,
        channels=tuple(cfg.channels), res_blocks=cfg.res_blocks, pooling=cfg.pooling, aux=cfg.aux,
        aux_weights=tuple(cfg.aux_weights), norm=cfg.norm, act=cfg.act, dropout=cfg.dropout,
    )
    unknown = set(cfg.kwargs) - set(inspect.signature(ResUNet).parameters)
    if unknown:
        raise InputError("network.kwargs", f"res_unet does not take {', '.join(sorted(unknown))}")
    args.update(cfg.kwargs)
    try:
        return ResUNet(**args)
    except ValueError as exc:
        raise InputError("network", str(exc)) from None


def _build_monai(cfg: NetworkConfig, class_name: str) -> nn.Module:
    nets = monai_segmenters()
    if class_name not in nets:
        raise InputError("network.name",
                         f"unknown network '{MONAI_PREFIX}{class_name}' (choices: {_choices()})")
    cls = nets[class_name]
    params = inspect.signature(cls).parameters
    standard: dict[str, Any] = dict(spatial_dims=cfg.spatial_dims, in_channels=cfg.in_channels,
                                    out_channels=cfg.out_channels)
    # The size presets set ``channels``; UNet-like classes (channels + strides) follow them.
    if "channels" in params and "channels" not in cfg.kwargs:
        standard["channels"] = tuple(cfg.channels)
        if "strides" in params and "strides" not in cfg.kwargs:
            standard["strides"] = (2,) * (len(cfg.channels) - 1)
    if "dropout" in params and cfg.dropout > 0:
        standard["dropout"] = cfg.dropout
    args = {k: v for k, v in standard.items() if k in params}
    args.update(cfg.kwargs)
    try:
        return cls(**args)
    except (TypeError, ValueError, AssertionError) as exc:
        raise InputError("network",
                         f"cannot build {MONAI_PREFIX}{class_name} with {sorted(args)}: {exc}") from None


def build_network(cfg: NetworkConfig) -> nn.Module:
    """The segmenter named by ``cfg.name``.

    * ``res_unet``: :class:`ResUNet` from the config fields (``cfg.kwargs`` may override any of its
      arguments).
    * ``monai:<Class>``: ``monai.networks.nets.<Class>`` built with those of ``spatial_dims``,
      ``in_channels``, ``out_channels`` its signature accepts, plus ``channels`` (and
      ``strides = (2,) * (len(channels) - 1)``) for UNet-like classes and ``dropout`` when set, then
      ``cfg.kwargs`` (which win). MONAI networks return one tensor (no deep supervision).

    Unknown names and arguments raise :class:`InputError` (listing the choices).
    """
    if cfg.name == "res_unet":
        return _build_res_unet(cfg)
    if cfg.name.startswith(MONAI_PREFIX):
        return _build_monai(cfg, cfg.name[len(MONAI_PREFIX):])
    raise InputError("network.name", f"unknown network '{cfg.name}' (choices: {_choices()})")


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) parameter elements of ``model``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def has_deep_supervision(model: nn.Module) -> bool:
    """True when ``model`` returns a tuple of outputs (fused first) in training mode."""
    return bool(getattr(model, "deep_supervision", False))


def to_channels_last(module: nn.Module) -> nn.Module:
    """Store every 5-D parameter and buffer of ``module`` channels-last (``NDHWC``), in place.

    oneDNN's 3D convolutions run much faster on channels-last tensors on CPU (measured on 2 cores,
    ``benchmarks/train_step.py --method res_unet_aux [--set train.channels_last=false]``: a training
    step of the then 96 x 96 cpu S-net 0.89 -> 0.62 s; one 8 -> 8-channel 16 x 96 x 96 convolution
    forward + backward 148 -> 48 ms); outputs are the same
    up to float rounding. 2-D layers are left as they are, so a model that mixes 2-D and 3-D parts
    (or a 2-D discriminator) is safe; ``nn.Module.to(memory_format=torch.channels_last_3d)`` would
    fail on their 4-D weights.
    """
    return module._apply(
        lambda t: t.contiguous(memory_format=torch.channels_last_3d) if t.dim() == 5 else t
    )


def channels_last_input(x: torch.Tensor) -> torch.Tensor:
    """A ``(B, C, Z, Y, X)`` float tensor in channels-last layout (others returned unchanged)."""
    if x.dim() == 5 and x.is_floating_point():
        return x.contiguous(memory_format=torch.channels_last_3d)
    return x
