"""ASDNet (Nie et al. 2018): attention-based semi-supervised segmentation with a confidence network.

Per iteration (``S(x)`` softmax probabilities, ``F`` the confidence network = D, ``sigmoid`` of its logits)::

    L_S = L_gdice_att(S(x), y) + lambda1 * L_adv(x)                                labeled batch
        [ + lambda1 * L_adv(x_u) + lambda2 * L_semi(x_u) ]                         unlabeled batch
    L_gdice_att = 1/B sum_b (1 - dsc_b)^beta GDL_b       (``loss.name: gdice_attention``, beta = 2)
    L_adv(x)    = BCE(F(S(x)), 1)
    L_semi(x_u) = CE(S(x_u), argmax S(x_u)) over voxels with F(S(x_u)) > gamma     (region attention)
    L_F         = BCE(F(y), 1) + BCE(F(S(x).detach()), 0)

with lambda1 = 0.03 (``lambda_adv`` and ``lambda_adv_unlabeled``), lambda2 = 0.3 (``lambda_semi``) and
gamma = ``t_semi``. F is the fully convolutional D-net on the probability map alone (``d_input: label``,
``onehot_fake: false``): a per-voxel confidence map, as in the paper. The schedule (labeled-only
pre-training, then unlabeled batches on a random share of the iterations) is the pelvic study's; only
the semi-supervised loss differs, through the :meth:`semi_loss` hook. The segmenter is the pelvic
study's S (``res_unet_aux``), so a comparison isolates the training scheme.
"""

from __future__ import annotations

import torch

from advseg.losses.semi import region_attention_loss
from advseg.training.variants.adversarial import AdversarialTrainer


class AsdnetTrainer(AdversarialTrainer):
    """``asdnet`` (``adversarial.mode: asdnet``)."""

    def semi_loss(self, logits_u: torch.Tensor, d_u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """ASDNet's region-attention loss with threshold gamma = the threshold in use (``adversarial.t_semi``,
        recalibrated when ``auto``); ``mask_source: softmax`` replaces F by S's max-softmax (the base's)."""
        if self.cfg.adversarial.mask_source == "softmax":
            return super().semi_loss(logits_u, d_u)
        return region_attention_loss(logits_u, d_u, gamma=self.t_semi)
