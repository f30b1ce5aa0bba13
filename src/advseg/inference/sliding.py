"""Whole-volume inference on a preprocessed image: the study's slab recipe or a sliding window.

All functions take and return torch tensors on the model's device and never copy the volume more
than needed: the slab recipe is a ``view`` + one batched forward pass.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from monai.inferers import sliding_window_inference

LRPairs = Sequence[tuple[int, int]]


def _logits(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = model(x)
    return out[0] if isinstance(out, list | tuple) else out


def _batched(model: torch.nn.Module, batch: torch.Tensor, size: int) -> torch.Tensor:
    """``model`` on ``batch`` in chunks of ``size`` samples (0: all at once), outputs concatenated."""
    if size <= 0 or batch.shape[0] <= size:
        return _logits(model, batch)
    return torch.cat([_logits(model, batch[i : i + size]) for i in range(0, batch.shape[0], size)])


def predict_slabs(model: torch.nn.Module, image: torch.Tensor, slab: int, batch: int = 0) -> torch.Tensor:
    """The pelvic study's recipe: cut ``(1, C, Z, Y, X)`` into ``Z / slab`` consecutive slabs,
    predict them as one batch (or ``batch`` slabs at a time: less memory) and stack them back.
    Returns logits ``(1, K, Z, Y, X)``.

    When ``Z`` is not a multiple of ``slab`` the last slab is aligned to the end of the volume and its
    overlap with the previous slab is averaged.
    """
    _, c, z, y, x = image.shape
    if z % slab == 0:
        slabs = image.view(c, z // slab, slab, y, x).transpose(0, 1)  # (n, C, slab, Y, X), no copy
        out = _batched(model, slabs, batch)  # (n, K, slab, Y, X)
        k = out.shape[1]
        return out.transpose(0, 1).reshape(1, k, z, y, x)
    if z < slab:
        pad = slab - z
        out = _logits(model, F.pad(image, (0, 0, 0, 0, 0, pad), mode="replicate"))
        return out[:, :, :z]
    starts = list(range(0, z - slab + 1, slab))
    if starts[-1] != z - slab:
        starts.append(z - slab)
    out = _batched(model, torch.cat([image[:, :, s : s + slab] for s in starts]), batch)
    acc = torch.zeros((1, out.shape[1], z, y, x), dtype=out.dtype, device=out.device)
    count = torch.zeros((1, 1, z, 1, 1), dtype=out.dtype, device=out.device)
    for i, s in enumerate(starts):
        acc[:, :, s : s + slab] += out[i : i + 1]
        count[:, :, s : s + slab] += 1
    return acc / count


def predict_2d(model: torch.nn.Module, image: torch.Tensor, batch: int = 16) -> torch.Tensor:
    """A 2D network applied slice by slice: ``(1, C, Z, Y, X)`` -> logits ``(1, K, Z, Y, X)``."""
    slices = image[0].transpose(0, 1)  # (Z, C, Y, X) view
    outs = [_logits(model, slices[i : i + batch]) for i in range(0, slices.shape[0], batch)]
    return torch.cat(outs).transpose(0, 1).unsqueeze(0)


def predict_logits(
    model: torch.nn.Module,
    image: torch.Tensor,
    patch_size: Sequence[int],
    mode: str = "slabs",
    overlap: float = 0.5,
    sw_batch_size: int = 2,
    spatial_dims: int = 3,
    slab_batch: int = 0,
) -> torch.Tensor:
    """Logits ``(1, K, Z, Y, X)`` for a preprocessed image ``(1, C, Z, Y, X)``.

    ``mode="slabs"`` uses :func:`predict_slabs` (whole slices, ``patch_size[0]`` of them per slab)
    when the patch covers whole slices, or when the network is fully convolutional with a known
    ``size_divisor`` that divides the slice size (e.g. an S-net trained on 16 x 64 x 128 patches of
    128 x 128 slices predicts whole 16 x 128 x 128 slabs: no seams, and fewer voxels computed than
    an overlapping window); otherwise it falls back to the sliding window. ``mode="sliding_window"``
    is MONAI's Gaussian-weighted sliding window with ``overlap``.
    """
    if spatial_dims == 2:
        return predict_2d(model, image)
    pz, py, px = patch_size
    divisor = getattr(model, "size_divisor", None)
    whole_slices = image.shape[-2:] == (py, px) or (
        divisor is not None and all(s % divisor == 0 for s in image.shape[-2:])
    )
    if mode == "slabs" and whole_slices:
        return predict_slabs(model, image, pz, slab_batch)
    if mode not in ("slabs", "sliding_window"):
        raise ValueError(f"unknown inference mode {mode!r}")
    return sliding_window_inference(
        image, roi_size=tuple(patch_size), sw_batch_size=sw_batch_size,
        predictor=lambda t: _logits(model, t), overlap=overlap, mode="gaussian",
    )


def flip_tta(
    predict: Callable[[torch.Tensor], torch.Tensor], image: torch.Tensor, lr_pairs: LRPairs = ()
) -> torch.Tensor:
    """Average softmax probabilities over the identity and a left-right (X) flip.

    Flipping a patient left-right turns a left organ into a right one, so the channels of each
    ``(left, right)`` class pair are swapped back after un-flipping. Returns probabilities.
    """
    probs = torch.softmax(predict(image), dim=1)
    flipped = torch.softmax(predict(torch.flip(image, dims=(-1,))), dim=1).flip(dims=(-1,))
    if lr_pairs:
        perm = list(range(flipped.shape[1]))
        for a, b in lr_pairs:
            perm[a], perm[b] = b, a
        flipped = flipped[:, perm]
    return (probs + flipped) / 2
