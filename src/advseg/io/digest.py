"""Content digests of input folders, so a result can say which data it was computed from.

A matrix is computed over several days and machines, and some of its inputs are regenerated on
each machine (the phantom data, the GAN-synthesised pool). A digest of those folders in every
result file shows whether two cells saw the same volumes. gzip members carry their write time in
their header, so ``.gz`` files are digested by their decompressed content: the same volume written
twice gives the same digest.
"""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path
from typing import Any

from advseg.errors import InputError

_CHUNK = 1 << 20


def folder_digest(folder: str | Path) -> dict[str, Any]:
    """``{"files": n, "sha256": hex}`` over the files below ``folder`` (hidden ones, e.g. lock
    files, left out): each file's path relative to ``folder`` and its content, in sorted path order,
    ``.gz`` files decompressed. Raises :class:`InputError` on a file that cannot be read."""
    root = Path(folder)
    total = hashlib.sha256()
    files = sorted(p for p in root.rglob("*")
                   if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts))
    for path in files:
        rel = path.relative_to(root).as_posix()
        total.update(rel.encode() + b"\0")
        h = hashlib.sha256()
        try:
            with (gzip.open(path, "rb") if path.name.endswith(".gz") else path.open("rb")) as fh:
                while chunk := fh.read(_CHUNK):
                    h.update(chunk)
        except (OSError, EOFError) as exc:  # gzip.BadGzipFile is an OSError
            raise InputError(path, f"cannot be read for its digest ({exc})") from None
        total.update(h.digest())
    return {"files": len(files), "sha256": total.hexdigest()}
