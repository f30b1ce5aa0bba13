"""Post-processing of label maps."""

from __future__ import annotations

from collections.abc import Iterable

import cc3d
import numpy as np


def keep_largest_component(labels: np.ndarray, classes: Iterable[int] | None = None) -> np.ndarray:
    """Keep only the largest 26-connected component of each class; other voxels become 0.

    ``labels``: ``(Z, Y, X)`` integer label map. Returns a new array of the same dtype.
    """
    out = np.zeros_like(labels)
    for c in classes if classes is not None else np.unique(labels):
        c = int(c)
        if c == 0:
            continue
        mask = labels == c
        if not mask.any():
            continue
        largest = cc3d.largest_k(mask, k=1, connectivity=26)
        out[largest > 0] = c
    return out
