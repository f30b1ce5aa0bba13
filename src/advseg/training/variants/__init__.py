"""Method variants: each is a :class:`~advseg.training.trainer.Trainer` subclass that overrides hooks.

``trainer_class(cfg)`` picks the class: :class:`MeanTeacherTrainer` with ``mean_teacher.enabled``, else
from ``cfg.adversarial`` (supervised when disabled).
"""

from __future__ import annotations

from advseg.config import Config
from advseg.errors import InputError
from advseg.training.trainer import Trainer
from advseg.training.variants.mean_teacher import MeanTeacherTrainer
from advseg.training.variants.registry import ADVERSARIAL_TRAINERS


def trainer_class(cfg: Config) -> type[Trainer]:
    if cfg.mean_teacher.enabled:
        if cfg.adversarial.enabled:
            raise InputError(None, "config: mean_teacher.enabled and adversarial.enabled are exclusive "
                                   "(Mean Teacher has no discriminator)")

        return MeanTeacherTrainer
    if not cfg.adversarial.enabled:
        return Trainer

    mode = cfg.adversarial.mode
    if mode not in ADVERSARIAL_TRAINERS:
        raise ValueError(
            f"unknown adversarial.mode {mode!r} (known: {', '.join(sorted(ADVERSARIAL_TRAINERS))})"
        )
    return ADVERSARIAL_TRAINERS[mode]
