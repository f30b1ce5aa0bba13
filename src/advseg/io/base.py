"""One interface for every image reader/writer (NIfTI files; DICOM CT series folders).

Convention used everywhere in advseg: ``Volume.array`` is indexed ``(Z, Y, X)`` (slices first, as
the networks' ``(B, C, Z, Y, X)`` tensors), while ``Volume.affine`` is the file's own 4 x 4 affine
(NIfTI convention: it maps the on-disk voxel index ``(i, j, k) = (x, y, z)`` to world millimetres,
RAS+). Readers transpose on the way in and writers transpose back, so a read/write round trip is
exact and the affine is never recomputed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from advseg.errors import InputError
from advseg.io.atomic import atomic_path


@dataclass
class Volume:
    """A 3D image or label map.

    Attributes:
        array: voxel values, shape ``(Z, Y, X)``.
        affine: 4 x 4 voxel-to-world matrix in mm, for index order ``(x, y, z)`` (NIfTI).
        meta: free-form metadata the reader found (e.g. original dtype, DICOM UIDs).
    """

    array: np.ndarray
    affine: np.ndarray = field(default_factory=lambda: np.eye(4))
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.array.shape)  # type: ignore[return-value]

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm as ``(z, y, x)``, matching ``array``'s axis order."""
        sx, sy, sz = np.sqrt((np.asarray(self.affine)[:3, :3] ** 2).sum(axis=0))
        return (float(sz), float(sy), float(sx))


class VolumeIO(Protocol):
    """What a reader/writer for one file format provides."""

    suffixes: tuple[str, ...]

    def read(self, path: Path) -> Volume: ...

    def write(self, path: Path, volume: Volume, dtype: np.dtype | None = None) -> None: ...


_REGISTRY: list[VolumeIO] = []


def register_io(io: VolumeIO) -> None:
    """Add a format; later registrations win for the same suffix."""
    _REGISTRY.insert(0, io)


def io_for(path: str | Path) -> VolumeIO:
    """The format for ``path``: by its name's ending, or (DICOM) by what a folder holds."""
    name = Path(path).name.lower()
    for io in _REGISTRY:
        accepts = getattr(io, "accepts", None)
        if accepts is not None and accepts(Path(path)):
            return io
        if any(name.endswith(s) for s in io.suffixes):
            return io
    known = sorted({s for io in _REGISTRY for s in io.suffixes})
    folders = " or a folder of one DICOM CT series" if any(hasattr(io, "accepts") for io in _REGISTRY) else ""
    raise InputError(path, f"unsupported file type (known: {', '.join(known)}{folders})")


def read_volume(path: str | Path) -> Volume:
    """Read any supported image; raises :class:`InputError` naming the file on any failure."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, "file not found")
    if path.is_file() and path.stat().st_size == 0:
        raise InputError(path, "file is empty")
    return io_for(path).read(path)


def write_volume(path: str | Path, volume: Volume, dtype: np.dtype | type | None = None) -> None:
    """Write atomically: a partial file never takes the place of a good one."""
    path = Path(path)
    io = io_for(path)
    with atomic_path(path, suffix=_full_suffix(path)) as tmp:  # the writer picks the format by name
        io.write(tmp, volume, None if dtype is None else np.dtype(dtype))


def _full_suffix(path: Path) -> str:
    name = path.name.lower()
    for s in (".nii.gz", ".nii", ".mha", ".nrrd", ".mhd"):
        if name.endswith(s):
            return s
    return path.suffix


def strip_suffix(path: str | Path) -> str:
    """Case name of an image file: ``case_001.nii.gz`` -> ``case_001``."""
    name = Path(path).name
    return name[: -len(_full_suffix(Path(name)))] if _full_suffix(Path(name)) else name
