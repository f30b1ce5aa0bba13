"""Method variants: each is a :class:`~advseg.training.trainer.Trainer` subclass that overrides hooks.

``trainer_class(cfg)`` picks the class from ``cfg.adversarial`` (supervised when disabled).
"""

from __future__ import annotations

from advseg.config import Config
from advseg.training.trainer import Trainer


def trainer_class(cfg: Config) -> type[Trainer]:
    if not cfg.adversarial.enabled:
        return Trainer
    from advseg.training.variants.registry import ADVERSARIAL_TRAINERS

    mode = cfg.adversarial.mode
    if mode not in ADVERSARIAL_TRAINERS:
        raise ValueError(
            f"unknown adversarial.mode {mode!r} (known: {', '.join(sorted(ADVERSARIAL_TRAINERS))})"
        )
    return ADVERSARIAL_TRAINERS[mode]
