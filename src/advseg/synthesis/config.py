"""Configuration of the 3D progressive-growing GAN (PGGAN).

Two presets live here as Python mappings rather than as YAML files in ``advseg/configs/``: that
folder holds the segmentation presets, which every ``load_preset`` / ``preset_names`` call walks,
and a GAN preset there would be listed (and rejected) as a segmentation preset.

* ``small``: 4^3 -> 8^3 -> 16^3 -> 16 x 32 x 32 (anisotropic last step); minutes on 2 CPU cores.
* ``paper``: 4^3 -> ... -> 64^3 -> 64 x 128 x 128 (anisotropic last step), as the pelvic CT study;
  for a GPU.
* ``cpu``: 4^3 -> 4 x 8 x 8 -> 8 x 16 x 16 -> 16 x 32 x 32 -> 32 x 64 x 64, about 45 minutes of
  training on 2 CPU cores: the smallest schedule meant to give organs, not blobs, on the phantom
  (``advseg phantom --shape 32 64 64``; 80 training volumes are cheap and keep the GAN from
  memorising a handful). After the 4^3 start every stage keeps the phantom's physical aspect
  (z voxels twice as thick as in-plane ones at 32 x 64 x 64), so no stage wastes voxels on a squashed
  field of view. The organs are a few voxels wide at 8 x 16 x 16 and 16 x 32 x 32, which is where
  they take shape: those stages are cheap (0.2 and 0.6 s an iteration) and get 1500 iterations each,
  the expensive 32 x 64 x 64 stage (about 2 s an iteration at 8 channels, batch 4) 600 to refine
  them. Seconds per iteration measured with ``python benchmarks/gan_small.py --preset cpu`` on
  this 2-core machine while other jobs ran (0.02, 0.10, 0.20, 0.60 and 2.1-4.4 s with 8-16
  channels at the last stage): 1500 x (0.02 + 0.10 + 0.20 + 0.60) + 600 x 2.1 = about 44 minutes.
  Its ``hu_window`` is the S-net's CT window, [-250, 350] HU, not the full [-1000, 1000]: the
  ~30 HU between prostate and bladder is then 0.10 of the GAN's [-1, 1] range instead of 0.03.
  ``python benchmarks/gan_cpu.py`` trains it end to end and measures Table I, organ presence and
  the copy check. Measured there (2026-12-02, 2 threads, ``benchmarks/results/gan_cpu_w350/``):
  3510 s of training; an S-net of 800 iterations finds every organ in 26 of 30 samples (87 %; in 5
  of the 6 real test volumes, 83 %), one of 2000 iterations in 30 of 30 (and 6 of 6 real ones,
  ``benchmarks/results/gan_cpu_w350_s2000/``), the prostate always (27 mL against 34 mL real);
  soft-tissue HU errors 5-15 HU, no sample a copy of a training volume. With [-1000, 1000]
  (``benchmarks/results/gan_cpu/``) no sample had a separable prostate (1.9 mL), so every organ
  was found in 0 %.

A user's YAML file may hold any subset of the keys, with ``base: small``, ``base: cpu`` or ``base: paper``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, get_type_hints

import yaml

from advseg.checks import between, coerce, each, field_problems, ge, gt, length, nonempty, param, prob, window
from advseg.checks import type_problem as _type_problem
from advseg.config import _device, load_yaml_mapping
from advseg.errors import InputError, InputErrors
from advseg.io.atomic import atomic_write_text


def _iterations_check(v: Any) -> str | None:
    """``iterations_per_stage``: an integer >= 1, or a non-empty list of them (one per stage)."""
    if isinstance(v, list):
        return nonempty(v) or each(ge(1))(v)
    return ge(1)(v)


# Version of the saved gan_config.yaml layout (key ``config_version``); a newer one is refused.
GAN_CONFIG_VERSION = 1


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
        iterations_per_stage: generator steps per stage (one discriminator step each): one value for
            every stage, or one per stage (cheap low-resolution stages can train longer).
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
    stages: list[list[int]] = param([[4, 4, 4], [8, 8, 8], [16, 16, 16], [16, 32, 32]], nonempty,
                                    each(length(3), each(ge(1))))
    channels: list[int] = param([32, 32, 16, 8], each(ge(1)))  # one per stage
    latent_channels: int = param(32, ge(1))
    iterations_per_stage: int | list[int] = param(200, _iterations_check)
    fade_fraction: float = param(0.5, prob)
    batch_sizes: list[int] = param([8, 8, 8, 4], nonempty, each(ge(1)))  # 1 or one per stage
    lr: float = param(1e-3, gt(0))
    betas: list[float] = param([0.0, 0.99], length(2), each(between(0, 1, hi_open=True)))
    eps: float = param(1e-8, gt(0))
    gp_lambda: float = param(10.0, ge(0))
    drift: float = param(1e-3, ge(0))
    mbstd_group: int = param(4, ge(1))
    ema_beta: float = param(0.99, between(0, 1, hi_open=True))
    flip_x: bool = True
    hu_window: list[float] = param([-1000.0, 1000.0], window)
    n_slices: int | None = param(None, ge(1))
    crop_xy: int | None = param(None, ge(1))
    checkpoint_every: int = param(50, ge(1))
    grid_samples: int = param(4, ge(0))
    seed: int = param(0, ge(0))
    device: str = param("auto", _device)
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

    def iterations(self, stage: int) -> int:
        """Generator steps of ``stage``."""
        ips = self.iterations_per_stage
        return ips[stage] if isinstance(ips, list) else ips

    @property
    def total_iterations(self) -> int:
        return sum(self.iterations(s) for s in range(len(self.stages)))

    def fade_iterations(self, stage: int) -> int:
        """Iterations of fade-in at ``stage`` (0 for the first stage, which has nothing to fade)."""
        return 0 if stage == 0 else int(round(self.fade_fraction * self.iterations(stage)))

    def alpha(self, stage: int, iteration: int) -> float:
        """Fade-in weight at 0-based ``iteration`` of ``stage``: linear 0 -> 1, then 1."""
        n = self.fade_iterations(stage)
        return 1.0 if n == 0 else min(1.0, iteration / n)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, path: str | Path) -> None:
        data = {"config_version": GAN_CONFIG_VERSION, **self.to_dict()}
        atomic_write_text(path, yaml.safe_dump(data, sort_keys=False))


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
    "cpu": {
        "name": "cpu",
        "stages": [[4, 4, 4], [4, 8, 8], [8, 16, 16], [16, 32, 32], [32, 64, 64]],
        "channels": [64, 64, 32, 16, 8],
        "latent_channels": 32,
        "iterations_per_stage": [1500, 1500, 1500, 1500, 600],
        "batch_sizes": [16, 16, 8, 8, 4],
        "checkpoint_every": 250,
        # the S-net's CT window (DataConfig.hu_window): all S ever sees, and where the ~30 HU between
        # prostate and bladder is 0.10 of [-1, 1] rather than 0.03 (with [-1000, 1000] no sample had one)
        "hu_window": [-250.0, 350.0],
    },
}


def gan_config_problems(cfg: GANConfig, where: str = "GAN config") -> list[InputError]:
    """Every problem of ``cfg`` (each field's type and range, then the stage geometry), one
    :class:`InputError` ``<where>: <key>: <problem>`` each."""
    found = field_problems(cfg)
    if not found:  # the cross-field checks assume each field is well-formed
        stages = cfg.stages
        if any(v % 2 for v in stages[0]):
            found.append(("stages", f"the first stage {stages[0]} must be even (the noise input is half "
                                    "of it)"))
        for prev, cur in zip(stages, stages[1:], strict=False):
            ratios = [c / p for p, c in zip(prev, cur, strict=True)]
            if any(r not in (1.0, 2.0) for r in ratios) or max(ratios) != 2.0:
                found.append(("stages", f"{prev} -> {cur}: each axis must stay or double, at least one "
                                        "doubling"))
                break
        if len(cfg.channels) != len(stages):
            found.append(("channels", f"expected {len(stages)} values (one per stage), got {cfg.channels}"))
        ips = cfg.iterations_per_stage
        if isinstance(ips, list) and len(ips) != len(stages):
            found.append(("iterations_per_stage", f"expected one value or {len(stages)} (one per stage), "
                                                  f"got {ips}"))
        if len(cfg.batch_sizes) not in (1, len(stages)):
            found.append(("batch_sizes", f"expected 1 or {len(stages)} values, got {cfg.batch_sizes}"))
    return [InputError(where, f"{key}: {problem}") for key, problem in found]


def _raise(problems: list[InputError]) -> None:
    if len(problems) == 1:
        raise problems[0]
    if problems:
        raise InputErrors(problems)


def validate_gan_config(cfg: GANConfig, where: str = "GAN config") -> None:
    """Raise :class:`InputError` (one problem) or :class:`InputErrors` (several) naming each bad key."""
    _raise(gan_config_problems(cfg, where))


def merge_gan_config(cfg: GANConfig, updates: dict[str, Any], where: str = "GAN config") -> GANConfig:
    """A copy of ``cfg`` with ``updates`` applied; unknown keys, wrong types and out-of-range values
    are reported together (one line each), naming ``where`` (e.g. the file) and the key."""
    if not isinstance(updates, dict):
        raise InputError(where, f"expected a mapping, got {type(updates).__name__}")
    updates = dict(updates)
    version = updates.pop("config_version", GAN_CONFIG_VERSION)
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= GAN_CONFIG_VERSION:
        raise InputError(where, f"written by another advseg version (GAN config version {version!r}; "
                                f"this one reads 1..{GAN_CONFIG_VERSION})")
    hints = get_type_hints(GANConfig)
    names = {f.name for f in fields(cfg)}
    problems: list[InputError] = []
    changes = {}
    for key, value in updates.items():
        if key not in names:
            problems.append(InputError(where, f"unknown GAN config key '{key}' (known: "
                                              f"{', '.join(sorted(names))})"))
            continue
        problem = _type_problem(value, hints[key])
        if problem:
            problems.append(InputError(where, f"{key}: {problem}"))
            continue
        changes[key] = coerce(value, hints[key])
    # the values that were applied, checked before building (GANConfig validates on creation)
    merged = object.__new__(GANConfig)
    merged.__dict__.update({**cfg.__dict__, **changes})
    _raise(problems + gan_config_problems(merged, where))
    return dataclasses.replace(cfg, **changes)


def gan_preset(name: str) -> GANConfig:
    """The preset ``small``, ``cpu`` or ``paper``."""
    if name not in PRESETS:
        raise InputError(None, f"unknown GAN preset '{name}' (known: {', '.join(sorted(PRESETS))})")
    return merge_gan_config(GANConfig(), PRESETS[name], f"GAN preset {name}")


def load_gan_config(path: str | Path) -> GANConfig:
    """A YAML file of GAN keys, optionally ``base: small|cpu|paper`` (default base: small)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "GAN config file not found")
    data = load_yaml_mapping(path)
    base = gan_preset(str(data.pop("base", "small")))
    return merge_gan_config(base, data, str(path))


def gan_config_from_dict(data: dict[str, Any], where: str = "GAN config") -> GANConfig:
    """Rebuild a saved config (``GANConfig.to_dict()`` output)."""
    return merge_gan_config(GANConfig(), data, where)
