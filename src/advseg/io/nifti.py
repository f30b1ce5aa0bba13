"""NIfTI reader/writer (nibabel)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from advseg.errors import InputError
from advseg.io.base import Volume


class NiftiIO:
    suffixes = (".nii.gz", ".nii")

    def read(self, path: Path) -> Volume:
        try:
            img = nib.load(str(path))
            data = np.asanyarray(img.dataobj)
        except Exception as exc:  # nibabel raises many types for corrupt files
            raise InputError(path, f"cannot read NIfTI ({type(exc).__name__}: {exc})") from None
        data = np.squeeze(data) if data.ndim > 3 else data
        if data.ndim != 3:
            raise InputError(path, f"expected a 3D image, got shape {tuple(data.shape)}")
        affine = img.affine if img.affine is not None else np.eye(4)
        return Volume(
            array=np.ascontiguousarray(data.transpose(2, 1, 0)),
            affine=np.asarray(affine, dtype=np.float64),
            meta={"dtype": str(data.dtype), "format": "nifti"},
        )

    def write(self, path: Path, volume: Volume, dtype: np.dtype | None = None) -> None:
        arr = volume.array if dtype is None else volume.array.astype(dtype, copy=False)
        img = nib.Nifti1Image(np.ascontiguousarray(arr.transpose(2, 1, 0)), np.asarray(volume.affine))
        img.set_qform(volume.affine, code=1)
        img.set_sform(volume.affine, code=1)
        nib.save(img, str(path))
