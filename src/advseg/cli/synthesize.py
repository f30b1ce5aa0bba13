"""``advseg synthesize ...``: train a 3D PGGAN on CT images, sample it, and report on its samples.

Mounted in :mod:`advseg.cli.main` with ``app.add_typer(synthesis_app, name="synthesize")``. Heavy
imports (torch) happen inside the commands so that ``advseg --help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from advseg.cli.common import command_app, fail
from advseg.errors import InputError

app = command_app(
    "Synthesize unlabeled CT volumes with a 3D progressive-growing GAN (train, sample, report).")


@app.command()
def train(
    data: Annotated[Path, typer.Option(help="Dataset folder (labels unused) or folder of CT NIfTI images.")],
    out: Annotated[Path, typer.Option(help="GAN run folder (checkpoints, sample grids, log).")],
    preset: Annotated[str | None, typer.Option(
        help="small (CPU, minutes, 16x32x32) | cpu (CPU, ~45 min, 32x64x64) | paper (GPU).")] = None,
    config: Annotated[Path | None, typer.Option(help="YAML file of GAN settings.")] = None,
    resume: Annotated[bool, typer.Option(help="Continue the run in --out exactly where it stopped.")] = False,
    iterations_per_stage: Annotated[int | None, typer.Option(
        help="Override iterations per stage (this many at every stage).")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed (default: the preset's, 0).")] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Train (or resume) a GAN; a checkpoint and a sample grid PNG are written at every stage."""
    from advseg.synthesis.api import make_config, train_gan

    try:
        if preset and config:
            raise InputError(config, "give --preset or --config, not both")
        given = preset or config or iterations_per_stage is not None or seed is not None
        cfg = None
        if given or not resume:  # resume alone: the saved config
            cfg = make_config(preset or "small", iterations_per_stage, seed, config)
        path = train_gan(data, out, cfg, resume=resume, progress=progress)
    except InputError as exc:
        fail(exc)
    from advseg.training import distributed

    distributed.shutdown()  # under torchrun: leave the process group together
    typer.echo(f"GAN checkpoint: {path}; sample grids in {out / 'grids'}")


@app.command()
def sample(
    gan_dir: Annotated[Path, typer.Argument(help="A trained GAN run folder.")],
    out: Annotated[Path, typer.Option(help="Folder for synth_000.nii.gz, ... (an unlabeled image folder).")],
    n: Annotated[int, typer.Option(help="Number of volumes.")] = 30,
    seed: Annotated[int, typer.Option(help="Seed: the same seed gives the same volumes.")] = 0,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = "auto",
    resolution: Annotated[str, typer.Option(help="data (images' grid) | gan (GAN's grid).")] = "data",
    overwrite: Annotated[bool, typer.Option(help="Write into an --out folder holding other files.")] = False,
) -> None:
    """Write synthesized CT volumes (int16 HU, with the training data's field of view)."""
    from advseg.synthesis.api import sample_gan

    try:
        paths = sample_gan(gan_dir, n, out, seed=seed, device=device, resolution=resolution,
                           overwrite=overwrite)
    except InputError as exc:
        fail(exc)
    typer.echo(f"wrote {len(paths)} volumes to {out}")


@app.command()
def report(
    gan_dir: Annotated[Path, typer.Argument(help="A trained GAN run folder.")],
    model: Annotated[Path, typer.Option(help="Trained segmentation run folder (labels the samples).")],
    data: Annotated[Path, typer.Option(help="Labeled dataset folder (real volumes and organ names).")],
    out: Annotated[Path, typer.Option(help="Report folder.")],
    n: Annotated[int, typer.Option(help="Volumes to synthesize for the report.")] = 10,
    seed: Annotated[int, typer.Option(help="Sampling seed.")] = 0,
    samples: Annotated[Path | None, typer.Option(help="Use this folder of synth_*.nii.gz instead.")] = None,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = "auto",
) -> None:
    """Per-organ mean HU of synthesized vs real volumes, histogram distances and a slice figure."""
    from advseg.synthesis.api import synthesis_report

    try:
        result = synthesis_report(gan_dir, model, data, out, n=n, seed=seed, samples=samples, device=device)
    except InputError as exc:
        fail(exc)
    typer.echo((out / "report.md").read_text())
    typer.echo(f"figure: {result['figure']}")
