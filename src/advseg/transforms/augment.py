"""Training augmentation of a sample dict ``{"image": (C, *spatial), "label": (1, *spatial)}``.

In this order, each switched on with its probability from :class:`advseg.config.AugmentConfig`
(0 leaves it out):

* left-right flip (X, the last axis) - :class:`RandFlipSwapd` (MONAI ``RandFlipd``) which also swaps
  paired left/right classes in the label (e.g. left/right femur, ``[(4, 5)]``: after the flip the left
  femur lies where the right one was, so its label must say "right");
* in-plane translation in Y and X by a whole number of voxels, uniform in
  ``[-translate_max_voxels, translate_max_voxels]``, in-plane rotation about the slice axis,
  uniform in ``[-rotate_deg, rotate_deg]`` degrees, and in-plane scaling by a factor uniform in
  ``scale_range`` (> 1 enlarges the anatomy) - :class:`RandInPlaneAffined`, one resampling for all
  three (each with its own probability);
* gamma contrast, gamma uniform in ``contrast_gamma`` (MONAI ``RandAdjustContrastd``, on the min-max
  rescaled image);
* additive Gaussian noise with standard deviation ``noise_std`` in normalised intensity units
  (MONAI ``RandGaussianNoised``).

Why not MONAI's ``RandAffined`` for the in-plane affine: on a 16 x 128 x 128 patch (image + label,
one CPU thread, best of 15) it took 36 ms per call (a float64 3D resampling grid), versus 2.3 ms for
the same translation + rotation as a 2D ``grid_sample`` of every slice; translation and rotation
with their own probabilities would need two ``RandAffined`` (two resamplings). The maths is the
same (an in-plane affine leaves Z alone). Flip + affine + contrast + noise all on: ~15 ms per patch.

The image is resampled bilinearly with border padding (air stays air at the patch border), the label
with nearest neighbour and zero (background) padding. Samples without a ``"label"`` are fine.

Randomness comes only from the transforms' own ``RandomState`` objects, which
:meth:`Augmentation.set_random_state` seeds. The patch sampler calls it with a seed from its own
generator before every patch, which makes augmented streams deterministic and exactly resumable
(see :mod:`advseg.data.sampling`).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.transforms import (
    Compose,
    MapTransform,
    RandAdjustContrastd,
    RandFlipd,
    RandGaussianNoised,
    RandomizableTransform,
)

from advseg.config import AugmentConfig, scale_bounds
from advseg.errors import InputError


class RandFlipSwapd(RandFlipd):
    """``RandFlipd`` that also swaps the values of paired classes in ``label_key`` when it flips.

    Args:
        keys: keys to flip (image and label).
        prob: flip probability.
        spatial_axis: spatial axis to flip (the left-right axis).
        label_key: the key holding class indices.
        swap_pairs: class pairs exchanged by the flip, e.g. ``[(4, 5)]``.
    """

    def __init__(
        self,
        keys: Sequence[str],
        prob: float,
        spatial_axis: int,
        label_key: str = "label",
        swap_pairs: Sequence[tuple[int, int]] | None = None,
        allow_missing_keys: bool = True,
    ) -> None:
        super().__init__(keys, prob=prob, spatial_axis=spatial_axis, allow_missing_keys=allow_missing_keys)
        self.label_key = label_key
        self.swap_pairs = [(int(a), int(b)) for a, b in (swap_pairs or [])]
        used = [c for pair in self.swap_pairs for c in pair]
        if len(used) != len(set(used)):
            raise ValueError(f"swap pairs must not share classes, got {self.swap_pairs}")

    def __call__(self, data: Mapping[Hashable, Any], lazy: bool | None = None) -> dict[Hashable, Any]:
        d = super().__call__(data, lazy)
        if self._do_transform and self.swap_pairs and self.label_key in d:
            lab = d[self.label_key]
            swapped = lab.clone()
            for a, b in self.swap_pairs:
                swapped[lab == a] = b
                swapped[lab == b] = a
            d[self.label_key] = swapped
        return d


class RandInPlaneAffined(RandomizableTransform, MapTransform):
    """Random translation (whole voxels in Y and X), rotation about the slice axis and isotropic
    in-plane scaling, one resampling.

    Works on ``(C, Z, Y, X)`` and ``(C, Y, X)`` tensors: all leading axes are treated as a batch of
    ``(Y, X)`` slices. Output voxel ``p`` (pixel units from the slice centre) takes its value from
    ``R(angle) p / scale + shift`` in the input (backward mapping); points outside the slice take the
    border value (image) or 0 (``label_key``).

    Args:
        keys: keys to transform.
        translate_prob / translate_max_voxels: probability and range of the shift (per axis, uniform
            integer in ``[-max, max]``).
        rotate_prob / rotate_deg: probability and range of the angle (uniform in ``[-deg, deg]``).
        scale_prob / scale_range: probability and range of the zoom factor (uniform in ``[lo, hi]``).
        label_key: the key resampled with nearest neighbour and zero padding.
    """

    def __init__(
        self,
        keys: Sequence[str],
        translate_prob: float = 0.0,
        translate_max_voxels: int = 0,
        rotate_prob: float = 0.0,
        rotate_deg: float = 0.0,
        scale_prob: float = 0.0,
        scale_range: Sequence[float] = (1.0, 1.0),
        label_key: str = "label",
        allow_missing_keys: bool = True,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob=1.0)
        self.translate_prob, self.translate_max = float(translate_prob), int(translate_max_voxels)
        self.rotate_prob, self.rotate_deg = float(rotate_prob), float(rotate_deg)
        self.scale_prob = float(scale_prob)
        self.scale_range = scale_bounds(scale_range)
        self.label_key = label_key
        self.shift = (0, 0)
        self.angle = 0.0
        self.scale = 1.0

    def randomize(self, data: Any = None) -> None:
        # Always the same number of draws, so each call consumes the generator alike.
        do_shift, do_rotate = self.R.rand(2) < (self.translate_prob, self.rotate_prob)
        shift = self.R.randint(-self.translate_max, self.translate_max + 1, size=2)
        angle = self.R.uniform(-self.rotate_deg, self.rotate_deg)
        self.shift = (int(shift[0]), int(shift[1])) if do_shift else (0, 0)
        self.angle = float(angle) if do_rotate else 0.0
        self.scale = 1.0
        if self.scale_prob > 0:  # drawn only when on, so streams without scaling stay as they were
            do_scale, scale = self.R.rand() < self.scale_prob, self.R.uniform(*self.scale_range)
            self.scale = float(scale) if do_scale else 1.0
        self._do_transform = self.shift != (0, 0) or self.angle != 0.0 or self.scale != 1.0

    def _theta(self, h: int, w: int) -> torch.Tensor:
        """``affine_grid`` matrix (normalised (x, y) coordinates, align_corners=False)."""
        a = math.radians(self.angle)
        c, s = math.cos(a) / self.scale, math.sin(a) / self.scale
        ty, tx = self.shift
        rows = [[c, -s * h / w, 2.0 * tx / w], [s * w / h, c, 2.0 * ty / h]]
        return torch.tensor([rows], dtype=torch.float32)

    def _apply(self, x: torch.Tensor, nearest: bool) -> torch.Tensor:
        h, w = x.shape[-2:]
        flat = x.reshape(1, -1, h, w).float()
        grid = F.affine_grid(self._theta(h, w).to(flat.device), [1, 1, h, w], align_corners=False)
        out = F.grid_sample(flat, grid, mode="nearest" if nearest else "bilinear",
                            padding_mode="zeros" if nearest else "border", align_corners=False)
        out = out.reshape(x.shape)
        return out.to(x.dtype) if x.is_floating_point() else out.round().to(x.dtype)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        self.randomize()
        if not self._do_transform:
            return d
        for key in self.key_iterator(d):
            x = d[key].as_tensor() if hasattr(d[key], "as_tensor") else torch.as_tensor(d[key])
            d[key] = self._apply(x, nearest=key == self.label_key)
        return d


class Augmentation:
    """A seedable dict -> dict augmentation; returns plain ``torch.Tensor`` values.

    ``image`` comes back float32; ``label`` keeps its input dtype (integer labels are rounded after
    the nearest-neighbour resampling, which MONAI does in floating point).
    """

    def __init__(self, transforms: list[Any], seed: int | None = None) -> None:
        self.compose = Compose(transforms)
        self.set_random_state(seed)

    @property
    def transforms(self) -> list[Any]:
        return list(self.compose.transforms)

    def set_random_state(self, seed: int | None = None) -> Augmentation:
        """Seed every random transform (from ``seed``; None: fresh OS entropy)."""
        if seed is None:
            seed = int(np.random.SeedSequence().generate_state(1)[0])
        self.compose.set_random_state(seed=int(seed) % 2**32)
        return self

    def __call__(self, data: Mapping[str, Any]) -> dict[str, Any]:
        d = dict(data)
        dtypes = {k: torch.as_tensor(v).dtype for k, v in d.items() if k in ("image", "label")}
        for k in dtypes:
            d[k] = torch.as_tensor(d[k])
        d = self.compose(d)
        for k, dtype in dtypes.items():
            v = d[k].as_tensor() if hasattr(d[k], "as_tensor") else torch.as_tensor(d[k])
            if k == "image":
                v = v.float()
            elif not dtype.is_floating_point and v.dtype != dtype:
                v = (v.round() if v.is_floating_point() else v).to(dtype)
            d[k] = v.contiguous()
        return d


def build_augmentation(
    cfg: AugmentConfig,
    spatial_dims: int = 3,
    seed: int | None = None,
    swap_labels_on_flip: Sequence[tuple[int, int]] | None = None,
) -> Augmentation:
    """The training augmentation for ``(C, Z, Y, X)`` (3D) or ``(C, Y, X)`` (2D) samples.

    Args:
        cfg: probabilities and ranges.
        spatial_dims: 3 (patches) or 2 (axial slices).
        seed: seed of the transforms' generators (None: nondeterministic).
        swap_labels_on_flip: class pairs a left-right flip exchanges, e.g. ``[(4, 5)]`` for the
            pelvis' femoral heads (:func:`advseg.data.labels.lr_pairs` finds them from class names).
    """
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
    keys = ["image", "label"]
    transforms: list[Any] = []
    if cfg.flip_prob > 0:
        transforms.append(RandFlipSwapd(keys, prob=cfg.flip_prob, spatial_axis=spatial_dims - 1,
                                        swap_pairs=swap_labels_on_flip))
    translate = cfg.translate_prob if cfg.translate_max_voxels > 0 else 0.0
    rotate = cfg.rotate_prob if cfg.rotate_deg > 0 else 0.0
    try:  # checked even when scaling is off, so a bad config fails before any training
        scale_bounds(cfg.scale_range)
    except ValueError:
        raise InputError(
            "augment.scale_range", f"must be [lo, hi] with 0 < lo <= hi, got {cfg.scale_range}"
        ) from None
    scale = cfg.scale_prob if tuple(cfg.scale_range) != (1.0, 1.0) else 0.0
    if translate > 0 or rotate > 0 or scale > 0:
        transforms.append(RandInPlaneAffined(keys, translate_prob=translate,
                                             translate_max_voxels=cfg.translate_max_voxels,
                                             rotate_prob=rotate, rotate_deg=cfg.rotate_deg,
                                             scale_prob=scale, scale_range=cfg.scale_range))
    if cfg.contrast_prob > 0:
        transforms.append(RandAdjustContrastd(["image"], prob=cfg.contrast_prob,
                                              gamma=tuple(float(g) for g in cfg.contrast_gamma)))
    if cfg.noise_prob > 0 and cfg.noise_std > 0:
        transforms.append(RandGaussianNoised(["image"], prob=cfg.noise_prob, mean=0.0,
                                             std=float(cfg.noise_std), sample_std=False))
    return Augmentation(transforms, seed=seed)
