"""advseg.networks: the segmenter S (residual U-Net family, MONAI networks by name)."""

from advseg.networks.blocks import MultiScalePool, ResidualBlock
from advseg.networks.factory import (
    build_network,
    channels_last_input,
    count_parameters,
    has_deep_supervision,
    to_channels_last,
)
from advseg.networks.res_unet import ResUNet

__all__ = [
    "MultiScalePool",
    "ResUNet",
    "ResidualBlock",
    "build_network",
    "channels_last_input",
    "count_parameters",
    "has_deep_supervision",
    "to_channels_last",
]
