"""advseg.transforms: training augmentation."""

from advseg.transforms.augment import Augmentation, RandFlipSwapd, RandInPlaneAffined, build_augmentation

__all__ = ["Augmentation", "RandFlipSwapd", "RandInPlaneAffined", "build_augmentation"]
