"""Which trainer class serves which ``adversarial.mode``.

* ``semi_adv`` - :class:`AdversarialTrainer`, the pelvic study (presets ``res_unet_aux_adv``, ``_semi``);
* ``pure`` / ``hybrid`` - :class:`KohlTrainer`, Kohl et al. 2017 (``pure_adv``, ``hybrid_adv``);
* ``asdnet`` - :class:`AsdnetTrainer`, Nie et al. 2018 (``asdnet``);
* ``semi_adv_2d`` - :class:`Tan2DTrainer`, Tan et al. 2022 (``semi_adv_2d``);
* ``fusion`` - :class:`FusionTrainer`, Pan et al. 2022 (``fusion_pair``).

The keys are :data:`advseg.config.ADVERSARIAL_MODES` (what a config may name). D of a config and its
confidence map: :mod:`advseg.networks.confidence`.
"""

from __future__ import annotations

from advseg.training.trainer import Trainer
from advseg.training.variants.adversarial import AdversarialTrainer
from advseg.training.variants.asdnet import AsdnetTrainer
from advseg.training.variants.fusion import FusionTrainer
from advseg.training.variants.kohl import KohlTrainer
from advseg.training.variants.tan2d import Tan2DTrainer

ADVERSARIAL_TRAINERS: dict[str, type[Trainer]] = {
    "semi_adv": AdversarialTrainer,
    "pure": KohlTrainer,
    "hybrid": KohlTrainer,
    "asdnet": AsdnetTrainer,
    "semi_adv_2d": Tan2DTrainer,
    "fusion": FusionTrainer,
}
