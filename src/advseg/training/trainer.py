"""The base trainer: one iteration loop with small hooks.

The loop (schedule, logging, validation, checkpoints, NaN guard, progress bar, exact resume) lives
here once. A method variant subclasses :class:`Trainer` and overrides hooks, as nnU-Net's
``nnUNetTrainer`` variants do:

- :meth:`Trainer.build_extra` adds networks/optimizers (e.g. the discriminator D);
- :meth:`Trainer.training_step` computes and applies one iteration's losses;
- :meth:`Trainer.wants_unlabeled` decides whether an iteration also draws an unlabeled batch;
- :meth:`Trainer.validation_case` / :meth:`Trainer.validation_summary` add entries to a validation's
  log record (e.g. the adversarial trainer's D diagnostics);
- :meth:`Trainer.on_validation` adds figures or extra validation outputs.

Everything a trainer registers in :attr:`Trainer.nets`, :attr:`Trainer.optims` and
:attr:`Trainer.scheds` is saved in the checkpoint automatically, with the RNG states and sampler
states, so a resumed run continues bit-for-bit.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from advseg.config import Config
from advseg.errors import InputError
from advseg.inference.sliding import predict_logits
from advseg.losses import build_loss
from advseg.networks.factory import build_network, channels_last_input, to_channels_last
from advseg.training.checkpoint import (
    CHECKPOINT_FORMAT,
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
    to_plain,
)
from advseg.training.log import TrainingLog


def dice_per_class(pred: np.ndarray, truth: np.ndarray, num_classes: int) -> np.ndarray:
    """DSC of every class index (NaN where the class is absent from both), from one confusion count.

    ``pred``/``truth``: integer label maps of equal shape. Used for validation during training; the
    full, spacing-aware metric set is in :mod:`advseg.metrics`.
    """
    k = num_classes
    conf = np.bincount(truth.astype(np.int64).ravel() * k + pred.astype(np.int64).ravel(), minlength=k * k)
    conf = conf.reshape(k, k)
    tp = np.diag(conf).astype(np.float64)
    denom = conf.sum(0) + conf.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, 2 * tp / denom, np.nan)


class TrainingDiverged(RuntimeError):
    """A loss became NaN/Inf; the run stops and no checkpoint of that state is written."""


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class BatchSource:
    """Collates single samples of a sampler into batches; its state is the sampler's state.

    ``sampler`` must be iterable (an endless stream of dicts of tensors) and provide
    ``state_dict()``/``load_state_dict()``. ``served`` counts the samples handed out, so a test can
    check what the trainer consumed (e.g. no unlabeled data during pre-training).
    """

    def __init__(self, sampler: Any, batch_size: int) -> None:
        self.sampler = sampler
        self.batch_size = batch_size
        self.served = 0
        self._it: Iterator[dict[str, Any]] | None = None

    def next(self) -> dict[str, Any]:
        if self._it is None:
            self._it = iter(self.sampler)
        items = [next(self._it) for _ in range(self.batch_size)]
        self.served += len(items)
        batch: dict[str, Any] = {}
        for key in items[0]:
            vals = [it[key] for it in items]
            batch[key] = torch.stack(vals) if isinstance(vals[0], torch.Tensor) else vals
        return batch

    def state_dict(self) -> dict[str, Any]:
        return {"sampler": to_plain(self.sampler.state_dict()), "served": self.served}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sampler.load_state_dict(state["sampler"])
        self.served = int(state["served"])
        self._it = None


@dataclass
class TrainData:
    """What a trainer consumes: batch sources and the validation volumes (preprocessed).

    ``val_images[i]``: ``(C, Z, Y, X)`` float32; ``val_labels[i]``: ``(Z, Y, X)`` integer.
    ``labels``: class index -> name; ``class_voxel_counts``: N_c over the labeled training cases.
    """

    labeled: BatchSource
    labels: dict[int, str]
    unlabeled: BatchSource | None = None
    val_names: list[str] = field(default_factory=list)
    val_images: list[np.ndarray] = field(default_factory=list)
    val_labels: list[np.ndarray] = field(default_factory=list)
    class_voxel_counts: np.ndarray | None = None
    lr_pairs: list[tuple[int, int]] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return max(self.labels) + 1


class Trainer:
    """Supervised training of the segmenter S (the study's ``3d_res_Unet`` and ``+aux`` steps)."""

    def __init__(self, cfg: Config, run_dir: str | Path, data: TrainData, device: str = "auto") -> None:
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.data = data
        self.device = resolve_device(device if device != "auto" else cfg.train.device)
        self.iteration = 0
        self.best_score = -math.inf
        self.best_iteration = -1
        self.nets: dict[str, torch.nn.Module] = {}
        self.optims: dict[str, torch.optim.Optimizer] = {}
        self.scheds: dict[str, torch.optim.lr_scheduler.LRScheduler] = {}
        self.log = TrainingLog(self.run_dir / "log.jsonl")
        self.scaler = torch.amp.GradScaler("cuda", enabled=self._use_fp16)
        torch.manual_seed(cfg.train.seed)
        self.build()
        self.build_extra()
        if cfg.train.channels_last:
            for net in self.nets.values():
                to_channels_last(net)

    # ------------------------------------------------------------------ set-up hooks
    @property
    def _use_fp16(self) -> bool:
        return self.device.type == "cuda" and self.cfg.train.amp

    def autocast(self) -> contextlib.AbstractContextManager:
        """fp16 autocast on CUDA (with a GradScaler), optional bf16 autocast on CPU."""
        if self._use_fp16:
            return torch.autocast("cuda", dtype=torch.float16)
        if self.device.type == "cpu" and self.cfg.train.bf16_cpu:
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def build(self) -> None:
        """S, its voxel loss L_vox, Adam and polynomial decay (lr * (1 - t/T)^0.9)."""
        self.model = build_network(self.cfg.network).to(self.device)
        self.nets["S"] = self.model
        self.loss_vox = build_loss(
            self.cfg.loss, self.data.num_classes, class_voxel_counts=self.data.class_voxel_counts
        ).to(self.device)
        self.nets["loss_vox"] = self.loss_vox  # holds running per-class DSC buffers
        self.add_optimizer("S", self.model.parameters(), self.cfg.train.lr)

    def add_optimizer(
        self, name: str, params: Any, lr: float, betas: tuple[float, float] = (0.9, 0.999)
    ) -> None:
        opt = torch.optim.Adam(params, lr=lr, betas=betas, weight_decay=self.cfg.train.weight_decay)
        self.optims[name] = opt
        self.scheds[name] = torch.optim.lr_scheduler.PolynomialLR(
            opt, total_iters=max(1, self.cfg.train.iterations), power=self.cfg.train.poly_power
        )

    def build_extra(self) -> None:
        """Hook: variants add networks (``self.nets``) and optimizers (:meth:`add_optimizer`)."""

    # ------------------------------------------------------------------ per-iteration hooks
    def wants_unlabeled(self) -> bool:
        """Hook: whether this iteration also draws an unlabeled batch (never, when supervised)."""
        return False

    def next_labeled(self) -> dict[str, torch.Tensor]:
        return self._to_device(self.data.labeled.next())

    def next_unlabeled(self) -> dict[str, torch.Tensor] | None:
        if self.data.unlabeled is None or not self.wants_unlabeled():
            return None
        return self._to_device(self.data.unlabeled.next())

    def _to_device(self, batch: dict[str, Any]) -> dict[str, Any]:
        out = {
            k: v.to(self.device, non_blocking=True) if isinstance(v, torch.Tensor) else v
            for k, v in batch.items()
        }
        if self.cfg.train.channels_last and isinstance(out.get("image"), torch.Tensor):
            out["image"] = channels_last_input(out["image"])
        return out

    def step_optimizer(self, name: str, loss: torch.Tensor) -> None:
        """Backward ``loss`` and step optimizer ``name`` (scaled on CUDA fp16)."""
        opt = self.optims[name]
        opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(opt)

    def training_step(self) -> dict[str, float]:
        """Hook: one iteration. Supervised: L_vox on a labeled batch (deep supervision if aux)."""
        batch = self.next_labeled()
        self.model.train()
        with self.autocast():
            out = self.model(batch["image"])
            loss = self.loss_vox(out, batch["label"])
        self.check_finite({"loss_vox": loss})
        self.step_optimizer("S", loss)
        return {"loss_vox": float(loss.detach())}

    def check_finite(self, losses: dict[str, torch.Tensor]) -> None:
        bad = [k for k, v in losses.items() if not torch.isfinite(v.detach()).all()]
        if bad:
            raise TrainingDiverged(
                f"{', '.join(bad)} became NaN/Inf at iteration {self.iteration + 1}; stopped without "
                f"saving this state (last good checkpoint: {self.run_dir / 'checkpoint_last.pt'}). "
                "Try a lower learning rate or train.amp=false."
            )

    FIGURE_CASES = 2

    def on_validation(self, scores: dict[str, float]) -> None:
        """Hook: after each validation, a PNG of image / truth / prediction (/ D's confidence) for the
        first validation cases every ``train.figure_every`` iterations (0: every validation)."""
        every = self.cfg.train.figure_every
        if every and self.iteration % every and self.iteration != self.cfg.train.iterations:
            return
        from advseg.training.figures import save_validation_figure

        cases = []
        for name, img, lbl, (pred, probs) in zip(
            self.data.val_names, self.data.val_images, self.data.val_labels, self._val_figure, strict=False
        ):
            cases.append((name, img[0], lbl, pred, self.confidence_map(img, probs)))
        folder = self.run_dir / "figures"
        folder.mkdir(exist_ok=True)
        save_validation_figure(
            folder / f"val_{self.iteration:06d}.png",
            cases,
            self.data.num_classes,
            title=f"iteration {self.iteration}: mean DSC {scores['dsc_mean']:.3f}",
        )

    def validation_case(
        self, image: np.ndarray, label: np.ndarray, pred: np.ndarray, logits: torch.Tensor
    ) -> None:
        """Hook: called for every validation case with the preprocessed ``image`` ``(C, Z, Y, X)``, its
        ``label`` and S's ``pred`` ``(Z, Y, X)`` and ``logits`` ``(1, K, Z, Y, X)`` (e.g. to collect
        confidence diagnostics); :meth:`validation_summary` follows after the last case."""

    def validation_summary(self) -> dict[str, Any]:
        """Hook: extra entries of this validation's ``log.jsonl`` record (JSON values), computed from
        what :meth:`validation_case` collected. Runs before the best checkpoint is written, so state it
        changes is saved with it."""
        return {}

    def confidence_map(self, image: np.ndarray, probs: torch.Tensor) -> np.ndarray | None:
        """Hook: D's per-voxel confidence ``(Z, Y, X)`` for S's softmax ``probs`` ``(1, K, Z, Y, X)`` of the
        preprocessed ``image`` ``(C, Z, Y, X)`` (None without a per-voxel D)."""
        return None

    # ------------------------------------------------------------------ loop
    def fit(self, progress: bool = True) -> dict[str, Any]:
        """Train up to ``cfg.train.iterations``; returns the best validation scores."""
        total = self.cfg.train.iterations
        tc = self.cfg.train
        bar = _Progress(total, self.iteration, enabled=progress)
        t0 = time.perf_counter()
        try:
            while self.iteration < total and not self.plateaued():
                logs = self.training_step()
                self.scaler.update()
                with warnings.catch_warnings():
                    # a variant may leave an optimizer unstepped for an iteration (S during D's warm-up):
                    # its schedule advances all the same, as the iteration count does
                    warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)`")
                    for s in self.scheds.values():
                        s.step()
                self.iteration += 1
                logs = {
                    "kind": "train",
                    "iteration": self.iteration,
                    "lr": self.optims["S"].param_groups[0]["lr"],
                    **logs,
                }
                self.log.append(logs)
                bar.update(self.iteration, logs)
                last = self.iteration == total
                if tc.val_every and (self.iteration % tc.val_every == 0 or last):
                    self.validate()
                stop = self.plateaued()
                if stop:
                    self.log.append({"kind": "stop", "iteration": self.iteration,
                                     "best_iteration": self.best_iteration, "reason": "plateau"})
                if last or stop or (tc.checkpoint_every and self.iteration % tc.checkpoint_every == 0):
                    self.save("last")
        finally:
            bar.close()
        self.log.plot(self.run_dir / "learning_curves.png")
        return {
            "best_score": self.best_score,
            "best_iteration": self.best_iteration,
            "iterations": self.iteration,
            "seconds": time.perf_counter() - t0,
        }

    def plateaued(self) -> bool:
        """Whether early stopping ends the run now: ``train.early_stop_patience`` validations since the
        best one (``validate`` counts only gains above ``early_stop_min_delta`` as improvements)."""
        tc = self.cfg.train
        if not tc.early_stop_patience or not tc.val_every or self.best_iteration < 0:
            return False
        return self.iteration - self.best_iteration >= tc.early_stop_patience * tc.val_every

    @torch.inference_mode()
    def predict_volume(self, image: np.ndarray) -> torch.Tensor:
        """Logits ``(1, K, Z, Y, X)`` for a preprocessed ``(C, Z, Y, X)`` volume, in eval mode."""
        self.model.eval()
        x = torch.from_numpy(np.ascontiguousarray(image))[None].to(self.device)
        if self.cfg.train.channels_last:
            x = channels_last_input(x)
        with self.autocast():
            return predict_logits(
                self.model,
                x,
                self.cfg.data.patch_size,
                mode=self.cfg.inference.mode,
                overlap=self.cfg.inference.overlap,
                sw_batch_size=self.cfg.inference.sw_batch_size,
                spatial_dims=self.cfg.network.spatial_dims,
            ).float()

    def validate(self) -> dict[str, float]:
        """Per-class DSC on the validation cases; the best mean foreground DSC is checkpointed."""
        if not self.data.val_images:
            return {}
        per_case = []
        self._val_figure: list[tuple[np.ndarray, torch.Tensor]] = []
        for img, lbl in zip(self.data.val_images, self.data.val_labels, strict=True):
            logits = self.predict_volume(img)
            pred = logits.argmax(1)[0].cpu().numpy()
            per_case.append(dice_per_class(pred, lbl, self.data.num_classes))
            if len(self._val_figure) < self.FIGURE_CASES:
                self._val_figure.append((pred, torch.softmax(logits, dim=1)))
            self.validation_case(img, lbl, pred, logits)
        dsc = np.nanmean(np.asarray(per_case, dtype=np.float64), axis=0)
        scores = {f"dsc_{self.data.labels.get(c, c)}": float(dsc[c]) for c in range(1, self.data.num_classes)}
        scores["dsc_mean"] = float(np.nanmean(dsc[1:]))
        # before the best checkpoint is written: the summary may update state (e.g. an auto T_semi)
        extra = self.validation_summary()
        self.log.append({"kind": "val", "iteration": self.iteration, **scores, **extra})
        if scores["dsc_mean"] > self.best_score + self.cfg.train.early_stop_min_delta:
            self.best_score, self.best_iteration = scores["dsc_mean"], self.iteration
            self.save("best")
        self.on_validation(scores)
        return scores

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "format": CHECKPOINT_FORMAT,
            "iteration": self.iteration,
            "best_score": self.best_score,
            "best_iteration": self.best_iteration,
            "config": self.cfg.to_dict(),
            "labels": {int(k): v for k, v in self.data.labels.items()},
            "nets": {k: m.state_dict() for k, m in self.nets.items()},
            "optimizers": {k: o.state_dict() for k, o in self.optims.items()},
            "schedulers": {k: s.state_dict() for k, s in self.scheds.items()},
            "scaler": self.scaler.state_dict(),
            "rng": capture_rng_state(),
            "data": {"labeled": self.data.labeled.state_dict()},
            "extra": self.extra_state(),
        }
        if self.data.unlabeled is not None:
            state["data"]["unlabeled"] = self.data.unlabeled.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.iteration = int(state["iteration"])
        self.best_score = float(state["best_score"])
        self.best_iteration = int(state["best_iteration"])
        for k, m in self.nets.items():
            m.load_state_dict(state["nets"][k])
        for k, o in self.optims.items():
            o.load_state_dict(state["optimizers"][k])
        for k, s in self.scheds.items():
            s.load_state_dict(state["schedulers"][k])
            self._retarget_schedule(k, s)
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        restore_rng_state(state["rng"])
        self.data.labeled.load_state_dict(state["data"]["labeled"])
        if self.data.unlabeled is not None and "unlabeled" in state["data"]:
            self.data.unlabeled.load_state_dict(state["data"]["unlabeled"])
        self.load_extra_state(state.get("extra", {}))
        self.log.truncate(self.iteration)

    def _retarget_schedule(self, name: str, sched: torch.optim.lr_scheduler.LRScheduler) -> None:
        """A run resumed with more (or fewer) ``train.iterations`` than it was started with: the
        polynomial decay is re-aimed at the new end, ``lr = base (1 - t / T_new)^p`` from the current
        iteration (the checkpoint's scheduler would otherwise end at the old T, at learning rate 0)."""
        total = max(1, self.cfg.train.iterations)
        if getattr(sched, "total_iters", total) == total:
            return
        sched.total_iters = total
        t = min(self.iteration, total)
        factor = (1.0 - t / total) ** self.cfg.train.poly_power
        for group, base in zip(self.optims[name].param_groups, sched.base_lrs, strict=True):
            group["lr"] = base * factor
        sched._last_lr = [g["lr"] for g in self.optims[name].param_groups]

    def extra_state(self) -> dict[str, Any]:
        """Hook: variant state that is not a network/optimizer (e.g. a collapse monitor)."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Hook: restore :meth:`extra_state`."""

    def save(self, kind: str) -> Path:
        path = self.run_dir / f"checkpoint_{kind}.pt"
        save_checkpoint(path, self.state_dict())
        return path

    def init_weights(self, path: str | Path) -> None:
        """Start S from the S weights of another run's checkpoint (``train.init_from``)."""
        state = load_checkpoint(path, map_location=self.device)
        weights = state.get("nets", {}).get("S")
        if weights is None:
            raise InputError(path, "checkpoint holds no segmenter weights (nets.S)")
        try:
            self.model.load_state_dict(weights)
        except RuntimeError as exc:
            first = str(exc).splitlines()[1].strip() if len(str(exc).splitlines()) > 1 else str(exc)
            raise InputError(path, f"S weights do not fit this run's network ({first})") from None

    def resume(self, path: str | Path | None = None) -> bool:
        """Load ``checkpoint_last.pt`` if present; returns whether a run was resumed."""
        path = Path(path) if path else self.run_dir / "checkpoint_last.pt"
        if not path.exists():  # killed before its first checkpoint: start again, log included
            self.log.truncate(0)
            return False
        self.load_state_dict(load_checkpoint(path, map_location=self.device))
        return True


class _Progress:
    """A rich progress bar with the latest losses and the ETA (plain lines when not a terminal)."""

    def __init__(self, total: int, start: int, enabled: bool = True) -> None:
        self.total = total
        self.enabled = enabled
        self.tty = sys.stderr.isatty()
        self.t0 = time.perf_counter()
        self.start = start
        self._bar = None
        if enabled and self.tty:
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            self._bar = Progress(
                TextColumn("train"),
                BarColumn(),
                TextColumn("{task.completed}/{task.total}"),
                TimeElapsedColumn(),
                TextColumn("eta"),
                TimeRemainingColumn(),
                TextColumn("{task.fields[info]}"),
                transient=False,
            )
            self._task = self._bar.add_task("train", total=total, completed=start, info="")
            self._bar.start()

    def update(self, iteration: int, logs: dict[str, Any]) -> None:
        if not self.enabled:
            return
        info = " ".join(f"{k}={v:.4g}" for k, v in logs.items() if k.startswith("loss") and v is not None)
        if self._bar is not None:
            self._bar.update(self._task, completed=iteration, info=info)
            return
        every = max(1, self.total // 20)
        if iteration % every == 0 or iteration == self.total:
            done = iteration - self.start
            rate = (time.perf_counter() - self.t0) / max(done, 1)
            eta = rate * (self.total - iteration)
            print(f"train {iteration}/{self.total} {info} eta {eta:.0f}s", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
