""":mod:`advseg.io`'s entry for a folder holding one CT series: read with :mod:`.series`, written with
:mod:`.ctwrite` (kept apart from both, which import each other's names otherwise)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from advseg.errors import InputError
from advseg.io.base import Volume
from advseg.io.dicom.ctwrite import write_ct_series
from advseg.io.dicom.series import is_dicom_folder, read_series_folder


class DicomSeriesIO:
    """:mod:`advseg.io` entry for a folder holding exactly one CT series (``read_volume(folder)``)."""

    suffixes: tuple[str, ...] = ()

    def accepts(self, path: Path) -> bool:
        return is_dicom_folder(path)

    def read(self, path: Path) -> Volume:
        series = read_series_folder(path)
        if len(series) > 1:
            raise InputError(path, f"{len(series)} CT series in this folder; give one series' folder")
        return series[0].read()

    def write(self, path: Path, volume: Volume, dtype: np.dtype | None = None) -> None:
        """Write ``volume`` as a new CT series into the folder ``path`` (see :func:`write_ct_series`)."""
        write_ct_series(path, volume)
