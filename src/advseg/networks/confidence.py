"""The discriminator D of a run's config and its per-voxel confidence map.

Training builds D with :func:`build_discriminator` (through
:meth:`~advseg.training.variants.adversarial.AdversarialTrainer.discriminator_for`) and inference
rebuilds the same D from a checkpoint's config to load its weights (``predict --save-confidence``); both
compute D's confidence on S's output with :func:`confidence_map`. It lives here, below both, so neither
imports the other.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from advseg.config import ADVERSARIAL_MODES, Config
from advseg.networks.discriminators import (
    build_discriminator_input,
    make_discriminator,
    onehot,
    resolve_d_input,
)
from advseg.ops import channel_argmax

#: hidden widths of Tan et al.'s DCGAN discriminator: five, then the 1-channel conv (six convs)
DCGAN_HIDDEN_CONVS = 5


def dcgan_widths(channels: list[int] | tuple[int, ...], n: int = DCGAN_HIDDEN_CONVS) -> list[int]:
    """``channels`` padded to at least ``n`` entries by repeating the last (longer lists are kept)."""
    if not channels:
        raise ValueError("adversarial.d_channels is empty")
    widths = list(channels)
    return widths + [widths[-1]] * (n - len(widths))


def build_discriminator(cfg: Config, num_classes: int) -> nn.Module:
    """The discriminator a run's config trains: :func:`~advseg.networks.discriminators.make_discriminator`
    of ``cfg.adversarial`` for ``cfg.network``'s dimensions and input channels and ``num_classes``.

    ``adversarial.mode: semi_adv_2d`` (Tan et al.) pads ``d_channels`` with :func:`dcgan_widths` to
    the paper's six convolutions (the size presets list four widths) and needs a 2D S.
    Raises ValueError for an unknown mode or a 3D ``semi_adv_2d`` config.
    """
    a = cfg.adversarial
    if a.mode not in ADVERSARIAL_MODES:
        raise ValueError(f"unknown adversarial.mode {a.mode!r} (known: {', '.join(ADVERSARIAL_MODES)})")
    if a.mode == "semi_adv_2d":
        if cfg.network.spatial_dims != 2:
            raise ValueError(f"adversarial.mode semi_adv_2d trains a 2D network (network.spatial_dims: 2), "
                             f"got spatial_dims={cfg.network.spatial_dims}")
        a = dataclasses.replace(a, d_channels=dcgan_widths(a.d_channels))
    net = cfg.network
    return make_discriminator(a, net.spatial_dims, net.in_channels, num_classes)


def has_confidence_map(cfg: Config) -> bool:
    """Whether the run's D gives a per-voxel confidence map (the image-level and fusion D's give one
    number per image)."""
    return cfg.adversarial.discriminator in ("fcn", "dcgan2d")


@torch.inference_mode()
def confidence_map(
    cfg: Config, discriminator: nn.Module, image: torch.Tensor, probs: torch.Tensor
) -> torch.Tensor:
    """D's per-voxel confidence ``sigmoid(D(.))`` in [0, 1] for S's prediction of a whole volume.

    ``image``: preprocessed ``(1, C, Z, Y, X)``; ``probs``: S's softmax ``(1, K, Z, Y, X)``. D sees S's
    output as in training: one-hot of the argmax when ``onehot_fake``, else the probabilities, combined
    with the image (shifted by ``d_image_offset``) per ``d_input``. A 2D D (``network.spatial_dims: 2``)
    is applied slice by slice. Returns ``(1, 1, Z, Y, X)`` float32.
    Raises ValueError for a D without a confidence map (see :func:`has_confidence_map`).
    """
    a = cfg.adversarial
    if not has_confidence_map(cfg):
        raise ValueError(f"the '{a.discriminator}' discriminator scores whole images: it has no per-voxel "
                         "confidence map")
    labels = onehot(channel_argmax(probs), probs.shape[1], dtype=probs.dtype) if a.onehot_fake else probs
    d_in = build_discriminator_input(resolve_d_input(a), image + a.d_image_offset, labels)
    if cfg.network.spatial_dims == 2:
        slices = d_in[0].transpose(0, 1)  # (Z, C', Y, X)
        out = torch.cat([discriminator(slices[i : i + 16]) for i in range(0, slices.shape[0], 16)])
        return torch.sigmoid(out.float()).transpose(0, 1).unsqueeze(0)
    return torch.sigmoid(discriminator(d_in).float())
