"""Tan et al. 2022: 2D semi-supervised adversarial segmentation on axial slices of the 3D volumes.

S is a 2D U-Net (``network.spatial_dims: 2``); the sampler serves axial slices ``(C, Y, X)`` of the
training volumes (``data.patch_size``'s last two entries), and validation / prediction run S slice by
slice over the whole volume (:func:`advseg.inference.sliding.predict_2d`), giving a 3D label map.
D is DCGAN-style (:class:`~advseg.networks.discriminators.DCGANDiscriminator`: six 4x4 stride-2 convs,
LeakyReLU, no batch norm or pooling, a 1-channel map up-sampled to the slice) on S's probability maps
(``d_input: label``, ``onehot_fake: false``). Two phases::

    supervised  (iteration < pretrain_iterations)  L_S = L_vox(S(x), y)
    semi        afterwards                         L_S = L_vox + lambda_adv L_adv(x)
                                                       [+ lambda_adv_u L_adv(x_u) + lambda_semi L_semi(x_u)]
    L_D = BCE(D(y), 1) + BCE(D(S(x).detach()), 0)  in both phases

with L_adv and L_semi as in the pelvic study (:mod:`advseg.training.variants.adversarial`). Decision: D
is trained during the supervised phase as well (S gets no adversarial term then), so that its
confidence map is meaningful when it starts to select the unlabeled voxels for L_semi.

D's depth: the paper's six convolutions need five hidden widths, while the size presets list four (the
FC D-net's stages). :func:`advseg.networks.confidence.build_discriminator` pads ``d_channels`` to five
by repeating the last width, so ``semi_adv_2d+tiny`` / ``+cpu`` keep the paper's six convolutions at
their own widths.
"""

from __future__ import annotations

import torch

from advseg.training.variants.adversarial import AdversarialTrainer, main_logits


class Tan2DTrainer(AdversarialTrainer):
    """``semi_adv_2d`` (``adversarial.mode: semi_adv_2d``)."""

    def segmenter_losses(
        self, batch: dict[str, torch.Tensor], unl: dict[str, torch.Tensor] | None
    ) -> tuple[dict[str, torch.Tensor], dict[str, float], torch.Tensor]:
        """L_vox alone during the supervised phase; the pelvic study's terms afterwards."""
        if not self.in_pretraining():
            return super().segmenter_losses(batch, unl)
        out = self.train_net("S")(batch["image"])
        self._weights = {"loss_vox": 1.0}
        fake = self.fake_labels(main_logits(out)).detach()
        return {"loss_vox": self.loss_vox(out, batch["label"])}, {}, fake
