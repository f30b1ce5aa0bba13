"""Atomic file writes: a partial file never takes the place of a good one.

Every writer of advseg (volumes, checkpoints, caches, splits, tables, figures) goes through
:func:`atomic_path`: the caller writes a temporary file in the target's folder, which is renamed onto
the target (``os.replace``, atomic on POSIX) only when the ``with`` block finishes, and deleted if it
raises. A write the system refuses (disk full, file-size limit, permissions: ``OSError``) becomes
one :class:`~advseg.errors.InputError` naming the file.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from advseg.errors import InputError


@contextmanager
def atomic_path(path: str | Path, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write; rename it onto ``path`` on success.

    ``suffix``: the temporary file's ending, for writers that choose the format by the name
    (``".nii.gz"``, ``".png"``). The renamed file gets the permissions of a normal new file
    (``0666`` minus the umask), not the ``0600`` that ``mkstemp`` creates.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    except OSError as exc:
        raise InputError(path.parent, f"cannot write in this folder ({_reason(exc)})") from None
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except OSError as exc:  # disk full, file-size limit, permissions: the old file stays as it was
        raise InputError(path, f"cannot write ({_reason(exc)}); nothing was replaced") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _reason(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``path`` to fill; rename it onto ``path`` when the ``with`` block
    finishes, delete it whole if the block raises. ``path`` must not exist or be an empty folder (the
    caller checks): a dataset or a DICOM series appears complete or not at all. The folder gets the
    permissions of a normal new folder (``0777`` minus the umask), not ``mkdtemp``'s private ``0700``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.tmp-"))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())
        if path.is_dir():
            path.rmdir()  # empty (checked by the caller); a rename cannot replace a folder everywhere
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8, newlines as given) to ``path`` atomically."""
    with atomic_path(path, suffix=Path(path).suffix or ".tmp") as tmp:
        tmp.write_text(text, encoding="utf-8", newline="")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
