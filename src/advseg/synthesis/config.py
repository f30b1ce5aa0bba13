"""Configuration of the 3D progressive-growing GAN (PGGAN).

Two presets live here as Python mappings rather than as YAML files in ``advseg/configs/``: that
folder holds the segmentation presets, which every ``load_preset`` / ``preset_names`` call walks,
and a GAN preset there would be listed (and rejected) as a segmentation preset.

* ``small``: 4^3 -> 8^3 -> 16^3 -> 16 x 32 x 32 (anisotropic last step); minutes on 2 CPU cores.
* ``paper``: 4^3 -> ... -> 64^3 -> 64 x 128 x 128 (anisotropic last step), as the pelvic CT study;
  for a GPU.

A user's YAML file may hold any subset of the keys, with ``base: small`` or ``base: paper``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from advseg.config import load_yaml_mapping
from advseg.errors import InputError
from advseg.io.atomic import atomic_write_text


@dataclass
class GANConfig:
    """Everything that defines a GAN run; saved as ``gan_config.yaml`` and inside every checkpoint.

    Attributes:
        stages: volume shape ``(z, y, x)`` of each growth stage. The first is the starting
            resolution (4 x 4 x 4); the generator's noise input is half of it (2 x 2 x 2). Each next
            stage multiplies every axis by 1 or 2 (at least one axis by 2).
        channels: feature maps of each stage (generator block ``s`` outputs ``channels[s]``; the
            discriminator mirrors it).
        latent_channels: channels of the ``2 x 2 x 2`` noise input (latent size = 8 x this).
        iterations_per_stage: generator steps per stage (one discriminator step each).
        fade_fraction: share of a stage (after the first) over which the new blocks fade in, alpha
            rising linearly from 0 to 1; the rest of the stage trains at alpha = 1.
        batch_sizes: one per stage, or a single value for all.
        lr, betas, eps: Adam, as PGGAN (1e-3, (0, 0.99), 1e-8); both optimizers are reset at the
            start of each stage, as in the reference implementation.
        gp_lambda: WGAN-GP gradient penalty weight (Gulrajani et al. 2017, eq. 3).
        drift: PGGAN's epsilon_drift, weight of ``D(real)^2`` that keeps D's output near zero.
        mbstd_group: minibatch standard deviation group size.
        ema_beta: exponential moving average of G's weights used for sampling (0 disables).
        flip_x: random left-right flips of the training volumes.
        hu_window: CT window in HU mapped to [-1, 1]; samples are mapped back to it.
        n_slices, crop_xy: as the segmentation's pelvic recipe, keep the middle ``n_slices`` axial
            slices and center-crop each slice to ``crop_xy`` voxels before resizing to the last
            stage's shape (None keeps the whole volume).
        checkpoint_every: iterations between mid-stage checkpoints (stage ends always save).
        grid_samples: samples shown in the grid PNG saved at the end of each stage.
        seed: seeds weights, batches, noise and flips (same seed, same run).
        device: ``auto`` (cuda if available), ``cpu``, ``cuda`` or ``cuda:N``.
        amp: bf16 autocast on CUDA (ignored on CPU).
    """

    name: str = "small"
    stages: list[list[int]] = field(
        default_factory=lambda: [[4, 4, 4], [8, 8, 8], [16, 16, 16], [16, 32, 32]]
    )
    channels: list[int] = field(default_factory=lambda: [32, 32, 16, 8])
    latent_channels: int = 32
    iterations_per_stage: int = 200
    fade_fraction: float = 0.5
    batch_sizes: list[int] = field(default_factory=lambda: [8, 8, 8, 4])
    lr: float = 1e-3
    betas: list[float] = field(default_factory=lambda: [0.0, 0.99])
    eps: float = 1e-8
    gp_lambda: float = 10.0
    drift: float = 1e-3
    mbstd_group: int = 4
    ema_beta: float = 0.99
    flip_x: bool = True
    hu_window: list[float] = field(default_factory=lambda: [-1000.0, 1000.0])
    n_slices: int | None = None
    crop_xy: int | None = None
    checkpoint_every: int = 50
    grid_samples: int = 4
    seed: int = 0
    device: str = "auto"
    amp: bool = False

    def __post_init__(self) -> None:
        validate_gan_config(self)

    @property
    def target_shape(self) -> tuple[int, int, int]:
        return tuple(self.stages[-1])  # type: ignore[return-value]

    @property
    def latent_shape(self) -> tuple[int, int, int, int]:
        """Noise input shape ``(C, z, y, x)``: half the first stage's resolution."""
        z, y, x = self.stages[0]
        return (self.latent_channels, z // 2, y // 2, x // 2)

    def batch_size(self, stage: int) -> int:
        return self.batch_sizes[stage] if len(self.batch_sizes) > 1 else self.batch_sizes[0]

    def fade_iterations(self, stage: int) -> int:
        """Iterations of fade-in at ``stage`` (0 for the first stage, which has nothing to fade)."""
        return 0 if stage == 0 else int(round(self.fade_fraction * self.iterations_per_stage))

    def alpha(self, stage: int, iteration: int) -> float:
        """Fade-in weight at 0-based ``iteration`` of ``stage``: linear 0 -> 1, then 1."""
        n = self.fade_iterations(stage)
        return 1.0 if n == 0 else min(1.0, iteration / n)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, path: str | Path) -> None:
        atomic_write_text(path, yaml.safe_dump(self.to_dict(), sort_keys=False))


PRESETS: dict[str, dict[str, Any]] = {
    "small": {"name": "small"},  # the dataclass defaults
    "paper": {
        "name": "paper",
        "stages": [[4, 4, 4], [8, 8, 8], [16, 16, 16], [32, 32, 32], [64, 64, 64], [64, 128, 128]],
        "channels": [256, 256, 128, 64, 32, 16],
        "latent_channels": 64,
        "iterations_per_stage": 10000,
        "batch_sizes": [32, 32, 16, 8, 4, 4],
        "ema_beta": 0.999,
        "n_slices": 64,
        "crop_xy": 384,
        "checkpoint_every": 1000,
    },
}


def validate_gan_config(cfg: GANConfig, where: str = "gan config") -> None:
    """Raise :class:`InputError` naming the key for any inconsistent setting."""

    def bad(key: str, problem: str) -> InputError:
        return InputError(f"{where}.{key}", problem)

    stages = cfg.stages
    if not stages or any(len(s) != 3 or any(not isinstance(v, int) or v < 1 for v in s) for s in stages):
        raise bad("stages", f"expected a list of [z, y, x] positive integers, got {stages!r}")
    if any(v % 2 for v in stages[0]):
        raise bad("stages", f"the first stage {stages[0]} must be even (the noise input is half of it)")
    for prev, cur in zip(stages, stages[1:], strict=False):
        ratios = [c / p for p, c in zip(prev, cur, strict=True)]
        if any(r not in (1.0, 2.0) for r in ratios) or max(ratios) != 2.0:
            raise bad("stages", f"{prev} -> {cur}: each axis must stay or double, at least one doubling")
    if len(cfg.channels) != len(stages) or any(c < 1 for c in cfg.channels):
        raise bad("channels", f"expected {len(stages)} positive values (one per stage), got {cfg.channels}")
    if len(cfg.batch_sizes) not in (1, len(stages)) or any(b < 1 for b in cfg.batch_sizes):
        raise bad("batch_sizes", f"expected 1 or {len(stages)} positive values, got {cfg.batch_sizes}")
    for key in ("latent_channels", "iterations_per_stage", "checkpoint_every", "mbstd_group"):
        if getattr(cfg, key) < 1:
            raise bad(key, f"must be >= 1, got {getattr(cfg, key)}")
    if not 0.0 <= cfg.fade_fraction <= 1.0:
        raise bad("fade_fraction", f"must be in [0, 1], got {cfg.fade_fraction}")
    if not 0.0 <= cfg.ema_beta < 1.0:
        raise bad("ema_beta", f"must be in [0, 1), got {cfg.ema_beta}")
    if len(cfg.hu_window) != 2 or cfg.hu_window[0] >= cfg.hu_window[1]:
        raise bad("hu_window", f"expected [low, high] with low < high, got {cfg.hu_window}")
    if len(cfg.betas) != 2:
        raise bad("betas", f"expected two values, got {cfg.betas}")
    if cfg.grid_samples < 0:
        raise bad("grid_samples", "must be >= 0")
    for key in ("n_slices", "crop_xy"):
        value = getattr(cfg, key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise bad(key, f"must be a positive integer or null, got {value!r}")


def _check_type(value: Any, default: Any, where: str) -> Any:
    """Coerce ``value`` to the kind of ``default`` (int/float/bool/str/list), or raise InputError."""
    if value is None:
        return None
    if isinstance(default, bool) or isinstance(value, bool):
        if not (isinstance(default, bool) and isinstance(value, bool)):
            raise InputError(where, f"expected {type(default).__name__}, got {value!r}")
        return value
    if isinstance(default, float) and isinstance(value, int | float):
        return float(value)
    if isinstance(default, list):
        if not isinstance(value, list):
            raise InputError(where, f"expected a list, got {value!r}")
        return value
    if default is not None and not isinstance(value, type(default)):
        raise InputError(where, f"expected {type(default).__name__}, got {value!r}")
    return value


def merge_gan_config(cfg: GANConfig, updates: dict[str, Any], where: str = "gan config") -> GANConfig:
    """A copy of ``cfg`` with ``updates`` applied (unknown keys and wrong types -> InputError)."""
    if not isinstance(updates, dict):
        raise InputError(where, f"expected a mapping, got {type(updates).__name__}")
    names = {f.name for f in fields(cfg)}
    changes = {}
    for key, value in updates.items():
        if key not in names:
            raise InputError(where, f"unknown GAN config key '{key}' (known: {', '.join(sorted(names))})")
        changes[key] = _check_type(value, getattr(cfg, key), f"{where}.{key}")
    return dataclasses.replace(cfg, **changes)


def gan_preset(name: str) -> GANConfig:
    """The preset ``small`` or ``paper``."""
    if name not in PRESETS:
        raise InputError(None, f"unknown GAN preset '{name}' (known: {', '.join(sorted(PRESETS))})")
    return merge_gan_config(GANConfig(), PRESETS[name], f"GAN preset {name}")


def load_gan_config(path: str | Path) -> GANConfig:
    """A YAML file of GAN keys, optionally ``base: small|paper`` (default base: small)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "GAN config file not found")
    data = load_yaml_mapping(path)
    base = gan_preset(str(data.pop("base", "small")))
    return merge_gan_config(base, data, str(path))


def gan_config_from_dict(data: dict[str, Any], where: str = "gan config") -> GANConfig:
    """Rebuild a saved config (``GANConfig.to_dict()`` output)."""
    return merge_gan_config(GANConfig(), data, where)
