"""The pelvic study's method: S trained with a fully convolutional discriminator D, then semi-supervised.

Per iteration (paper notation; ``x`` image, ``y`` one-hot truth, ``S(x)`` softmax of S's logits)::

    L_S = L_vox(S(x), y) + lambda_adv * L_adv(x)                       labeled batch
        [ + lambda_adv_u * L_adv(x_u) + lambda_semi * L_semi(x_u) ]    unlabeled batch, after pre-training
    L_adv(x)  = BCE(D(x * S(x)), 1)
    L_semi(x) = CE(S(x), argmax S(x)) over voxels with sigmoid(D(x * S(x))) > T_semi
    L_D       = BCE(D(x * y), 1) + BCE(D(x * S(x).detach()), 0)

with lambda_adv = 0.01 (labeled), 0.001 (unlabeled), lambda_semi = 0.1, T_semi = 0.2. During the
first ``pretrain_iterations`` S and D see labeled data only; afterwards an unlabeled batch is drawn
on a random ``unlabeled_prob`` share of the iterations. By default D sees ``x * onehot(argmax S(x))``
with a straight-through gradient (the study found D trivially separates soft predictions from
one-hot truth); ``onehot_fake: false`` feeds the soft probabilities instead.

Which voxels L_semi trusts (``adversarial.mask_source``): ``d`` (the study) takes D's confidence
``sigmoid(D(x * S(x)))``, ``softmax`` S's own max-softmax probability (plain confidence-thresholded
self-training, the baseline D has to beat), ``product`` the product of the two. The threshold ``t_semi``
is a fixed number or ``auto``: at every validation it is recalibrated as the lowest threshold at which
the passing voxels of the validation cases (fed as if unlabeled, over the region of interest of
:mod:`advseg.training.diagnostics`) reach ``t_semi_target_accuracy``; until the first validation it is
``t_semi_target_accuracy`` itself (the threshold a calibrated confidence would need). The threshold in
use is logged (``t_semi`` in the validation records and in every training record with an unlabeled
batch) and saved in the checkpoint, so a resumed run continues with it. With ``adversarial.diagnostics``
(default on) every validation logs D diagnostics (:mod:`advseg.training.diagnostics`): D's AUCs next to
the max-softmax AUC, pass fractions and accuracies at the threshold, reliability counts and the
confidence histogram on the unlabeled pool.

Hooks for the other papers' variants (:mod:`advseg.training.variants`), all methods of
:class:`AdversarialTrainer`: ``discriminator_for`` (which D), ``fake_labels`` (what D sees of S(x)),
``d_forward``, ``segmenter_losses`` (S's terms), ``semi_loss`` (L_semi), ``discriminator_batches`` (the
data of the ``d_steps`` D updates of an iteration: by default the iteration's labeled batch and S's
output on it, reused for every step) and ``discriminator_step`` (one D update).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from advseg.config import Config
from advseg.losses.adversarial import (
    CollapseMonitor,
    adversarial_loss_s,
    discriminator_loss,
    semi_supervised_loss,
)
from advseg.losses.semi import masked_self_training_loss, softmax_confidence
from advseg.networks.discriminators import (
    build_discriminator_input,
    make_discriminator,
    onehot,
    onehot_straight_through,
    resolve_d_input,
    set_requires_grad,
)
from advseg.ops import channel_argmax
from advseg.training.checkpoint import to_plain
from advseg.training.diagnostics import POOL_CASES, ConfidenceDiagnostics, pool_summary
from advseg.training.trainer import Trainer

logger = logging.getLogger("advseg")


def main_logits(out: torch.Tensor | list[torch.Tensor] | tuple[torch.Tensor, ...]) -> torch.Tensor:
    """The fused output of S (first element in deep-supervision training mode)."""
    return out[0] if isinstance(out, list | tuple) else out


class AdversarialTrainer(Trainer):
    """``res_unet_aux_adv`` (``adversarial.semi: false``) and ``res_unet_aux_adv_semi`` (``semi: true``)."""

    @classmethod
    def discriminator_for(cls, cfg: Config, num_classes: int) -> nn.Module:
        """Hook: this method's D for a run's config (also rebuilds D at inference, see
        :func:`advseg.training.variants.registry.build_discriminator`)."""
        net = cfg.network
        return make_discriminator(cfg.adversarial, net.spatial_dims, net.in_channels, num_classes)

    def ddp_nets(self) -> tuple[str, ...]:
        """S and D are averaged over the ranks under torchrun (each with its own DDP wrapper)."""
        return ("S", "D")

    def build_extra(self) -> None:
        a = self.cfg.adversarial
        self.d_input_kind = resolve_d_input(a)
        self.D = type(self).discriminator_for(self.cfg, self.data.num_classes).to(self.device)
        self.nets["D"] = self.D
        # Real and fake go through D in one pass unless a batch norm would mix their statistics.
        self.d_batches_independent = not any(isinstance(m, nn.modules.batchnorm._BatchNorm)
                                             for m in self.D.modules())
        self.add_optimizer("D", self.D.parameters(), a.d_lr)
        self.monitor = CollapseMonitor(a.collapse_window, a.collapse_eps_loss, a.collapse_eps_gap)
        # A private generator decides which iterations take an unlabeled batch, so that decision is
        # independent of how many random numbers the networks or augmentations consumed (exact resume).
        self.coin = np.random.default_rng(self.cfg.train.seed + 7919)
        self.t_semi = self.initial_t_semi(a)
        self.diagnostics = ConfidenceDiagnostics(self.data.labels)

    @staticmethod
    def initial_t_semi(a: Any) -> float:
        """The threshold before any calibration: ``t_semi`` itself, or for ``auto`` the target accuracy
        (what a calibrated confidence would need to reach it)."""
        return float(a.t_semi_target_accuracy) if a.t_semi == "auto" else float(a.t_semi)

    # -- hooks ---------------------------------------------------------------------------------------
    def in_pretraining(self) -> bool:
        return self.iteration < self.cfg.adversarial.pretrain_iterations

    def wants_unlabeled(self) -> bool:
        a = self.cfg.adversarial
        if not a.semi or self.data.unlabeled is None or self.in_pretraining():
            return False
        return bool(self.coin.random() < a.unlabeled_prob)

    def fake_labels(self, logits: torch.Tensor) -> torch.Tensor:
        """What D sees of S's output: one-hot with straight-through gradient, or soft probabilities."""
        probs = torch.softmax(logits.float(), dim=1)
        return onehot_straight_through(probs) if self.cfg.adversarial.onehot_fake else probs

    def d_forward(self, image: torch.Tensor, labels: torch.Tensor, noise_std: float = 0.0,
                  train_d: bool = False) -> torch.Tensor:
        """D's logits for ``image`` and a label map. The image is shifted by ``d_image_offset`` first:
        with CT scaled to [-1, 1], water-like tissue (bladder) is ~0 and ``x * y`` would hide it from D.
        ``noise_std``: instance noise, Gaussian noise added to D's input (D's own updates only).
        ``train_d``: D's own update (through its DDP wrapper under torchrun); otherwise D itself, frozen
        in S's step, so the wrapper never waits for gradients D does not get there."""
        shifted = image + self.cfg.adversarial.d_image_offset
        d_in = build_discriminator_input(self.d_input_kind, shifted, labels)
        if noise_std > 0:
            d_in = d_in + noise_std * torch.randn_like(d_in)
        return (self.train_net("D") if train_d else self.D)(d_in)

    def segmenter_losses(
        self, batch: dict[str, torch.Tensor], unl: dict[str, torch.Tensor] | None
    ) -> tuple[dict[str, torch.Tensor], dict[str, float], torch.Tensor]:
        """Hook: S's loss terms. Returns (weighted terms, extra logs, fake label map of the labeled batch)."""
        a = self.cfg.adversarial
        n = batch["image"].shape[0]
        s_net = self.train_net("S")  # DDP wrapper under torchrun: these passes' gradients are averaged
        if unl is not None and a.joint_forward:
            # one S and one D pass over labeled + unlabeled patches (cheaper; BN sees both)
            images = torch.cat([batch["image"], unl["image"]])
            out_all = s_net(images)
            out = [o[:n] for o in out_all] if isinstance(out_all, list | tuple) else out_all[:n]
            fake_all = self.fake_labels(main_logits(out_all))
            d_all = self.d_forward(images, fake_all)
            fake, d_l = fake_all[:n], d_all[:n]
            logits_u, d_u = main_logits(out_all)[n:], d_all[n:]
        else:
            out = s_net(batch["image"])
            fake = self.fake_labels(main_logits(out))
            d_l = self.d_forward(batch["image"], fake)
            if unl is not None:
                logits_u = main_logits(s_net(unl["image"]))
                d_u = self.d_forward(unl["image"], self.fake_labels(logits_u)) if self._needs_d_u() else None
        terms = {"loss_vox": self.loss_vox(out, batch["label"])}
        terms["loss_adv"] = adversarial_loss_s(d_l)
        weights = {"loss_vox": 1.0, "loss_adv": a.lambda_adv}
        logs: dict[str, float] = {}
        if unl is not None:
            if d_u is not None:
                terms["loss_adv_u"] = adversarial_loss_s(d_u)
                weights["loss_adv_u"] = a.lambda_adv_unlabeled
            loss_semi, frac = self.semi_loss(logits_u.float(), None if d_u is None else d_u.detach())
            terms["loss_semi"] = loss_semi
            weights["loss_semi"] = a.lambda_semi
            logs["semi_fraction"] = float(frac)
            logs["t_semi"] = self.t_semi
        self._weights = weights
        return terms, logs, fake.detach()

    def _needs_d_u(self) -> bool:
        """Whether S's step needs D on the unlabeled batch: for L_adv_u (``lambda_adv_unlabeled > 0``)
        or for a D-based mask. With ``lambda_adv_unlabeled: 0`` and the max-softmax mask of this class's
        own L_semi, D is skipped there (one D pass forward and backward less per semi step)."""
        a = self.cfg.adversarial
        own_semi = type(self).semi_loss is AdversarialTrainer.semi_loss
        return a.lambda_adv_unlabeled > 0 or a.mask_source != "softmax" or not own_semi

    def semi_loss(
        self, logits_u: torch.Tensor, d_u: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Hook: L_semi on an unlabeled batch from S's logits and D's (detached) logits on S's output
        (None when :meth:`_needs_d_u` is false, i.e. for the max-softmax mask); returns ``(loss,
        fraction of voxels passing the confidence threshold)``. The voxels are those whose confidence
        (``mask_source``: D's, S's max-softmax, or their product) exceeds the threshold in use,
        :attr:`t_semi`."""
        source = self.cfg.adversarial.mask_source
        if source == "softmax":
            return masked_self_training_loss(logits_u, softmax_confidence(logits_u), self.t_semi)
        if source == "product":
            conf = softmax_confidence(logits_u) * torch.sigmoid(d_u.detach().float())
            return masked_self_training_loss(logits_u, conf, self.t_semi)
        return semi_supervised_loss(logits_u, d_u, self.t_semi)

    def discriminator_batches(
        self, batch: dict[str, torch.Tensor], fake: torch.Tensor
    ) -> Iterator[tuple[dict[str, torch.Tensor], torch.Tensor]]:
        """Hook: ``(labeled batch, S's detached fake label map)`` for each of the ``d_steps`` D updates of
        one iteration. Default: the iteration's own batch and S's output on it, every time."""
        for _ in range(max(1, self.cfg.adversarial.d_steps)):
            yield batch, fake

    def d_warmup_step(self) -> dict[str, float]:
        """One iteration of D's warm-up (``adversarial.d_warmup_iterations``): S frozen in eval mode gives
        its prediction of a labeled batch, only D is updated, no unlabeled batch is drawn."""
        batch = self.next_labeled()
        self.model.eval()
        with torch.no_grad(), self.autocast():
            fake = self.fake_labels(main_logits(self.model(batch["image"]))).detach()
        self.D.train()
        d_logs: dict[str, float] = {}
        for d_batch, d_fake in self.discriminator_batches(batch, fake):
            d_logs = self.discriminator_step(d_batch, d_fake)
        return {**d_logs, "d_warmup": 1, "unlabeled": 0}

    def training_step(self) -> dict[str, float]:
        if self.iteration < self.cfg.adversarial.d_warmup_iterations:
            return self.d_warmup_step()
        batch = self.next_labeled()
        unl = self.next_unlabeled()
        self.model.train()
        self.D.train()
        # S step: D frozen so L_adv leaves no gradient in D.
        set_requires_grad(self.D, False)
        with self.autocast():
            terms, logs, fake = self.segmenter_losses(batch, unl)
            loss_s = sum(self._weights[k] * v for k, v in terms.items())
        self.check_finite({**terms, "loss_s": loss_s})
        self.step_optimizer("S", loss_s)
        set_requires_grad(self.D, True)
        # D step: real = x * onehot(y), fake = x * S(x) detached.
        d_logs = {}
        for d_batch, d_fake in self.discriminator_batches(batch, fake):
            d_logs = self.discriminator_step(d_batch, d_fake)
        logs.update({k: float(v.detach()) for k, v in terms.items()})
        logs["loss_s"] = float(loss_s.detach())
        logs["unlabeled"] = int(unl is not None)
        logs.update(d_logs)
        warning = None
        if self.cfg.adversarial.d_target != "errors":
            warning = self.monitor.update(d_logs["loss_d"], d_logs["d_real"], d_logs["d_fake"])
        elif "d_fake_wrong" in d_logs:  # a batch where S made no error says nothing about D
            warning = self.monitor.update(d_logs["loss_d"], d_logs["d_real_wrong"], d_logs["d_fake_wrong"])
        if warning and self.is_main:
            # One line on stderr (logging's last-resort handler), not a Python warning with source lines.
            logger.warning("warning: iteration %d: %s", self.iteration + 1, warning)
        return logs

    def discriminator_step(self, batch: dict[str, torch.Tensor], fake: torch.Tensor) -> dict[str, float]:
        """One update of D on a labeled batch; returns L_D and D's mean confidence on real and fake."""
        a = self.cfg.adversarial
        real = onehot(batch["label"], self.data.num_classes, dtype=fake.dtype)
        real_target = 1.0 - a.d_label_smoothing
        with self.autocast():
            if self.d_batches_independent:
                # one D pass over real and fake: the same result (no norm mixes samples) with half the
                # kernel launches and better-filled batch-2 convolutions on CPU
                n = batch["image"].shape[0]
                both = self.d_forward(torch.cat([batch["image"]] * 2), torch.cat([real, fake]),
                                      a.d_instance_noise, train_d=True)
                d_real, d_fake = both[:n], both[n:]
            else:
                d_real = self.d_forward(batch["image"], real, a.d_instance_noise, train_d=True)
                d_fake = self.d_forward(batch["image"], fake, a.d_instance_noise, train_d=True)
            fake_target: float | torch.Tensor = 0.0
            if a.d_target == "errors":
                # a voxel of S's map is fake only where S's label differs from the truth
                right = (channel_argmax(fake.detach()) == batch["label"]).unsqueeze(1)
                if right.shape != d_fake.shape:
                    raise ValueError("adversarial.d_target: errors needs a per-voxel discriminator (fcn)")
                fake_target = right.to(d_fake.dtype) * real_target
            loss_d = discriminator_loss(d_real, d_fake, real_target, fake_target)
        self.check_finite({"loss_d": loss_d})
        self.step_optimizer("D", loss_d)
        logs = {
            "loss_d": float(loss_d.detach()),
            "d_real": float(torch.sigmoid(d_real.detach().float()).mean()),
            "d_fake": float(torch.sigmoid(d_fake.detach().float()).mean()),
        }
        if a.d_target == "errors":
            # such a D should call S's map real almost everywhere: what tells whether it still works is
            # its confidence on the voxels where S is wrong (the collapse monitor watches these)
            wrong = ~right
            if bool(wrong.any()):
                logs["d_real_wrong"] = float(torch.sigmoid(d_real.detach().float())[wrong].mean())
                logs["d_fake_wrong"] = float(torch.sigmoid(d_fake.detach().float())[wrong].mean())
        return logs

    def confidence_map(self, image: np.ndarray, probs: torch.Tensor) -> np.ndarray | None:
        """sigmoid(D(.)) of S's prediction on a whole preprocessed volume, ``(Z, Y, X)`` in [0, 1], fed to
        D as in training (see :func:`advseg.training.variants.registry.confidence_map`)."""
        from advseg.training.variants.registry import confidence_map, has_confidence_map

        if not has_confidence_map(self.cfg):
            return None
        self.D.eval()
        x = torch.from_numpy(np.ascontiguousarray(image))[None].to(self.device)
        return confidence_map(self.cfg, self.D, x, probs.to(self.device))[0, 0].cpu().numpy()

    # -- diagnostics ---------------------------------------------------------------------------------
    def _confidences(
        self, image: np.ndarray, logits: torch.Tensor
    ) -> tuple[torch.Tensor, np.ndarray, np.ndarray | None]:
        """S's softmax ``(1, K, Z, Y, X)``, its max ``(Z, Y, X)`` and D's confidence on S's output
        ``(Z, Y, X)`` (None without a per-voxel D) for a whole preprocessed volume."""
        probs = torch.softmax(logits.float(), dim=1)
        return probs, probs.amax(dim=1)[0].cpu().numpy(), self.confidence_map(image, probs)

    def validation_case(
        self, image: np.ndarray, label: np.ndarray, pred: np.ndarray, logits: torch.Tensor
    ) -> None:
        """Collect the case for the D diagnostics: fed as if unlabeled (D on ``x * S(x)``, S's
        max-softmax), and D on the real input ``x * y`` for ``d_auc_real_fake``."""
        a = self.cfg.adversarial
        if not (a.diagnostics or a.t_semi == "auto"):  # the auto threshold is calibrated on these cases
            return
        probs, softmax, d_fake = self._confidences(image, logits)
        d_real = None
        if d_fake is not None:
            truth = torch.from_numpy(np.ascontiguousarray(label)).long()[None].to(probs.device)
            d_real = self.confidence_map(image, onehot(truth, probs.shape[1], dtype=probs.dtype))
        self.diagnostics.add_case(label, pred, softmax, d_fake, d_real)

    def validation_summary(self) -> dict[str, Any]:
        """Recalibrate an ``auto`` T_semi on the validation cases, then the D diagnostics at the
        threshold now in use (:mod:`advseg.training.diagnostics`) and on the unlabeled pool."""
        a = self.cfg.adversarial
        if a.t_semi == "auto":
            calibrated = self.diagnostics.calibrate(a.mask_source, a.t_semi_target_accuracy)
            if calibrated is not None:
                self.t_semi = calibrated
        out: dict[str, Any] = {"t_semi": self.t_semi}
        if not a.diagnostics:
            self.diagnostics.reset()
            return out
        out.update(self.diagnostics.summary(self.t_semi, a.t_semi_target_accuracy))
        out.update(self.pool_diagnostics())
        return out

    def pool_diagnostics(self) -> dict[str, Any]:
        """Confidence histograms and pass fractions on the first :data:`POOL_CASES` unlabeled volumes."""
        if self.data.unlabeled is None:
            return {}
        volumes = list(getattr(self.data.unlabeled.sampler, "images", []) or [])[:POOL_CASES]
        preds, softmaxes, d_confs = [], [], []
        for image in volumes:
            logits = self.predict_volume(image)
            _, softmax, d = self._confidences(image, logits)
            preds.append(channel_argmax(logits)[0].cpu().numpy())
            softmaxes.append(softmax)
            d_confs.append(d)
        has_d = bool(d_confs) and all(d is not None for d in d_confs)
        return pool_summary(preds, softmaxes, d_confs if has_d else None, self.t_semi,
                            self.cfg.adversarial.mask_source)

    # -- state ---------------------------------------------------------------------------------------
    def validation_state(self) -> dict[str, Any]:
        """Rank 0's validation also decides the threshold in use (``t_semi: auto``)."""
        return {**super().validation_state(), "t_semi": self.t_semi}

    def load_validation_state(self, state: dict[str, Any]) -> None:
        super().load_validation_state(state)
        self.t_semi = float(state["t_semi"])

    def extra_state(self) -> dict[str, Any]:
        return {"coin": to_plain(self.coin.bit_generator.state),
                "monitor": to_plain(self.monitor.state_dict()),
                "t_semi": self.t_semi}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        if "coin" in state:
            self.coin.bit_generator.state = state["coin"]
        if "monitor" in state:
            self.monitor.load_state_dict(state["monitor"])
        # A calibrated threshold resumes where it was; a fixed one is the config's (older checkpoints
        # hold none: then an auto threshold restarts from its initial value until the next validation).
        if "t_semi" in state and self.cfg.adversarial.t_semi == "auto":
            self.t_semi = float(state["t_semi"])
