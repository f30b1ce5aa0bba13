"""GAN training data: which images, how they are prepared, and how samples go back to CT.

Preparation (documented inverse, so samples are written as CT in Hounsfield units):

1. read the image (:func:`advseg.io.read_volume`), ``(Z, Y, X)`` in HU;
2. optionally keep the middle ``n_slices`` axial slices and center-crop each slice to
   ``crop_xy`` voxels (the segmentation's pelvic recipe; None keeps the whole volume);
3. clip to the HU window ``[lo, hi]`` and scale linearly to [-1, 1]: ``x = 2 (hu - lo) / (hi - lo) - 1``
   (:func:`advseg.data.preprocess.normalize_ct`, as the segmentation's preprocessing);
4. resize to the GAN's target shape: area averaging on axes that shrink (no aliasing), then
   trilinear interpolation on axes that grow.

Inverse: ``hu = (clip(x, -1, 1) + 1) / 2 (hi - lo) + lo``, rounded to int16, written with an affine
whose voxel size makes the grid cover the mean physical extent (mm) of the prepared training
regions, centred on their mean centre, with the first image's axis directions. A synthesized volume
thus has the field of view of an average training volume. Two grids are kept (``geometry``):

* the GAN's own grid (``shape`` = the last stage, ``affine``);
* the training images' grid (``data_shape`` = their mean prepared shape, ``data_affine``): samples
  are up-sampled to it (trilinear, step 4 reversed) by default, so that a segmentation recipe that
  keeps slices rather than resampling them (the pelvic recipe) sees a synthesized volume as it
  sees a real one: same shape, same voxel size.

Labels are never read.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from advseg.data.dataset import load_dataset
from advseg.data.preprocess import denormalize_ct, normalize_ct
from advseg.errors import InputError
from advseg.io import Volume, read_volume

NIFTI_ENDINGS = (".nii.gz", ".nii")


def _nifti_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.name.lower().endswith(NIFTI_ENDINGS))


def find_training_images(data: str | Path) -> list[Path]:
    """The images a GAN trains on: a dataset folder's labeled and unlabeled images, or a plain folder.

    A folder with ``dataset.json`` is indexed with :func:`advseg.data.dataset.load_dataset`
    (training + unlabeled cases, first channel; test cases are left out so that nothing derived
    from them reaches a segmenter's training). It must be CT. Any other folder: the NIfTI files of
    ``imagesTr/``, ``imagesUnlabeled/`` and ``imagesTs/`` (the latter only without ``labelsTs/``),
    or, if none, of the folder itself.

    Raises:
        InputError: the folder is missing, is not CT, or holds no images.
    """
    data = Path(data)
    if not data.exists():
        raise InputError(data, "folder not found")
    if not data.is_dir():
        raise InputError(data, "expected a dataset folder or a folder of NIfTI images, got a file")
    if (data / "dataset.json").is_file():
        index = load_dataset(data, require_labels=False)
        if index.modality != "CT":
            raise InputError(data / "dataset.json", f"the GAN synthesizes CT in HU; this dataset is "
                                                    f"{index.modality} ({index.channel_names[0]})")
        paths = [c.images[0] for c in (*index.training, *index.unlabeled)]
    else:
        paths = _nifti_files(data / "imagesTr") + _nifti_files(data / "imagesUnlabeled")
        if not (data / "labelsTs").is_dir():
            paths += _nifti_files(data / "imagesTs")
        paths = paths or _nifti_files(data)
    if not paths:
        raise InputError(data, "no NIfTI images (.nii.gz, .nii) in it or in imagesTr/, imagesUnlabeled/, "
                               "imagesTs/")
    return paths


def to_hu(x: np.ndarray, window: tuple[float, float] | list[float]) -> np.ndarray:
    """[-1, 1] -> HU (float32). G's output is linear, so it is clipped to [-1, 1] first: a sample
    never leaves the window the GAN was trained on."""
    return denormalize_ct(np.clip(np.asarray(x, dtype=np.float32), -1.0, 1.0), window)


def to_int16_hu(x: np.ndarray, window: tuple[float, float] | list[float]) -> np.ndarray:
    """[-1, 1] -> rounded HU as int16 (what the sample files hold)."""
    return np.rint(to_hu(x, window)).astype(np.int16)


def crop_slices(shape: tuple[int, int, int], n_slices: int | None, crop_xy: int | None) -> tuple[slice, ...]:
    """Index ranges of the middle ``n_slices`` slices and the central ``crop_xy`` in-plane square."""
    def centre(n: int, keep: int | None) -> slice:
        if keep is None or keep >= n:
            return slice(0, n)
        start = (n - keep) // 2
        return slice(start, start + keep)

    z, y, x = shape
    return (centre(z, n_slices), centre(y, crop_xy), centre(x, crop_xy))


def resize_volume(x: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
    """``(Z, Y, X)`` -> ``shape``: area averaging where an axis shrinks, then trilinear where it grows."""
    t = x[None, None].float()
    shrunk = tuple(min(a, b) for a, b in zip(t.shape[2:], shape, strict=True))
    if shrunk != tuple(t.shape[2:]):
        t = F.interpolate(t, size=shrunk, mode="area")
    if shrunk != tuple(shape):
        t = F.interpolate(t, size=tuple(shape), mode="trilinear", align_corners=False)
    return t[0, 0]


@dataclass
class TrainingSet:
    """Prepared training volumes and the geometry samples are written with.

    Attributes:
        volumes: ``(N, 1, Z, Y, X)`` float32 in [-1, 1], at the GAN's target shape.
        files: the image files, in order.
        geometry: ``{"shape": [Z, Y, X], "affine": 4 x 4 nested list (NIfTI, index order x, y, z),
            "data_shape": [Z, Y, X], "data_affine": ...}``: the GAN's grid and the images' grid,
            both covering the mean field of view.
    """

    volumes: torch.Tensor
    files: list[str]
    geometry: dict[str, Any]


def _directions(affine: np.ndarray) -> np.ndarray:
    m = np.asarray(affine, dtype=np.float64)[:3, :3]
    norms = np.linalg.norm(m, axis=0)
    return m / np.where(norms > 0, norms, 1.0)


def load_training_set(paths: list[Path], target_shape: tuple[int, int, int], hu_window: list[float],
                      n_slices: int | None = None, crop_xy: int | None = None) -> TrainingSet:
    """Read and prepare every image (module docstring, steps 1-4); compute the sample geometry."""
    volumes, extents, centres, shapes = [], [], [], []
    directions = None
    for path in paths:
        vol = read_volume(path)
        region = crop_slices(vol.shape, n_slices, crop_xy)
        arr = vol.array[region]
        hu = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
        volumes.append(resize_volume(normalize_ct(hu, hu_window), target_shape))
        shapes.append(arr.shape)
        extents.append(np.asarray(arr.shape, dtype=np.float64) * np.asarray(vol.spacing))  # (z, y, x) mm
        # centre of the kept region in (x, y, z) index space, then to world mm
        centre_xyz = [(s.start + s.stop - 1) / 2.0 for s in reversed(region)]
        centres.append((np.asarray(vol.affine) @ np.array([*centre_xyz, 1.0]))[:3])
        if directions is None:
            directions = _directions(vol.affine)
    extent, centre = np.mean(extents, axis=0), np.mean(centres, axis=0)
    data_shape = [int(v) for v in np.rint(np.mean(shapes, axis=0))]
    return TrainingSet(
        volumes=torch.stack(volumes)[:, None].contiguous(),
        files=[str(p) for p in paths],
        geometry={"shape": [int(v) for v in target_shape],
                  "affine": _grid_affine(directions, extent, centre, target_shape).tolist(),
                  "data_shape": data_shape,
                  "data_affine": _grid_affine(directions, extent, centre, data_shape).tolist()},
    )


def _grid_affine(directions: np.ndarray, extent_zyx: np.ndarray, centre: np.ndarray,
                 shape_zyx) -> np.ndarray:
    """Affine of a ``shape_zyx`` grid covering ``extent_zyx`` mm, centred on ``centre`` (world mm)."""
    spacing_zyx = extent_zyx / np.asarray(shape_zyx, dtype=np.float64)
    affine = np.eye(4)
    affine[:3, :3] = directions * spacing_zyx[::-1]  # column i scales index axis i = (x, y, z)[i]
    half = (np.asarray(shape_zyx[::-1], dtype=np.float64) - 1.0) / 2.0
    affine[:3, 3] = centre - affine[:3, :3] @ half
    return affine


def sample_volume(x: np.ndarray, geometry: dict[str, Any], hu_window: list[float],
                  resolution: str = "data") -> Volume:
    """One generated ``(Z, Y, X)`` array in [-1, 1] (GAN grid) -> a CT :class:`Volume` in int16 HU.

    ``resolution="data"`` up-samples it to the training images' grid; ``"gan"`` keeps the GAN's.
    """
    if resolution == "gan":
        return Volume(to_int16_hu(x, hu_window), np.asarray(geometry["affine"], dtype=np.float64),
                      {"source": "advseg PGGAN"})
    if resolution != "data":
        raise InputError(None, f"resolution must be 'data' or 'gan', got {resolution!r}")
    up = resize_volume(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)),
                       tuple(geometry["data_shape"])).numpy()
    return Volume(to_int16_hu(up, hu_window), np.asarray(geometry["data_affine"], dtype=np.float64),
                  {"source": "advseg PGGAN"})


def geometry_spacing(geometry: dict[str, Any],
                     shape: tuple[int, int, int] | None = None) -> tuple[float, ...]:
    """Voxel size ``(z, y, x)`` mm of the sample grid, or of a coarser stage grid ``shape`` (same extent)."""
    spacing = np.asarray(Volume(np.zeros((1, 1, 1)), np.asarray(geometry["affine"])).spacing)
    if shape is not None:
        spacing = spacing * np.asarray(geometry["shape"], dtype=np.float64) / np.asarray(shape)
    return tuple(float(v) for v in spacing)
