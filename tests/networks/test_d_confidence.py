"""D of a run's config and its per-voxel confidence map (:mod:`advseg.networks.confidence`)."""

from __future__ import annotations

import pytest
import torch

from advseg.config import ADVERSARIAL_MODES, apply_overrides, load_preset
from advseg.errors import InputError
from advseg.networks.confidence import build_discriminator, confidence_map, dcgan_widths, has_confidence_map
from advseg.training.variants.registry import ADVERSARIAL_TRAINERS

SMALL_PATCH = "data.patch_size=[8, 32, 32]"


def _cfg(preset: str, *overrides: str):
    return apply_overrides(load_preset(f"{preset}+tiny"), [SMALL_PATCH, *overrides])


def test_config_modes_are_the_trainer_registry() -> None:
    """config validates ``adversarial.mode`` against its own tuple; it must name exactly the trainers."""
    assert set(ADVERSARIAL_MODES) == set(ADVERSARIAL_TRAINERS)


def test_dcgan_widths_pad_to_six_convolutions() -> None:
    assert dcgan_widths([4, 4, 8, 8]) == [4, 4, 8, 8, 8]
    assert dcgan_widths([64, 128, 256, 512, 512]) == [64, 128, 256, 512, 512]
    cfg = _cfg("semi_adv_2d")
    d = build_discriminator(cfg, 6)
    assert len(d.convs) == 6  # five hidden convs + the 1-channel one, although tiny lists four widths
    assert [c.out_channels for c in d.convs] == [4, 4, 8, 8, 8, 1]
    with pytest.raises(InputError, match="config: network.spatial_dims: adversarial.mode semi_adv_2d"):
        apply_overrides(cfg, ["network.spatial_dims=3"])  # the config refuses it first
    with pytest.raises(ValueError, match="spatial_dims"):  # and so does the trainer, for the Python API
        build_discriminator(apply_overrides(cfg, ["network.spatial_dims=3"], validate=False), 6)


@pytest.mark.parametrize("preset", ["semi_adv_2d", "asdnet", "res_unet_aux_adv"])
def test_confidence_map_of_a_volume(preset: str) -> None:
    cfg = _cfg(preset)
    d = build_discriminator(cfg, 6).eval()
    image = torch.randn(1, 1, 5, 32, 32)
    probs = torch.softmax(torch.randn(1, 6, 5, 32, 32), dim=1)
    conf = confidence_map(cfg, d, image, probs)
    assert conf.shape == (1, 1, 5, 32, 32)
    assert float(conf.min()) >= 0 and float(conf.max()) <= 1


def test_image_level_discriminators_have_no_confidence_map() -> None:
    cfg = _cfg("hybrid_adv")
    assert not has_confidence_map(cfg) and not has_confidence_map(_cfg("fusion_pair"))
    with pytest.raises(ValueError, match="no per-voxel"):
        confidence_map(cfg, build_discriminator(cfg, 6), torch.zeros(1, 1, 4, 8, 8),
                       torch.zeros(1, 6, 4, 8, 8))


