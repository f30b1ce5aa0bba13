"""Python API of the CT synthesis (3D PGGAN); the ``advseg synthesize`` commands are thin wrappers.

>>> train_gan("data/pelvis", "runs/gan", gan_preset("small"))      # -> runs/gan/checkpoints/latest.pt
>>> sample_gan("runs/gan", n=30, out="runs/gan_samples", seed=0)    # -> [synth_000.nii.gz, ...]
>>> synthesis_report("runs/gan", "runs/res_unet", "data/pelvis", "runs/gan_report")
>>> synthesize_unlabeled("data/pelvis", "runs/synthetic", n=10, seed=0)  # what the demo calls
"""

from __future__ import annotations

from pathlib import Path

from advseg.synthesis.config import GANConfig, gan_preset, load_gan_config, merge_gan_config
from advseg.synthesis.report import synthesis_report
from advseg.synthesis.sample import sample_gan
from advseg.synthesis.trainer import LATEST, train_gan

__all__ = ["GANConfig", "gan_preset", "load_gan_config", "make_config", "sample_gan", "synthesis_report",
           "synthesize_unlabeled", "train_gan"]


def make_config(preset: str = "small", iterations_per_stage: int | None = None, seed: int | None = None,
                config: str | Path | None = None) -> GANConfig:
    """A preset (or a YAML file) with the command-line overrides applied."""
    cfg = load_gan_config(config) if config is not None else gan_preset(preset)
    updates = {}
    if iterations_per_stage is not None:
        updates["iterations_per_stage"] = iterations_per_stage
    if seed is not None:
        updates["seed"] = seed
    return merge_gan_config(cfg, updates, "command line") if updates else cfg


def synthesize_unlabeled(data_dir: str | Path, out_dir: str | Path, n: int, seed: int = 0,
                         preset: str = "small", iterations_per_stage: int | None = None,
                         gan_dir: str | Path | None = None, progress: bool = True) -> Path:
    """Train a GAN on ``data_dir``'s images if not done yet, then write ``n`` samples into ``out_dir``.

    The GAN run lives in ``gan_dir`` (default: ``<out_dir>_gan`` beside ``out_dir``, so the sample
    folder holds only images). An unfinished run there is resumed; a finished one is reused if its
    config matches. Returns ``out_dir``, ready to be passed as an unlabeled image folder.
    """
    out_dir = Path(out_dir)
    gan_dir = Path(gan_dir) if gan_dir is not None else out_dir.with_name(out_dir.name + "_gan")
    cfg = make_config(preset, iterations_per_stage, seed)
    resume = (gan_dir / "checkpoints" / LATEST).is_file()
    train_gan(data_dir, gan_dir, cfg, resume=resume, progress=progress)
    sample_gan(gan_dir, n, out_dir, seed=seed)
    return out_dir
