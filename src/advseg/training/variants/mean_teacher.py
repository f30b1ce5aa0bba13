"""Mean Teacher (Tarvainen & Valpola 2017) over the run's S-net: the semi-supervised baseline.

Per iteration, with a labeled batch ``(x, y)`` and an unlabeled batch ``x_u`` (both augmented by the
same spatial augmentation as every method; each network then gets its own input noise ``n, n'``)::

    L_S    = L_vox(S(x + n), y) + w(t) * L_cons
    L_cons = mean (softmax S([x, x_u] + n) - softmax T([x, x_u] + n'))^2        (labeled and unlabeled)
    w(t)   = consistency * exp(-5 (1 - t / rampup)^2)                           (sigmoid ramp-up)
    T      <- alpha T + (1 - alpha) S  after every S step                       (EMA of the weights)

``n`` and ``n'`` are independent ``clip(N(0, noise_std^2), +-noise_clip)`` draws. S and T see the
labeled and unlabeled patches in a pass per batch (default), so that batch norm normalises the
labeled patches with their own statistics (they are foreground-oversampled, the unlabeled are not:
one batch mixes two distributions), or, with ``mean_teacher.joint_forward: true``, in one batch
each (SSL4MIS's form). S (the student) is
what is validated, checkpointed as ``S`` and used by ``advseg predict``, as in SSL4MIS; the teacher is
checkpointed too (``nets.T``), so a resumed run continues exactly.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from advseg.losses.consistency import ema_update, sigmoid_rampup, softmax_mse
from advseg.losses.deep_supervision import main_output
from advseg.training.trainer import Trainer


def _split(out: torch.Tensor | list[torch.Tensor], n: int) -> list[Any]:
    """S's output (every deep-supervision level) cut into its first ``n`` samples and the rest."""
    if isinstance(out, list | tuple):
        return [[o[:n] for o in out], [o[n:] for o in out]]
    return [out[:n], out[n:]]


class MeanTeacherTrainer(Trainer):
    """``mean_teacher`` (``mean_teacher.enabled: true``)."""

    def build_extra(self) -> None:
        self.teacher = copy.deepcopy(self.model)
        self.teacher.requires_grad_(False)  # learns only through the moving average
        self.nets["T"] = self.teacher

    def wants_unlabeled(self) -> bool:
        return True

    @property
    def rampup_length(self) -> int:
        mt = self.cfg.mean_teacher
        if mt.rampup_iterations is not None:
            return mt.rampup_iterations
        return int(0.4 * self.cfg.train.iterations)

    def _noise(self, x: torch.Tensor) -> torch.Tensor:
        mt = self.cfg.mean_teacher
        if mt.noise_std <= 0:
            return x
        return x + (torch.randn_like(x) * mt.noise_std).clamp_(-mt.noise_clip, mt.noise_clip)

    def _forward(self, net: torch.nn.Module, parts: list[torch.Tensor]) -> list[Any]:
        """``net`` on each noisy batch of ``parts``: one pass over their concatenation
        (``joint_forward``) split back per part, or a pass per part."""
        if len(parts) == 1 or not self.cfg.mean_teacher.joint_forward:
            return [net(self._noise(x)) for x in parts]
        return _split(net(self._noise(torch.cat(parts))), parts[0].shape[0])

    def training_step(self) -> dict[str, float]:
        batch = self.next_labeled()
        unl = self.next_unlabeled()
        parts = [batch["image"]] + ([] if unl is None else [unl["image"]])
        self.model.train()
        self.teacher.train()
        weight = self.cfg.mean_teacher.consistency * sigmoid_rampup(self.iteration, self.rampup_length)
        with self.autocast():
            outs = self._forward(self.train_net("S"), parts)
            loss_vox = self.loss_vox(outs[0], batch["label"])
            with torch.no_grad():
                t_logits = torch.cat([main_output(o) for o in self._forward(self.teacher, parts)])
            loss_cons = softmax_mse(torch.cat([main_output(o) for o in outs]), t_logits)
            loss = loss_vox + weight * loss_cons
        self.check_finite({"loss_vox": loss_vox, "loss_cons": loss_cons})
        self.step_optimizer("S", loss)
        alpha = ema_update(self.teacher, self.model, self.cfg.mean_teacher.ema_decay, self.iteration)
        return {"loss_vox": float(loss_vox.detach()), "loss_cons": float(loss_cons.detach()),
                "loss_s": float(loss.detach()), "cons_weight": weight, "ema_alpha": alpha,
                "unlabeled": int(unl is not None)}
