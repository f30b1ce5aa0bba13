"""Pan et al. (FLARE 2022, adversarial EfficientSegNet): a fusion discriminator picks pseudo-labels.

D (:class:`~advseg.networks.discriminators.FusionDiscriminator`) takes an image and two segmentations and
returns the logit that the first is better. Per iteration (``P = softmax(S(.))``, ``~`` mask poisoning
with ``mask_poison_std``, ``x_n = x_u + noise_std * N(0, 1)``)::

    L_D = BCE(D(x, y~, P(x)~.detach()), 1)                                    labeled batch
    L_S = L_vox(S(x), y)                                                       labeled batch
        [ + lambda_semi * CE(S(x_u), y^) ]                                     unlabeled batch
    y^  = argmax P(x_u)  if  (D(x_u, P(x_u), P(x_n)) + D(x_n, P(x_u), P(x_n))) / 2 >= 0,
          argmax P(x_n)  otherwise                                             (per sample, no gradient)

Unlabeled batches are drawn only between the supervised-only phases: the first ``pretrain_iterations``
and the last ``supervised_tail`` iterations (``None``: as many as ``pretrain_iterations``, the paper's
"first and last N"); D trains throughout, so it is a useful judge when the pseudo-labels start.

Decisions (following the authors' published code where the paper is silent):

* S gets NO adversarial term: the generator is optimised with the segmentation loss on labeled data and
  with D-selected pseudo-labels on unlabeled data; D's role is to rank segmentations, not to shape S's
  output distribution.
* Both segmentations D compares in its training step are mask-poisoned (the truth one-hot and S's
  probabilities), so the noise itself does not tell D which one is the truth.
* D judges the two unlabeled segmentations against both the original and the noised image and the
  two logits are averaged, as each segmentation was made from one of them.
* The pseudo-label trains S on the original unlabeled image with plain cross-entropy (the authors'
  code instead feeds the image D liked less and scales the loss by D's score; not reproduced).
* S's probabilities are what D sees of S (``onehot_fake: false``); the image is fed unshifted
  (``d_image_offset`` only matters for the product input).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from advseg.losses.adversarial import fusion_discriminator_loss, mask_poisoning
from advseg.losses.semi import fusion_pseudo_label, gaussian_noise_copy
from advseg.networks.discriminators import onehot
from advseg.training.variants.adversarial import AdversarialTrainer, main_logits


class FusionTrainer(AdversarialTrainer):
    """``fusion_pair`` (``adversarial.mode: fusion``)."""

    @property
    def tail_start(self) -> int:
        """First iteration (0-based) of the final supervised-only phase."""
        a = self.cfg.adversarial
        tail = a.pretrain_iterations if a.supervised_tail is None else a.supervised_tail
        return self.cfg.train.iterations - max(0, tail)

    def wants_unlabeled(self) -> bool:
        if self.iteration >= self.tail_start:
            return False
        return super().wants_unlabeled()

    def pseudo_label(
        self, image_u: torch.Tensor, logits_u: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Pan et al.'s pseudo-label of an unlabeled batch ``image_u`` ``(B, C, *spatial)`` given S's logits
        on it ``(B, K, *spatial)``: S segments a Gaussian-noised copy too, and per sample the argmax of
        the segmentation D prefers is returned, ``(B, *spatial)`` int64, with the ``(B,)`` bool mask of
        the samples where the noised copy's segmentation won. No gradient."""
        with torch.no_grad():
            noisy = gaussian_noise_copy(image_u, self.cfg.adversarial.noise_std)
            logits_n = main_logits(self.model(noisy))
            probs_u, probs_n = self.fake_labels(logits_u.detach()), self.fake_labels(logits_n)
            prefer_u = 0.5 * (self.D(image_u, probs_u, probs_n) + self.D(noisy, probs_u, probs_n))
            labels = fusion_pseudo_label(logits_u.detach(), logits_n, prefer_u)
        return labels, prefer_u.reshape(-1) < 0

    def segmenter_losses(
        self, batch: dict[str, torch.Tensor], unl: dict[str, torch.Tensor] | None
    ) -> tuple[dict[str, torch.Tensor], dict[str, float], torch.Tensor]:
        out = self.train_net("S")(batch["image"])
        terms = {"loss_vox": self.loss_vox(out, batch["label"])}
        self._weights = {"loss_vox": 1.0}
        logs: dict[str, float] = {}
        if unl is not None:
            logits_u = main_logits(self.train_net("S")(unl["image"]))
            target, took_noisy = self.pseudo_label(unl["image"], logits_u)
            terms["loss_semi"] = F.cross_entropy(logits_u.float(), target)
            self._weights["loss_semi"] = self.cfg.adversarial.lambda_semi
            logs["pseudo_from_noisy"] = float(took_noisy.float().mean())
        return terms, logs, self.fake_labels(main_logits(out)).detach()

    def discriminator_step(self, batch: dict[str, torch.Tensor], fake: torch.Tensor) -> dict[str, float]:
        """One D update: the mask-poisoned truth must beat S's mask-poisoned (detached) probabilities.

        Logged ``d_real`` is D's mean confidence that the truth is better, ``d_fake`` that S's output is
        (``1 - d_real`` by D's antisymmetry), so the collapse monitor reads them as for the other D's."""
        std = self.cfg.adversarial.mask_poison_std
        truth = mask_poisoning(onehot(batch["label"], self.data.num_classes, dtype=fake.dtype), std)
        with self.autocast():
            logit = self.train_net("D")(batch["image"], truth, mask_poisoning(fake, std))
            loss_d = fusion_discriminator_loss(logit)
        self.check_finite({"loss_d": loss_d})
        self.step_optimizer("D", loss_d)
        p_truth = torch.sigmoid(logit.detach().float())
        return {"loss_d": float(loss_d.detach()), "d_real": float(p_truth.mean()),
                "d_fake": float((1 - p_truth).mean())}

