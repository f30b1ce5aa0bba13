"""Progressive GAN training with WGAN-GP, per-stage checkpoints and exact resume.

Losses (Gulrajani et al. 2017, eq. 3, with PGGAN's drift term, Karras et al. 2018, appendix A.1)::

    L_D = E[D(G(z))] - E[D(x)] + lambda * E[(||grad_x^ D(x^)||_2 - 1)^2] + eps_drift * E[D(x)^2]
    L_G = -E[D(G(z))]
    x^  = e x + (1 - e) G(z),  e ~ U(0, 1) per sample

One D step then one G step per iteration (n_critic = 1, as PGGAN). During a fade-in the real
volumes are blended the same way as G's output: ``lerp(up(down(x)), x, alpha)``, so D never sees a
resolution gap between real and fake. G's weights are also averaged (EMA) for sampling.

Run folder ``GAN_DIR``::

    gan_config.yaml                   the run's GANConfig
    .advseg.lock                      host and PID of the process training it (while it runs)
    checkpoints/latest.pt             where training stands (mid-stage, with optimizer states)
    checkpoints/stage<s>_<Z>x<Y>x<X>.pt   end of each stage (weights, EMA, RNG; no optimizer: a new
                                      stage starts with fresh Adam states)
    grids/stage<s>_<Z>x<Y>x<X>.png    mid axial / coronal slices of real and EMA-generated volumes
    log.csv                           losses per iteration
    geometry.json                     affine and shape the samples are written with

Every checkpoint is written atomically and holds only tensors and plain containers, so
``torch.load(weights_only=True)`` reads it. All randomness after initialisation (batches, flips,
noise, gradient-penalty mixing) comes from one CPU ``torch.Generator`` saved in the checkpoint, so
a resumed run computes exactly the same weights as an uninterrupted one (same device and threads).

Under ``torchrun`` (:mod:`advseg.training.distributed`) every rank trains G and D through their own
DistributedDataParallel wrappers (gradients averaged; the nets of the stages not yet reached are unused,
hence ``find_unused_parameters``), draws its own batches and noise from its own generator (rank r > 0:
seed + 1000 r; the global batch is ``batch_size(stage) x world_size``), and rank 0 alone writes the run
folder; the checkpoints hold every rank's generator state (``ranks``), so a resumed run with the same
number of ranks continues exactly. G's forward pass inside D's step (no gradient) and D's inside G's
step (frozen) use the nets themselves, never the wrappers.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import io
import json
import math
import time
from pathlib import Path
from typing import Any

import torch

from advseg.errors import InputError
from advseg.io.atomic import atomic_write_text
from advseg.io.guard import refuse_overlap
from advseg.io.lock import RunLock, check_unlocked
from advseg.runtime.checkpoint import load_checkpoint, save_checkpoint
from advseg.synthesis.config import GANConfig, gan_config_from_dict, gan_preset
from advseg.synthesis.data import (
    TrainingSet,
    find_training_images,
    geometry_spacing,
    load_training_set,
    to_hu,
)
from advseg.synthesis.figures import save_sample_grid
from advseg.synthesis.layers import downsample, upsample
from advseg.synthesis.networks import Discriminator, Generator, build_networks
from advseg.training import distributed

FORMAT = "advseg-pggan-1"
LATEST = "latest.pt"
GRID_SEED_OFFSET = 1_000_003  # the grid's fixed noise never touches the training generator
LOG_FIELDS = ["step", "stage", "iteration", "alpha", "loss_d", "loss_g", "gp", "d_real", "d_fake", "seconds"]


def resolve_device(name: str = "auto") -> torch.device:
    """``auto``: CUDA if available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(None, f"device '{name}' requested but CUDA is not available")
    return torch.device(name)


def stage_name(cfg: GANConfig, stage: int) -> str:
    z, y, x = cfg.stages[stage]
    return f"stage{stage}_{z}x{y}x{x}"


# -- checkpoints ------------------------------------------------------------------------------------

def save_state(path: Path, state: dict[str, Any]) -> None:
    """Atomic write (temp file + rename), refusing NaN weights (the segmentation trainer's writer)."""
    save_checkpoint(path, state)


def load_state(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    if not path.is_file():
        raise InputError(path, "GAN checkpoint not found")
    kind, _, version = FORMAT.rpartition("-")
    return load_checkpoint(path, map_location=map_location, kind=kind, version=int(version))


def is_finished(state: dict[str, Any]) -> bool:
    cfg = gan_config_from_dict(state["config"])
    last = len(cfg.stages) - 1
    return state["stage"] == last and state["iteration"] >= cfg.iterations(last)


# -- one iteration ----------------------------------------------------------------------------------

class _Trainer:
    """Holds the networks, optimizers, data pyramid and RNG of one run."""

    def __init__(self, cfg: GANConfig, tset: TrainingSet, device: torch.device) -> None:
        self.cfg = cfg
        self.device = device
        self.tset = tset
        with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's RNG
            torch.manual_seed(cfg.seed)
            g, d = build_networks(cfg)
        self.G: Generator = g.to(device)
        self.D: Discriminator = d.to(device)
        self.G_ema: Generator = copy.deepcopy(self.G).eval().requires_grad_(False)
        self.rank = distributed.rank()
        self.rng = torch.Generator().manual_seed(cfg.seed + distributed.RANK_SEED_STRIDE * self.rank)
        # the training forward passes whose gradients are averaged over the ranks (the nets themselves
        # on one process); stages not yet grown leave parameters without gradient
        self.G_train = distributed.wrap(self.G, device, find_unused_parameters=True)
        self.D_train = distributed.wrap(self.D, device, find_unused_parameters=True)
        self.opt_g: torch.optim.Optimizer | None = None
        self.opt_d: torch.optim.Optimizer | None = None
        self.use_amp = cfg.amp and device.type == "cuda"
        # Real volumes at every stage's resolution, and their up-sampled lower stage for fade-ins.
        full = tset.volumes.to(device)
        self.real = [full]
        for s in range(len(cfg.stages) - 1, 0, -1):
            self.real.insert(0, downsample(self.real[0], self.G.factors[s]))
        self.real_low = [None] + [upsample(self.real[s - 1], self.G.factors[s])
                                  for s in range(1, len(cfg.stages))]

    def new_optimizers(self) -> None:
        c = self.cfg
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=c.lr, betas=tuple(c.betas), eps=c.eps)
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=c.lr, betas=tuple(c.betas), eps=c.eps)

    def _autocast(self):
        if self.use_amp:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _noise(self, b: int) -> torch.Tensor:
        return torch.randn(b, *self.cfg.latent_shape, generator=self.rng).to(self.device)

    def step(self, stage: int, alpha: float) -> dict[str, float]:
        """One D step and one G step at ``stage`` with fade-in weight ``alpha``; returns the losses."""
        c = self.cfg
        b = c.batch_size(stage)
        n = self.real[stage].shape[0]
        # Draw everything from the run's generator in a fixed order (exact resume).
        idx = torch.randint(n, (b,), generator=self.rng)
        flip = torch.rand(b, generator=self.rng) < 0.5
        z_d = self._noise(b)
        mix = torch.rand(b, 1, 1, 1, 1, generator=self.rng).to(self.device)
        z_g = self._noise(b)
        idx = idx.to(self.device)
        real = self.real[stage][idx]
        if alpha < 1.0 and stage > 0:
            real = torch.lerp(self.real_low[stage][idx], real, alpha)
        if c.flip_x:
            real = torch.where(flip.to(self.device).view(-1, 1, 1, 1, 1), real.flip(-1), real)

        # D step
        with torch.no_grad(), self._autocast():
            fake = self.G(z_d, stage, alpha)
        fake = fake.float()
        x_hat = torch.lerp(fake, real, mix).requires_grad_(True)
        with self._autocast():
            d_real = self.D_train(real, stage, alpha).float()
            d_fake = self.D_train(fake, stage, alpha).float()
            d_hat = self.D_train(x_hat, stage, alpha).float()
        (grad,) = torch.autograd.grad(d_hat.sum(), x_hat, create_graph=True)
        gp = (grad.float().flatten(1).norm(dim=1) - 1.0).pow(2).mean()
        loss_d = d_fake.mean() - d_real.mean() + c.gp_lambda * gp + c.drift * d_real.pow(2).mean()
        self.opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        self.opt_d.step()

        # G step (D frozen: its gradients are not needed)
        self.D.requires_grad_(False)
        with self._autocast():
            loss_g = -self.D(self.G_train(z_g, stage, alpha), stage, alpha).float().mean()
        self.opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        self.opt_g.step()
        self.D.requires_grad_(True)

        self._update_ema()
        out = {"loss_d": loss_d.item(), "loss_g": loss_g.item(), "gp": gp.item(),
               "d_real": d_real.mean().item(), "d_fake": d_fake.mean().item()}
        out = distributed.mean_scalars(out)  # means over the ranks: a NaN on one stops every rank
        if not all(math.isfinite(v) for v in out.values()):
            if not distributed.is_main():
                raise distributed.PeerFailed()
            raise FloatingPointError(f"GAN training diverged at stage {stage} ({out}); the last checkpoint "
                                     "is kept: resume with a lower lr or a larger gp_lambda")
        return out

    @torch.no_grad()
    def _update_ema(self) -> None:
        for p_ema, p in zip(self.G_ema.parameters(), self.G.parameters(), strict=True):
            p_ema.lerp_(p, 1.0 - self.cfg.ema_beta)

    # -- state --------------------------------------------------------------------------------------

    def state(self, stage: int, iteration: int, step: int, elapsed: float,
              with_optim: bool) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "config": self.cfg.to_dict(),
            "stage": stage,
            "iteration": iteration,
            "step": step,
            "elapsed_s": elapsed,
            "generator": self.G.state_dict(),
            "discriminator": self.D.state_dict(),
            "generator_ema": self.G_ema.state_dict(),
            "opt_g": self.opt_g.state_dict() if with_optim and self.opt_g else None,
            "opt_d": self.opt_d.state_dict() if with_optim and self.opt_d else None,
            "rng": self.rng.get_state(),
            **({"ranks": distributed.all_gather_object(self.rng.get_state())}
               if distributed.world_size() > 1 else {}),
            "geometry": self.tset.geometry,
            "data_files": list(self.tset.files),
        }

    def load(self, state: dict[str, Any]) -> None:
        self.G.load_state_dict(state["generator"])
        self.D.load_state_dict(state["discriminator"])
        self.G_ema.load_state_dict(state["generator_ema"])
        ranks = state.get("ranks") or [state["rng"]]
        if self.rank < len(ranks):
            self.rng.set_state(ranks[self.rank])
        else:  # more ranks than the saved run: a stream of its own (continues, not bit-exact)
            self.rng.manual_seed(self.cfg.seed + distributed.RANK_SEED_STRIDE * self.rank + state["step"])
        if state.get("opt_g") is not None:
            self.new_optimizers()
            self.opt_g.load_state_dict(state["opt_g"])
            self.opt_d.load_state_dict(state["opt_d"])

    @torch.no_grad()
    def grid(self, path: Path, stage: int) -> Path:
        """Sample grid of the EMA generator at ``stage`` from fixed noise, two real volumes first."""
        c = self.cfg
        g = torch.Generator().manual_seed(c.seed + GRID_SEED_OFFSET)
        z = torch.randn(c.grid_samples, *c.latent_shape, generator=g).to(self.device)
        fake = self.G_ema(z, stage, 1.0).float()[:, 0].cpu().numpy()
        real = self.real[stage][: min(2, self.real[stage].shape[0]), 0].cpu().numpy()
        spacing = geometry_spacing(self.tset.geometry, tuple(c.stages[stage]))
        z_, y_, x_ = c.stages[stage]
        return save_sample_grid(path, to_hu(fake, c.hu_window), to_hu(real, c.hu_window),
                                spacing, f"stage {stage}: {z_} x {y_} x {x_} (EMA generator)")


# -- the run ----------------------------------------------------------------------------------------

def _rewind_log(path: Path, step: int) -> None:
    """Keep the log rows up to ``step`` (the checkpoint's); a torn last row goes too."""
    if not path.is_file():
        return
    with path.open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("step", "").isdigit() and int(r["step"]) <= step
                and None not in r.values()]
    if not rows:
        path.unlink()
        return
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=LOG_FIELDS)
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def _append_log(path: Path, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    new = not path.exists()
    with path.open("a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=LOG_FIELDS)
        if new:
            w.writeheader()
        w.writerows(rows)


def _progress(enabled: bool):
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn(), disable=not enabled)


def train_gan(data: str | Path, out: str | Path, cfg: GANConfig | None = None, resume: bool = False, *,
              max_iterations: int | None = None, progress: bool = True) -> Path:
    """Train a PGGAN on the images of ``data`` into the run folder ``out`` (module docstring).

    Args:
        data: dataset folder or folder of NIfTI images (:func:`~advseg.synthesis.data.find_training_images`).
        out: GAN run folder; must not hold a run unless ``resume``.
        cfg: the run's config (default: preset ``small``). With ``resume``, None means the saved
            one; a different config is refused (it would not be the same run).
        resume: continue from ``checkpoints/latest.pt`` exactly where it stopped.
        max_iterations: stop (checkpointed) after this many iterations in this call; continue later
            with ``resume=True``.
        progress: show a progress bar.

    Returns:
        Path of ``checkpoints/latest.pt``.

    Raises:
        InputError: bad data folder, nothing to resume, or a run already in ``out`` — all before
            anything is written.
    """
    out = Path(out)
    latest = out / "checkpoints" / LATEST
    distributed.init_from_env()
    main = distributed.is_main()
    # rank 0 checks the run folder and reads the checkpoint; the others get the config and state from it
    cfg, state = distributed.run_on_main_first(
        lambda: _settle_run(data, out, cfg, resume, max_iterations), lambda shared: shared, share=lambda r: r)
    cfg = cfg or gan_preset("small")
    if state is not None and is_finished(state):
        return latest

    def load_data() -> TrainingSet:
        tset = load_training_set(find_training_images(data), cfg.target_shape, cfg.hu_window, cfg.n_slices,
                                 cfg.crop_xy)
        if state is not None and state["data_files"] != tset.files:
            raise InputError(data, f"holds other images than the run being resumed ({len(tset.files)} vs "
                                   f"{len(state['data_files'])} files, or different names)")
        return tset

    tset = distributed.collective(load_data)
    if state is not None:
        tset.geometry = state["geometry"]  # the run's geometry, as first computed

    device = distributed.device_for(resolve_device(cfg.device))
    trainer = _Trainer(cfg, tset, device)
    stage, it, step, elapsed = 0, 0, 0, 0.0
    if state is not None:
        trainer.load(state)
        stage, it, step, elapsed = state["stage"], state["iteration"], state["step"], state["elapsed_s"]
        if it >= cfg.iterations(stage):  # the saved stage was complete: the next one starts fresh
            stage, it = stage + 1, 0
    if main:
        out.mkdir(parents=True, exist_ok=True)
    # one writer per GAN folder (rank 0 under torchrun); a killed run's lock is taken over
    with RunLock(out) if main else contextlib.nullcontext():
        if main:
            cfg.save(out / "gan_config.yaml")
            atomic_write_text(out / "geometry.json", json.dumps(tset.geometry, indent=2))
            _rewind_log(out / "log.csv", step)  # rows of iterations a kill lost are written again
            for tmp in out.glob("checkpoints/.*.pt.*.tmp"):  # a checkpoint write a kill cut short
                tmp.unlink()

        n_stages = len(cfg.stages)
        log_rows: list[dict[str, Any]] = []
        t0 = time.perf_counter() - elapsed
        done_here = 0

        def checkpoint(path: Path, with_optim: bool) -> None:
            snapshot = trainer.state(stage, it, step, time.perf_counter() - t0, with_optim)  # collective
            if main:
                _append_log(out / "log.csv", log_rows)
                save_state(path, snapshot)
            log_rows.clear()

        with _progress(progress and main) as bar:
            task = bar.add_task("PGGAN", total=cfg.total_iterations,
                                completed=sum(cfg.iterations(s) for s in range(stage)) + it)
            while stage < n_stages:
                if it == 0 or trainer.opt_g is None:
                    trainer.new_optimizers()
                ips = cfg.iterations(stage)
                while it < ips:
                    alpha = cfg.alpha(stage, it)
                    losses = trainer.step(stage, alpha)
                    it += 1
                    step += 1
                    done_here += 1
                    log_rows.append({"step": step, "stage": stage, "iteration": it, "alpha": round(alpha, 6),
                                     **{k: round(v, 6) for k, v in losses.items()},
                                     "seconds": round(time.perf_counter() - t0, 3)})
                    z, y, x = cfg.stages[stage]
                    bar.update(task, advance=1,
                               description=f"stage {stage} {z}x{y}x{x} a={alpha:.2f} "
                                           f"D {losses['loss_d']:+.3f} G {losses['loss_g']:+.3f}")
                    if it < ips and it % cfg.checkpoint_every == 0:
                        checkpoint(latest, with_optim=True)
                    if max_iterations is not None and done_here >= max_iterations and it < ips:
                        checkpoint(latest, with_optim=True)
                        return latest
                # End of the stage: grid first, then the checkpoints (a crash in between redoes nothing).
                if cfg.grid_samples and main:
                    trainer.grid(out / "grids" / f"{stage_name(cfg, stage)}.png", stage)
                checkpoint(out / "checkpoints" / f"{stage_name(cfg, stage)}.pt", with_optim=False)
                checkpoint(latest, with_optim=False)
                if stage == n_stages - 1 or (max_iterations is not None and done_here >= max_iterations):
                    return latest
                stage, it = stage + 1, 0
        return latest


def _settle_run(data: str | Path, out: Path, cfg: GANConfig | None, resume: bool,
                max_iterations: int | None) -> tuple[GANConfig | None, dict[str, Any] | None]:
    """The run's config and, when resuming, its latest checkpoint; every check on the run folder."""
    refuse_overlap([out], [data])
    latest = out / "checkpoints" / LATEST
    if max_iterations is not None and max_iterations < 1:
        raise InputError(None, f"max_iterations must be >= 1, got {max_iterations}")
    state = None
    check_unlocked(out)  # a run writing this folder right now: fail before any work
    if resume:
        if not latest.is_file():
            raise InputError(out, "nothing to resume (no checkpoints/latest.pt in this GAN folder)")
        state = load_state(latest)
        saved = gan_config_from_dict(state["config"], str(latest))
        if cfg is not None and cfg != saved:
            raise InputError(out, "the given config differs from the saved run's; resume without "
                                  "--preset / --iterations-per-stage")
        cfg = saved
    elif latest.exists():
        raise InputError(out, "already holds a GAN run: use --resume to continue it, or another --out")
    return cfg, state
