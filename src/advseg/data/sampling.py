"""Random patches (3D) or axial slices (2D) from in-memory preprocessed cases, as an endless stream.

Determinism and exact resume: every random choice (case, position, foreground or not, and the seed
of the augmentation of each patch) is drawn from the dataset's own ``numpy.random.Generator``
(PCG64), never from global RNGs. Before augmenting a patch, the sampler re-seeds the transform with
a seed drawn from that generator (``transform.set_random_state(seed)``, which MONAI transforms and
:class:`advseg.transforms.augment.Augmentation` provide), so the augmentation's randomness is a
function of the generator too. Hence :meth:`PatchDataset.state_dict` (the bit generator state and
the count of patches drawn; plain Python ints and dicts, fit for ``torch.load(weights_only=True)``)
is all a checkpoint needs: after :meth:`PatchDataset.load_state_dict` the stream continues exactly
where it was saved.

That holds when the patches are drawn in the trainer's process: :func:`batches`, or a
``torch.utils.data.DataLoader`` with ``num_workers=0`` (the default). With worker processes each
worker gets its own generator seeded from ``(seed, worker id)``: the stream is still reproducible
from the start but the workers' states are not saved, so a resumed run differs.

The pelvic recipe's patch is 16 x 128 x 128 of a 64 x 128 x 128 volume: a slab of 16 consecutive
slices starting at a uniform slice 0..48.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

#: Foreground voxels remembered per case and class (a uniform subsample beyond this bounds memory).
MAX_FOREGROUND_VOXELS = 50_000


class PatchDataset(IterableDataset):
    """Endless stream of random patches.

    Args:
        images: cases, float32 arrays ``(C, Z, Y, X)``.
        labels: label maps ``(Z, Y, X)`` (one per image), or None for unlabeled data: then no sample
            ever has a label and nothing looks at one.
        patch_size: ``(Z, Y, X)`` for 3D patches, or ``(Y, X)`` for 2D axial slices.
        foreground_oversample: probability that a patch is centred on a foreground voxel (a
            foreground class present in the case is chosen uniformly, then a voxel of it; this keeps
            small organs frequent). The rest are uniform positions. Labeled data only.
        transform: applied to each sample dict (see :meth:`sample`); re-seeded per patch when it has
            ``set_random_state``.
        seed: seed of the sampler's generator.
        names: case names (default ``case_<i>``).

    A volume smaller than the patch along an axis is centred in the patch and padded with the
    channel's minimum (air after CT normalisation) and label 0.
    """

    def __init__(
        self,
        images: Sequence[np.ndarray],
        labels: Sequence[np.ndarray] | None = None,
        patch_size: Sequence[int] = (16, 128, 128),
        foreground_oversample: float = 0.0,
        transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        seed: int = 0,
        names: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        if not images:
            raise ValueError("PatchDataset needs at least one image")
        for i, im in enumerate(images):
            if im.ndim != 4:
                raise ValueError(f"image {i} must be (C, Z, Y, X), got shape {im.shape}")
        if labels is not None:
            if len(labels) != len(images):
                raise ValueError(f"{len(labels)} labels for {len(images)} images")
            for i, (im, lab) in enumerate(zip(images, labels, strict=True)):
                if lab is None or tuple(lab.shape) != tuple(im.shape[1:]):
                    raise ValueError(f"label {i} must have shape {im.shape[1:]}, got "
                                     f"{None if lab is None else lab.shape}")
        if len(patch_size) not in (2, 3):
            raise ValueError(f"patch_size must have 3 (Z, Y, X) or 2 (Y, X) entries, got {list(patch_size)}")
        if not 0.0 <= foreground_oversample <= 1.0:
            raise ValueError(f"foreground_oversample must be in [0, 1], got {foreground_oversample}")
        self.images = list(images)
        self.labels = None if labels is None else list(labels)
        self.spatial_dims = len(patch_size)
        self.patch_size = tuple(int(p) for p in patch_size)
        self._patch3 = self.patch_size if self.spatial_dims == 3 else (1, *self.patch_size)
        self.foreground_oversample = float(foreground_oversample) if labels is not None else 0.0
        self.transform = transform
        self.seed = int(seed)
        self.names = list(names) if names is not None else [f"case_{i}" for i in range(len(images))]
        if len(self.names) != len(self.images):
            raise ValueError(f"{len(self.names)} names for {len(self.images)} images")
        self._fill = [im.reshape(im.shape[0], -1).min(axis=1).astype(np.float32) for im in self.images]
        self._foreground = self._index_foreground() if self.foreground_oversample > 0 else None
        self._rng = np.random.default_rng(self.seed)
        self._drawn = 0

    @property
    def has_labels(self) -> bool:
        return self.labels is not None

    def _index_foreground(self) -> list[list[np.ndarray]]:
        """Flat indices of each foreground class present, per case (subsampled if huge)."""
        out = []
        for i, lab in enumerate(self.labels or []):
            flat = lab.ravel()
            per_class = []
            for c in np.unique(flat):
                if c == 0:
                    continue
                idx = np.flatnonzero(flat == c)
                if idx.size > MAX_FOREGROUND_VOXELS:  # own generator: the sampler's stream is untouched
                    idx = np.sort(np.random.default_rng([self.seed, i, int(c)]).choice(
                        idx, MAX_FOREGROUND_VOXELS, replace=False))
                per_class.append(idx)
            out.append(per_class)
        return out

    # ---- state -------------------------------------------------------------------------------

    @property
    def base_seed(self) -> int:
        """The seed given at construction (the single-process stream's)."""
        return self.seed

    def reseed(self, seed: int | list[int]) -> None:
        """Start a fresh stream from ``seed``: an int, or ``SeedSequence`` entropy such as ``[seed, rank]``
        (one independent stream per distributed rank, :func:`advseg.training.distributed.stream_seed`)."""
        self._rng = np.random.default_rng(seed)
        self._drawn = 0

    def state_dict(self) -> dict[str, Any]:
        """The generator state (plain ints/dicts) and the number of patches drawn so far."""
        return {"bit_generator": self._rng.bit_generator.state, "drawn": self._drawn, "seed": self.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._rng.bit_generator.state = state["bit_generator"]
        self._drawn = int(state["drawn"])

    # ---- sampling ----------------------------------------------------------------------------

    def _start(self, n: int, p: int, centre: int | None) -> int:
        if n < p:  # volume smaller than the patch: centred, padded
            return -((p - n) // 2)
        if centre is None:
            return int(self._rng.integers(0, n - p + 1))
        return int(min(max(centre - p // 2, 0), n - p))

    def sample(self) -> dict[str, Any]:
        """One sample: ``{"image": float32 (C, *patch), "label": int64 (*patch) (labeled only),
        "case": name}``. The transform sees ``"image"`` (C, *patch) float32 and ``"label"``
        (1, *patch) in the label array's dtype (uint8 for preprocessed cases) and must keep those
        shapes."""
        rng = self._rng
        i = int(rng.integers(len(self.images)))
        image = self.images[i]
        shape = image.shape[1:]
        centre = None
        if self._foreground is not None and self._foreground[i] and rng.random() < self.foreground_oversample:
            per_class = self._foreground[i]
            idx = per_class[int(rng.integers(len(per_class)))]
            centre = np.unravel_index(int(idx[int(rng.integers(idx.size))]), shape)
        # 2D: the patch is (1, Y, X), so a uniform start is a uniform slice.
        centres = (None, None, None) if centre is None else tuple(int(c) for c in centre)
        starts = [self._start(n, p, c) for n, p, c in zip(shape, self._patch3, centres, strict=True)]
        out: dict[str, Any] = {"image": torch.from_numpy(_crop(image, starts, self._patch3, self._fill[i]))}
        if self.labels is not None:
            lab = _crop(self.labels[i][None], starts, self._patch3, np.zeros(1, self.labels[i].dtype))
            out["label"] = torch.from_numpy(lab)
        if self.spatial_dims == 2:
            out = {k: v[:, 0] for k, v in out.items()}
        if self.transform is not None:
            if hasattr(self.transform, "set_random_state"):
                self.transform.set_random_state(int(rng.integers(2**32)))
            out = self.transform(out)
        result: dict[str, Any] = {"image": _plain(out["image"]).float().contiguous()}
        if self.labels is not None:
            lab_t = _plain(out["label"])
            result["label"] = (lab_t.round() if lab_t.is_floating_point() else lab_t).long()[0].contiguous()
        result["case"] = self.names[i]
        self._drawn += 1
        return result

    def __iter__(self) -> Iterator[dict[str, Any]]:
        worker = get_worker_info()
        if worker is not None:  # one generator per worker process, reproducible but not resumable
            self._rng = np.random.default_rng([self.seed, worker.id])
        while True:
            yield self.sample()


def _plain(x: Any) -> torch.Tensor:
    """A plain tensor (MONAI returns ``MetaTensor``; numpy arrays are wrapped)."""
    if hasattr(x, "as_tensor"):
        return x.as_tensor()
    return torch.as_tensor(x)


def _crop(arr: np.ndarray, starts: Sequence[int], size: Sequence[int], fill: np.ndarray) -> np.ndarray:
    """``arr[:, s:s+p, ...]`` for ``(C, Z, Y, X)`` data, padded with ``fill[c]`` where out of range."""
    src, dst = [slice(None)], [slice(None)]
    for s, p, n in zip(starts, size, arr.shape[1:], strict=True):
        a, b = max(s, 0), min(s + p, n)
        src.append(slice(a, b))
        dst.append(slice(a - s, b - s))
    region = arr[tuple(src)]
    if region.shape[1:] == tuple(size):
        return np.array(region, dtype=arr.dtype)
    out = np.empty((arr.shape[0], *size), dtype=arr.dtype)
    out[...] = np.asarray(fill, dtype=arr.dtype).reshape(-1, *([1] * len(size)))
    out[tuple(dst)] = region
    return out


def collate(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack samples into a batch: ``image`` (B, C, *patch), ``label`` (B, *patch), ``case`` list."""
    batch: dict[str, Any] = {"image": torch.stack([s["image"] for s in samples])}
    if "label" in samples[0]:
        batch["label"] = torch.stack([s["label"] for s in samples])
    batch["case"] = [s["case"] for s in samples]
    return batch


def batches(dataset: PatchDataset, batch_size: int) -> Iterator[dict[str, Any]]:
    """Endless batches from ``dataset`` in this process (exactly resumable through
    ``dataset.state_dict()``; the seed is the dataset's)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    while True:
        yield collate([dataset.sample() for _ in range(batch_size)])
