"""Class-name utilities."""

from __future__ import annotations

import re


def lr_pairs(labels: dict[int, str]) -> list[tuple[int, int]]:
    """Pairs ``(left, right)`` of class indices whose names differ only by left/right.

    A left-right flip (augmentation or test-time augmentation) turns one into the other, so their
    labels/probabilities must be swapped: e.g. ``{4: "left_femur", 5: "right_femur"}`` -> ``[(4, 5)]``.
    """
    def key(name: str, side: str) -> str | None:
        pattern = re.compile(rf"(^|[_\s-]){side}([_\s-]|$)", re.IGNORECASE)
        return pattern.sub(r"\1#\2", name) if pattern.search(name) else None

    lefts = {key(n, "left"): i for i, n in labels.items() if key(n, "left")}
    rights = {key(n, "right"): i for i, n in labels.items() if key(n, "right")}
    return sorted((lefts[k], rights[k]) for k in lefts.keys() & rights.keys())
