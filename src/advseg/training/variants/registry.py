"""Which trainer class serves which ``adversarial.mode``, and D construction from a config.

* ``semi_adv`` - :class:`AdversarialTrainer`, the pelvic study (presets ``res_unet_aux_adv``, ``_semi``);
* ``pure`` / ``hybrid`` - :class:`KohlTrainer`, Kohl et al. 2017 (``pure_adv``, ``hybrid_adv``);
* ``asdnet`` - :class:`AsdnetTrainer`, Nie et al. 2018 (``asdnet``);
* ``semi_adv_2d`` - :class:`Tan2DTrainer`, Tan et al. 2022 (``semi_adv_2d``);
* ``fusion`` - :class:`FusionTrainer`, Pan et al. 2022 (``fusion_pair``).
"""

from __future__ import annotations

import torch
from torch import nn

from advseg.config import Config
from advseg.networks.discriminators import build_discriminator_input, onehot, resolve_d_input
from advseg.ops import channel_argmax
from advseg.training.trainer import Trainer
from advseg.training.variants.adversarial import AdversarialTrainer
from advseg.training.variants.asdnet import AsdnetTrainer
from advseg.training.variants.fusion import FusionTrainer
from advseg.training.variants.kohl import KohlTrainer
from advseg.training.variants.tan2d import Tan2DTrainer

ADVERSARIAL_TRAINERS: dict[str, type[Trainer]] = {
    "semi_adv": AdversarialTrainer,
    "pure": KohlTrainer,
    "hybrid": KohlTrainer,
    "asdnet": AsdnetTrainer,
    "semi_adv_2d": Tan2DTrainer,
    "fusion": FusionTrainer,
}


def _trainer(cfg: Config) -> type[AdversarialTrainer]:
    cls = ADVERSARIAL_TRAINERS.get(cfg.adversarial.mode)
    if cls is None or not issubclass(cls, AdversarialTrainer):
        known = ", ".join(sorted(ADVERSARIAL_TRAINERS))
        raise ValueError(f"unknown adversarial.mode {cfg.adversarial.mode!r} (known: {known})")
    return cls


def build_discriminator(cfg: Config, num_classes: int) -> nn.Module:
    """The discriminator of a run's config, built as its trainer builds it (used to load D for
    ``predict --save-confidence``)."""
    return _trainer(cfg).discriminator_for(cfg, num_classes)


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
