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

Under ``torchrun`` (:mod:`advseg.training.distributed`) the same loop runs on every rank: the nets named
by :meth:`Trainer.ddp_nets` are wrapped in DistributedDataParallel and the training forward passes whose
gradients are averaged go through :meth:`Trainer.train_net`; each rank draws its own patches; the
logged losses are the means over the ranks; rank 0 alone validates, writes the log, figures and
checkpoints (holding every rank's sampler and RNG states) and sends what validation decided (best
score, early stopping, an auto threshold) to the others; a NaN on any rank stops all ranks together.
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
from advseg.ops import channel_argmax
from advseg.runtime.checkpoint import (
    CHECKPOINT_FORMAT,
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
    to_plain,
)
from advseg.runtime.device import resolve_device
from advseg.training import distributed
from advseg.training.figures import save_validation_figure
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
        self.rank = distributed.rank()
        self.world_size = distributed.world_size()
        self.is_main = self.rank == 0
        self.run_dir = Path(run_dir)
        if self.is_main:  # the other ranks never touch the disk
            self.run_dir.mkdir(parents=True, exist_ok=True)
        self.data = data
        self.device = distributed.device_for(resolve_device(device if device != "auto" else cfg.train.device))
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = not cfg.train.deterministic
            torch.backends.cudnn.deterministic = cfg.train.deterministic
        self.iteration = 0
        self.best_score = -math.inf
        self.best_iteration = -1
        # training seconds of the calls before this one, up to the checkpoint they resumed from: a run
        # resumed after a crash reports the time its iterations took, not only the last call's share
        self.seconds_before = 0.0
        self._fit_t0: float | None = None
        self.nets: dict[str, torch.nn.Module] = {}
        self.optims: dict[str, torch.optim.Optimizer] = {}
        self.scheds: dict[str, torch.optim.lr_scheduler.LRScheduler] = {}
        self.log = TrainingLog(self.run_dir / "log.jsonl" if self.is_main else None)
        fp16 = self._use_fp16 and self._amp_dtype == torch.float16  # bf16 needs no loss scaling
        self.scaler = torch.amp.GradScaler("cuda", enabled=fp16)
        torch.manual_seed(cfg.train.seed)
        self.build()
        self.build_extra()
        if cfg.train.channels_last:
            for net in self.nets.values():
                to_channels_last(net)
        self.ddp: dict[str, torch.nn.Module] = {}
        self._rank_states: list[dict[str, Any]] | None = None
        self._validating = False
        if self.world_size > 1:
            self.setup_distributed()

    def setup_distributed(self) -> None:
        """Wrap :meth:`ddp_nets` in DistributedDataParallel (optionally with SyncBatchNorm) and seed this
        rank's global RNGs (rank r > 0: ``seed + 1000 r``). Every rank builds the same initial weights
        from ``train.seed``; DDP broadcasts rank 0's anyway."""
        if self.cfg.train.sync_batchnorm:
            if self.device.type != "cuda":
                raise InputError(None, "train.sync_batchnorm needs CUDA (torch.nn.SyncBatchNorm has no CPU "
                                       "implementation); set it false for a CPU run")
            for name in self.ddp_nets():
                converted = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.nets[name])
                if converted is not self.nets[name]:
                    raise ValueError(f"net {name} is itself a batch-norm layer")
        for name in self.ddp_nets():
            if name in self.nets:
                self.ddp[name] = distributed.wrap(self.nets[name], self.device,
                                                  self.find_unused_parameters(name))
        distributed.seed_rank_rngs(self.cfg.train.seed, self.rank)

    def ddp_nets(self) -> tuple[str, ...]:
        """Hook: the nets trained by gradient descent whose gradients are averaged over the ranks."""
        return ("S",)

    def find_unused_parameters(self, name: str) -> bool:
        """Hook: whether net ``name``'s DDP wrapper must look for parameters without a gradient (slower;
        only for losses that leave part of a net unused)."""
        return False

    def train_net(self, name: str) -> torch.nn.Module:
        """Net ``name`` for a training forward pass whose gradients are to be averaged over the ranks (its
        DDP wrapper under torchrun, the net itself otherwise). Forward passes without gradient, or of a
        frozen net, use ``self.nets[name]`` (``self.model``, ``self.D``) directly."""
        return self.ddp.get(name, self.nets[name])

    # ------------------------------------------------------------------ set-up hooks
    @property
    def _use_fp16(self) -> bool:
        """Mixed precision on CUDA (``train.amp``; dtype ``train.amp_dtype``)."""
        return self.device.type == "cuda" and self.cfg.train.amp

    @property
    def _amp_dtype(self) -> torch.dtype:
        return torch.bfloat16 if self.cfg.train.amp_dtype == "bfloat16" else torch.float16

    def autocast(self) -> contextlib.AbstractContextManager:
        """fp16 (with a GradScaler) or bf16 autocast on CUDA, optional bf16 autocast on CPU."""
        if self._use_fp16:
            return torch.autocast("cuda", dtype=self._amp_dtype)
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
            out = self.train_net("S")(batch["image"])
            loss = self.loss_vox(out, batch["label"])
        self.check_finite({"loss_vox": loss})
        self.step_optimizer("S", loss)
        return {"loss_vox": float(loss.detach())}

    def check_finite(self, losses: dict[str, torch.Tensor]) -> None:
        """Raise :class:`TrainingDiverged` if a loss is NaN/Inf; under torchrun on every rank as soon as
        it happens on one (collective: every rank calls it at the same points)."""
        bad = [k for k, v in losses.items() if not torch.isfinite(v.detach()).all()]
        where = ""
        if self.world_size > 1:
            if not distributed.any_rank(bool(bad)):
                return
            per_rank = distributed.all_gather_object(bad)
            bad = sorted({k for b in per_rank for k in b})
            where = f" on rank(s) {', '.join(str(r) for r, b in enumerate(per_rank) if b)}"
        if bad:
            raise TrainingDiverged(
                f"{', '.join(bad)} became NaN/Inf{where} at iteration {self.iteration + 1}; stopped without "
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
        bar = _Progress(total, self.iteration, enabled=progress and self.is_main)
        t0 = self._fit_t0 = time.perf_counter()
        start = self.iteration
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
                    **distributed.mean_scalars(logs),  # means over the ranks (a no-op on one process)
                }
                self.log.append(logs)
                bar.update(self.iteration, logs)
                last = self.iteration == total
                if tc.val_every and (self.iteration % tc.val_every == 0 or last):
                    self.validate_all()
                stop = self.plateaued()
                if stop:
                    self.log.append({"kind": "stop", "iteration": self.iteration,
                                     "best_iteration": self.best_iteration, "reason": "plateau"})
                if last or stop or (tc.checkpoint_every and self.iteration % tc.checkpoint_every == 0):
                    self.save("last")
        finally:
            bar.close()
        for net in self.nets.values():  # every rank ends with rank 0's (checkpointed) nets, buffers too
            distributed.broadcast_buffers(net)
        if self.is_main:
            self.log.plot(self.run_dir / "learning_curves.png")
        this_call = time.perf_counter() - t0
        self.seconds_before, self._fit_t0 = self.seconds_before + this_call, None
        return {
            "best_score": self.best_score,
            "best_iteration": self.best_iteration,
            "iterations": self.iteration,
            "seconds": self.seconds_before,
            "seconds_this_call": this_call,
            "resumed_at": start if start else None,
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

    def validate_all(self) -> None:
        """:meth:`validate` on rank 0 (the only one with the validation cases' results); under torchrun
        rank 0 then sends what it decided (:meth:`validation_state`) to every rank, and an error in
        rank 0's validation stops every rank."""
        if self.world_size == 1:
            self.validate()
            return
        self.gather_rank_states()  # for a best checkpoint written inside validate
        err: BaseException | None = None
        shared: dict[str, Any] | None = None
        if self.is_main:
            try:
                self._validating = True
                self.validate()
                shared = self.validation_state()
            except Exception as exc:  # reported by rank 0, the others stop silently
                err = exc
            finally:
                self._validating = False
        shared = distributed.broadcast_object(shared if err is None else {"error": True})
        if shared.get("error"):
            if err is not None:
                raise err
            raise distributed.PeerFailed()
        self.load_validation_state(shared)

    def validation_state(self) -> dict[str, Any]:
        """Hook: what a validation (on rank 0) changed that every rank must know: the best score and
        iteration (early stopping), e.g. an auto threshold. Plain Python values."""
        return {"best_score": self.best_score, "best_iteration": self.best_iteration}

    def load_validation_state(self, state: dict[str, Any]) -> None:
        """Hook: apply rank 0's :meth:`validation_state` on every rank."""
        self.best_score = float(state["best_score"])
        self.best_iteration = int(state["best_iteration"])

    def validate(self) -> dict[str, float]:
        """Per-class DSC on the validation cases; the best mean foreground DSC is checkpointed."""
        if not self.data.val_images:
            return {}
        per_case = []
        self._val_figure: list[tuple[np.ndarray, torch.Tensor]] = []
        for img, lbl in zip(self.data.val_images, self.data.val_labels, strict=True):
            logits = self.predict_volume(img)
            pred = channel_argmax(logits)[0].cpu().numpy()
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
    def rank_state(self) -> dict[str, Any]:
        """This rank's own part of a checkpoint: global RNG states, sampler states, :meth:`extra_state`."""
        data = {"labeled": self.data.labeled.state_dict()}
        if self.data.unlabeled is not None:
            data["unlabeled"] = self.data.unlabeled.state_dict()
        return {"rng": capture_rng_state(), "data": data, "extra": self.extra_state()}

    def gather_rank_states(self) -> None:
        """Collective under torchrun: every rank's :meth:`rank_state`, kept for :meth:`state_dict`."""
        if self.world_size > 1:
            self._rank_states = distributed.all_gather_object(distributed.to_cpu(self.rank_state()))

    def state_dict(self) -> dict[str, Any]:
        """The checkpoint. Under torchrun also ``world_size`` and ``ranks``: every rank's
        :meth:`rank_state` (gathered by :meth:`gather_rank_states`; the top-level ``rng``/``data``/``extra``
        are rank 0's, so a one-process resume or tool reads the checkpoint as before)."""
        mine = self.rank_state()
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
            "train_seconds": self.train_seconds(),
            **mine,
        }
        if self.world_size > 1:
            if self._rank_states is None or len(self._rank_states) != self.world_size:
                raise RuntimeError("state_dict under torchrun needs gather_rank_states() first (collective)")
            state["world_size"] = self.world_size
            state["ranks"] = [distributed.to_cpu(mine), *self._rank_states[1:]]
        return state

    def _own_rank_state(self, state: dict[str, Any]) -> dict[str, Any] | None:
        """This rank's part of a checkpoint; None for a rank the saved run did not have."""
        ranks = state.get("ranks")
        if ranks:
            return ranks[self.rank] if self.rank < len(ranks) else None
        if self.rank == 0:
            return {"rng": state["rng"], "data": state["data"], "extra": state.get("extra", {})}
        return None

    def train_seconds(self) -> float:
        """Seconds spent in :meth:`fit` over all calls so far (the calls before a resume counted up to the
        checkpoint it resumed from)."""
        now = 0.0 if self._fit_t0 is None else time.perf_counter() - self._fit_t0
        return self.seconds_before + now

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.iteration = int(state["iteration"])
        self.seconds_before = float(state.get("train_seconds", 0.0))  # absent in checkpoints before 2026-12
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
        mine = self._own_rank_state(state)
        if mine is None:
            # More ranks than the saved run: a fresh stream of this rank's own, not the run's start again.
            # Rank 0's extra state keeps the decisions every rank shares (unlabeled-batch coin) in step.
            for src in (self.data.labeled, self.data.unlabeled):
                if src is not None and hasattr(src.sampler, "reseed"):
                    src.sampler.reseed([src.sampler.base_seed, self.rank, self.iteration])
            self.load_extra_state(state.get("extra", {}))
        else:
            restore_rng_state(mine["rng"])
            self.data.labeled.load_state_dict(mine["data"]["labeled"])
            if self.data.unlabeled is not None and "unlabeled" in mine["data"]:
                self.data.unlabeled.load_state_dict(mine["data"]["unlabeled"])
            self.load_extra_state(mine.get("extra", {}))
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
        """Write ``checkpoint_<kind>.pt`` (rank 0 only). Under torchrun a collective outside validation
        (every rank's state is gathered first); inside :meth:`validate_all` the states gathered before it
        are used."""
        path = self.run_dir / f"checkpoint_{kind}.pt"
        if self.world_size > 1 and not self._validating:
            self.gather_rank_states()
        if self.is_main:
            save_checkpoint(path, self.state_dict())
        return path

    def _load_on_main(self, path: Path, missing_ok: bool = False) -> dict[str, Any] | None:
        """A checkpoint read by rank 0 alone and sent to every rank (collective under torchrun; one read,
        no shared file system needed). ``missing_ok``: None for a missing file instead of an error."""
        if self.world_size == 1:
            if missing_ok and not path.exists():
                return None
            return load_checkpoint(path, map_location=self.device)
        state, err = None, None
        if self.is_main:
            try:
                if not (missing_ok and not path.exists()):
                    state = load_checkpoint(path, map_location="cpu")
            except Exception as exc:
                err = exc
        distributed.agree(err)
        return distributed.broadcast_object(state)

    def init_weights(self, path: str | Path) -> None:
        """Start S from the S weights of another run's checkpoint (``train.init_from``)."""
        state = self._load_on_main(Path(path))
        weights = (state or {}).get("nets", {}).get("S")
        if weights is None:
            raise InputError(path, "checkpoint holds no segmenter weights (nets.S)")
        try:
            self.model.load_state_dict(weights)
        except RuntimeError as exc:
            first = str(exc).splitlines()[1].strip() if len(str(exc).splitlines()) > 1 else str(exc)
            raise InputError(path, f"S weights do not fit this run's network ({first})") from None

    def resume(self, path: str | Path | None = None) -> bool:
        """Load ``checkpoint_last.pt`` if present; returns whether a run was resumed. Under torchrun
        rank 0 reads it and every rank takes its own sampler and RNG states from it (a run resumed with
        another number of ranks continues, but not bit-for-bit)."""
        path = Path(path) if path else self.run_dir / "checkpoint_last.pt"
        state = self._load_on_main(path, missing_ok=True)
        if state is None:  # killed before its first checkpoint: start again, log included
            self.log.truncate(0)
            return False
        saved = int(state.get("world_size", 1))
        if saved != self.world_size and self.is_main:
            print(f"note: resuming a {saved}-process run with {self.world_size} process(es): it continues "
                  "but is not bit-identical to an uninterrupted run", file=sys.stderr)
        self.load_state_dict(state)
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
