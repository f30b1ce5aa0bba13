"""build_network: res_unet from the presets, MONAI networks by name, clear errors."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from monai.networks.nets import UNet, VNet

from advseg.config import NetworkConfig, load_preset
from advseg.errors import InputError
from advseg.networks import ResUNet, build_network, count_parameters, has_deep_supervision


@pytest.mark.parametrize("preset,aux", [("res_unet+tiny", False), ("res_unet_aux+tiny", True)])
def test_res_unet_from_preset(preset: str, aux: bool) -> None:
    cfg = load_preset(preset).network
    net = build_network(cfg)
    assert isinstance(net, ResUNet)
    assert net.channels == (4, 8, 16) and net.aux is aux and has_deep_supervision(net) is aux
    net.eval()
    with torch.no_grad():
        assert net(torch.randn(1, 1, 16, 32, 32)).shape == (1, 6, 16, 32, 32)


@pytest.mark.parametrize("preset,channels",
                         [("res_unet+cpu", (8, 16, 32, 64)), ("res_unet_aux+paper", (64, 128, 256))])
def test_size_presets(preset: str, channels: tuple) -> None:
    cfg = load_preset(preset)
    net = build_network(cfg.network)
    assert net.channels == channels
    if channels[0] == 64:
        assert cfg.data.patch_size == [16, 128, 128]
        assert 5_000_000 < count_parameters(net) < 8_000_000


def test_count_parameters() -> None:
    net = torch.nn.Linear(3, 2)  # 6 weights + 2 biases
    assert count_parameters(net) == 8
    net.bias.requires_grad_(False)
    assert count_parameters(net) == 6
    assert count_parameters(net, trainable_only=False) == 8


def test_res_unet_kwargs_and_2d() -> None:
    cfg = NetworkConfig(spatial_dims=2, channels=[4, 8], aux=False, kwargs={"res_blocks": 2})
    net = build_network(cfg).eval()
    with torch.no_grad():
        assert net(torch.randn(1, 1, 16, 16)).shape == (1, 6, 16, 16)


def test_monai_unet_follows_preset_channels() -> None:
    cfg = NetworkConfig(name="monai:UNet", channels=[4, 8, 16])
    net = build_network(cfg)
    assert isinstance(net, UNet) and tuple(net.channels) == (4, 8, 16) and tuple(net.strides) == (2, 2)
    assert not has_deep_supervision(net)
    net.eval()
    with torch.no_grad():
        assert net(torch.randn(1, 1, 16, 16, 16)).shape == (1, 6, 16, 16, 16)


def test_monai_names_build() -> None:
    # VNet has no 'channels': the standard arguments are filtered by its signature
    assert isinstance(build_network(NetworkConfig(name="monai:VNet", out_channels=3)), VNet)
    seg_cfg = NetworkConfig(name="monai:SegResNet", out_channels=3, kwargs={"init_filters": 8})
    seg = build_network(seg_cfg).eval()
    with torch.no_grad():
        assert seg(torch.randn(1, 1, 16, 16, 16)).shape == (1, 3, 16, 16, 16)
    unet = build_network(NetworkConfig(name="monai:UNet", kwargs={"channels": [4, 8], "strides": [2]}))
    assert tuple(unet.channels) == (4, 8)


@pytest.mark.parametrize("name", ["unet3d", "monai:NoSuchNet", "monai:"])
def test_unknown_name_lists_choices(name: str) -> None:
    with pytest.raises(InputError) as err:
        build_network(NetworkConfig(name=name))
    assert "res_unet" in str(err.value) and "monai:UNet" in str(err.value)


def test_bad_settings_are_input_errors() -> None:
    with pytest.raises(InputError, match="pooling"):
        build_network(dataclasses.replace(NetworkConfig(), pooling="avg"))
    with pytest.raises(InputError, match="res_unet does not take"):
        build_network(NetworkConfig(kwargs={"strides": [2, 2]}))
    with pytest.raises(InputError, match="cannot build monai:UNet"):
        build_network(NetworkConfig(name="monai:UNet", kwargs={"no_such_arg": 1}))
