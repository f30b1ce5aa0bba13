"""Image readers and writers behind one interface (:mod:`advseg.io.base`)."""

from advseg.io.base import Volume, VolumeIO, io_for, read_volume, register_io, strip_suffix, write_volume
from advseg.io.dicom.volume import DicomSeriesIO
from advseg.io.nifti import NiftiIO

register_io(DicomSeriesIO())
register_io(NiftiIO())

__all__ = ["Volume", "VolumeIO", "io_for", "read_volume", "register_io", "strip_suffix", "write_volume"]
