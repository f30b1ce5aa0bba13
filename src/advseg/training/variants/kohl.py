"""Kohl et al. 2017 (adversarial networks for prostate cancer detection): purely adversarial and hybrid.

The discriminator is image-level (:class:`~advseg.networks.discriminators.ImageLevelDiscriminator`: conv
encoder, global average pooling, dense layer), fed the concatenation of the image channels and a label
map: ``(x, y)`` with one-hot truth is real, ``(x, S(x))`` fake. Per iteration (``mode``)::

    pure    L_S = -log D(x, S(x))                     = BCE(D(x, S(x)), 1)
    hybrid  L_S = L_mce(S(x), y) / 2 - log D(x, S(x))
    L_D = BCE(D(x, y), 1) + BCE(D(x, S(x).detach()), 0),   k = d_steps D updates per S update (k = 3)

``-log D`` is weighted by ``lambda_adv`` (1 in the presets, as in the paper); ``L_mce`` is the run's
``loss`` (``ce`` in the presets). The purely adversarial S never sees a voxel-wise loss: the labeled pairs
reach it only through D, which learns from real pairs ``(x, y)`` what a correct segmentation of ``x``
looks like; so "pure" is still supervised, by the labels D is trained on. Its ``L_mce`` is logged as
``loss_vox`` for monitoring (no gradient).

Decisions:

* Each of the k D steps uses a FRESH labeled batch (Goodfellow et al.'s algorithm 1, which Kohl et al.
  follow: k minibatches per D update phase): the first step uses the iteration's batch and S's output on
  it, the others draw a new batch and take S's output on it without gradient. The cost is one batch
  read and one S forward per extra step, small next to S's backward pass. The labeled sampler thus
  serves ``k * batch_size`` samples per iteration (checkpointed: resume stays exact).
* The order is S step then k D steps (the base loop's), which alternates the same way over a run.
* D sees S's soft probabilities (``onehot_fake: false`` in the presets, Kohl et al.'s setting);
  ``onehot_fake: true`` gives the straight-through one-hot of the pelvic study.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from advseg.losses.adversarial import pure_adversarial_loss
from advseg.training.variants.adversarial import AdversarialTrainer, main_logits


class KohlTrainer(AdversarialTrainer):
    """``pure_adv`` (``adversarial.mode: pure``) and ``hybrid_adv`` (``mode: hybrid``)."""

    #: weight of L_mce in the hybrid loss (Kohl et al.: L_mce / 2 + L_S)
    hybrid_mce_weight = 0.5

    @property
    def hybrid(self) -> bool:
        return self.cfg.adversarial.mode == "hybrid"

    def segmenter_losses(
        self, batch: dict[str, torch.Tensor], unl: dict[str, torch.Tensor] | None
    ) -> tuple[dict[str, torch.Tensor], dict[str, float], torch.Tensor]:
        """``-log D(x, S(x))`` on the labeled batch (plus ``L_mce / 2`` when hybrid). ``unl`` is unused:
        Kohl et al. is fully supervised (``adversarial.semi: false``)."""
        out = self.train_net("S")(batch["image"])
        logits = main_logits(out)
        fake = self.fake_labels(logits)
        terms = {"loss_adv": pure_adversarial_loss(self.d_forward(batch["image"], fake))}
        weights = {"loss_adv": self.cfg.adversarial.lambda_adv}
        logs: dict[str, float] = {}
        if self.hybrid:
            terms["loss_vox"] = self.loss_vox(out, batch["label"])
            weights["loss_vox"] = self.hybrid_mce_weight
        else:
            with torch.no_grad():
                logs["loss_vox"] = float(self.loss_vox(out, batch["label"]))
        self._weights = weights
        return terms, logs, fake.detach()

    def discriminator_batches(
        self, batch: dict[str, torch.Tensor], fake: torch.Tensor
    ) -> Iterator[tuple[dict[str, torch.Tensor], torch.Tensor]]:
        """The iteration's batch for the first D step, a fresh labeled batch for each further one."""
        yield batch, fake
        for _ in range(max(1, self.cfg.adversarial.d_steps) - 1):
            fresh = self.next_labeled()
            with torch.no_grad(), self.autocast():
                fresh_fake = self.fake_labels(main_logits(self.model(fresh["image"])))
            yield fresh, fresh_fake
