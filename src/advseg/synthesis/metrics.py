"""Measures of synthesized CT volumes (the report's Table I, organ presence, and the copy check).

All functions are pure numpy on ``(Z, Y, X)`` arrays (or stacks ``(N, Z, Y, X)``), so they can be
tested with known answers.

* **HU error** of organ ``c`` in synthesized volume ``i`` (the pelvic CT study's Table I)::

      e_ic = | mean_HU(synth_i, S(synth_i) == c) - mean_j mean_HU(real_j, label_j == c) |

  i.e. the absolute difference between the organ's mean HU in the sample (inside the organ as a
  trained segmenter S finds it) and the mean over the real labeled volumes of that organ's mean HU
  (ground-truth labels). The report gives mean +- std of ``e_ic`` over the samples ``i`` that
  contain the organ.
* **Organ found**: the largest 26-connected component of S's label ``c`` (``cc3d``) holds at least
  ``min_fraction`` of the median volume (mL) of organ ``c`` in the real labeled volumes.
* **Nearest neighbour** (copy check): the distance ``1 - NCC(a, b)`` (normalised cross-correlation
  over all voxels, 0 for identical volumes up to a linear change of intensity, 1 for uncorrelated
  ones) from every sample to every training volume and to its left-right mirror image (the GAN
  trains on flipped volumes too); a sample is compared with the typical distance between a
  training volume and its nearest *other* training volume.
"""

from __future__ import annotations

from collections.abc import Sequence

import cc3d
import numpy as np


def organ_means(hu: np.ndarray, labels: np.ndarray, organs: Sequence[int]) -> dict[int, float]:
    """Mean HU inside each organ present in ``labels`` (absent organs are left out)."""
    return {c: float(hu[labels == c].mean()) for c in organs if np.any(labels == c)}


def hu_errors(sample_means: list[dict[int, float]], reference: dict[int, float]) -> dict[int, list[float]]:
    """``|mean HU of organ c in sample i - reference[c]|`` for every sample holding organ ``c``.

    Args:
        sample_means: one :func:`organ_means` result per sample.
        reference: organ -> mean over the real volumes of the organ's mean HU.
    """
    return {c: [abs(m[c] - ref) for m in sample_means if c in m] for c, ref in reference.items()}


def largest_component_voxels(mask: np.ndarray) -> int:
    """Voxels of the largest 26-connected component of a boolean ``(Z, Y, X)`` mask (0 if empty)."""
    if not mask.any():
        return 0
    cc = cc3d.connected_components(np.ascontiguousarray(mask, dtype=np.uint8), connectivity=26)
    return int(np.bincount(cc.ravel())[1:].max())


def organs_found(labels: np.ndarray, min_voxels: dict[int, float]) -> dict[int, bool]:
    """Whether each organ's largest component in ``labels`` holds at least ``min_voxels[c]`` voxels."""
    return {c: largest_component_voxels(labels == c) >= n for c, n in min_voxels.items()}


def _standardised(x: np.ndarray) -> np.ndarray:
    """``(N, ...)`` -> ``(N, V)`` float64 rows of mean 0 and norm 1 (a constant volume gives zeros)."""
    flat = x.reshape(len(x), -1).astype(np.float64)
    flat = flat - flat.mean(axis=1, keepdims=True)
    norm = np.linalg.norm(flat, axis=1, keepdims=True)
    return flat / np.where(norm > 0, norm, 1.0)


def ncc_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``(N, M)`` matrix of ``1 - NCC(a_i, b_j)``; ``a`` is ``(N, Z, Y, X)``, ``b`` ``(M, Z, Y, X)``."""
    if a.shape[1:] != b.shape[1:]:
        raise ValueError(f"volumes of shape {a.shape[1:]} and {b.shape[1:]} cannot be compared")
    return 1.0 - _standardised(a) @ _standardised(b).T


def nearest_training(samples: np.ndarray, training: np.ndarray,
                     mirror: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """For each sample, the smallest ``1 - NCC`` to any training volume (and to its mirror image
    along X when ``mirror``) and the index of that training volume.

    Returns:
        ``(distance (N,), index (N,))``.
    """
    refs = np.concatenate([training, training[..., ::-1]]) if mirror else training
    d = ncc_distances(samples, refs)
    j = d.argmin(axis=1)
    return d[np.arange(len(samples)), j], j % len(training)


def training_nearest_other(training: np.ndarray, mirror: bool = True) -> np.ndarray:
    """For each training volume, the smallest ``1 - NCC`` to any *other* training volume (or its
    mirror image): how far apart two different real volumes typically are. ``(M,)``; needs M >= 2."""
    m = len(training)
    if m < 2:
        raise ValueError("at least two training volumes are needed")
    d = ncc_distances(training, training)
    np.fill_diagonal(d, np.inf)
    if mirror:
        dm = ncc_distances(training, training[..., ::-1])
        np.fill_diagonal(dm, np.inf)  # a volume's own mirror image is not another volume
        d = np.minimum(d, dm)
    return d.min(axis=1)
