"""DICOM test helpers: generated data (never committed binaries) and the independent tools' runner.

Imported by tests as ``from dicom_testing import ...`` (tests/ is on sys.path through its conftest)."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from advseg.data.phantom import LABELS, generate_case
from advseg.io import Volume, write_volume

SHAPE = (16, 64, 64)


@dataclass
class PhantomCT:
    nifti: Path  # ct.nii.gz
    masks: Path  # one <organ>.nii.gz per class (what plastimatch's --input-prefix reads)
    image: np.ndarray  # (Z, Y, X) HU
    label: np.ndarray  # (Z, Y, X) classes LABELS
    affine: np.ndarray


def needs(tool: str) -> str:
    """The tool's path, or skip the test with the reason."""
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} not installed (Debian: apt-get install plastimatch dcm2niix dicom3tools dcmtk)")
    return path


def run_tool(*args: str | Path) -> subprocess.CompletedProcess:
    res = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, (
        f"{args[0]} failed ({res.returncode}):\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}"
    )
    return res


def dsc(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    return 2.0 * float((a & b).sum()) / max(1, int(a.sum() + b.sum()))


def make_phantom(folder: Path, seed: int = 1, shape=SHAPE) -> PhantomCT:
    image, label, affine = generate_case(seed, shape)
    folder.mkdir(parents=True, exist_ok=True)
    write_volume(folder / "ct.nii.gz", Volume(image, affine), np.int16)
    for k, name in LABELS.items():
        if k:
            write_volume(
                folder / "masks" / f"{name}.nii.gz", Volume((label == k).astype(np.uint8), affine), np.uint8
            )
    return PhantomCT(folder / "ct.nii.gz", folder / "masks", image, label, affine)
