"""Sampling a trained GAN: NIfTI CT volumes in int16 HU, usable as an unlabeled image folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from advseg.errors import InputError
from advseg.io import Volume, write_volume
from advseg.io.guard import check_output_dir, forget_outputs, owned_files, record_outputs, refuse_overlap
from advseg.synthesis.config import GANConfig, gan_config_from_dict
from advseg.synthesis.data import sample_volume
from advseg.synthesis.networks import Generator
from advseg.synthesis.trainer import LATEST, is_finished, load_state, resolve_device

SAMPLE_COMMAND = "synthesize sample"  # the writer named in a sample folder's manifest
SAMPLE_PREFIX = "synth_"


def load_generator(gan_dir: str | Path, device: str = "auto") -> tuple[Generator, GANConfig, dict]:
    """The EMA generator of a finished run, its config and the sample geometry.

    Raises:
        InputError: no GAN run in ``gan_dir``, or its training has not reached the last stage.
    """
    gan_dir = Path(gan_dir)
    if not gan_dir.is_dir():
        raise InputError(gan_dir, "GAN folder not found")
    path = gan_dir / "checkpoints" / LATEST
    if not path.is_file():
        raise InputError(gan_dir, "no trained GAN here (checkpoints/latest.pt missing)")
    state = load_state(path)
    cfg = gan_config_from_dict(state["config"], str(path))
    if not is_finished(state):
        total = cfg.iterations(state["stage"])
        raise InputError(path, f"training stopped at stage {state['stage'] + 1} of {len(cfg.stages)}, "
                               f"iteration {state['iteration']} of {total}: finish it "
                               "with 'advseg synthesize train --resume'")
    g = Generator(cfg.stages, cfg.channels, cfg.latent_channels)
    g.load_state_dict(state["generator_ema"])
    return g.to(resolve_device(device)).eval(), cfg, state["geometry"]


def _seeded(seed: int, i: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + i)


@torch.no_grad()
def generate(g: Generator, n: int, seed: int, batch_size: int = 4) -> np.ndarray:
    """``n`` volumes ``(n, Z, Y, X)`` in [-1, 1] (clipped); the noise of sample ``i`` depends only on
    ``(seed, i)``, so the first samples of a larger ``n`` are the same volumes."""
    device = next(g.parameters()).device
    z = torch.stack([torch.randn(*g.latent_shape, generator=_seeded(seed, i)) for i in range(n)])
    out = [g(z[i:i + batch_size].to(device)).float().clamp(-1, 1)[:, 0].cpu()
           for i in range(0, n, batch_size)]
    return torch.cat(out).numpy()


def sample_gan(gan_dir: str | Path, n: int, out: str | Path, seed: int = 0, device: str = "auto",
               resolution: str = "data", overwrite: bool = False) -> list[Path]:
    """Write ``n`` synthesized CT volumes ``out/synth_000.nii.gz``, ... (int16 HU, the run's affine).

    ``resolution="data"`` (default) writes them on the training images' grid (mean shape, same
    field of view), so that they go through a segmentation's preprocessing as real images do;
    ``"gan"`` writes the GAN's own grid (the last stage's shape).

    Same ``(gan_dir, seed)``, same volumes. Older samples that an earlier ``sample_gan`` wrote into
    ``out`` are removed, so that the folder holds exactly these ``n`` samples when it is used as an
    unlabeled pool; no other file is ever removed. ``out`` must be new, empty or an earlier sample
    folder unless ``overwrite`` (:mod:`advseg.io.guard`), and may not be or contain ``gan_dir``.
    """
    out = Path(out)
    refuse_overlap([out], [], hosts=[gan_dir])
    if n < 1:
        raise InputError(None, f"--n must be >= 1, got {n}")
    if resolution not in ("data", "gan"):
        raise InputError(None, f"resolution must be 'data' or 'gan', got {resolution!r}")
    check_output_dir(out, SAMPLE_COMMAND, overwrite)
    g, cfg, geometry = load_generator(gan_dir, device)
    arrays = generate(g, n, seed)
    width = max(3, len(str(n - 1)))
    paths = [out / f"{SAMPLE_PREFIX}{i:0{width}d}.nii.gz" for i in range(n)]
    earlier = [out / f for f in owned_files(out, SAMPLE_COMMAND)] if out.is_dir() else []
    record_outputs(out, SAMPLE_COMMAND, paths)
    for path, arr in zip(paths, arrays, strict=True):
        vol: Volume = sample_volume(arr, geometry, cfg.hu_window, resolution)
        write_volume(path, vol, dtype=np.int16)
    stale = [old for old in earlier if old not in paths]
    for old in stale:
        old.unlink(missing_ok=True)
    if stale:
        forget_outputs(out, SAMPLE_COMMAND, stale)
    return paths
