"""Never destroy a user's input: output paths are checked against input paths before anything is read.

Two promises, checked by every command that writes (``predict``, ``evaluate``, ``train``, ``phantom``,
``demo``, ``synthesize``, ``experiment``, ``report``):

1. :func:`refuse_overlap`: an output path that is equal to an input, lies inside an input folder, or
   contains an input is refused with one line. Paths are compared after resolving symlinks and
   ``..``, so ``IMAGES/../IMAGES`` or a link to ``IMAGES`` is still ``IMAGES``. A few inputs are
   *hosts*: folders the command reads that may hold its outputs in a subfolder (predictions inside
   the training run folder, samples inside the GAN folder), but never be the output itself.
2. :func:`check_output_dir` / :func:`record_outputs`: a command writes into a folder only if that
   folder is new, empty, or holds nothing but what the same command wrote there before (listed in
   the folder's ``.advseg_outputs.json``); anything else needs ``overwrite=True`` (``--overwrite``).
   The manifest is written *before* the outputs, so a folder a crashed run left behind is still
   recognised as advseg's own.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

from advseg.errors import InputError
from advseg.io.atomic import atomic_write_text

MANIFEST = ".advseg_outputs.json"

PathLike = str | Path


def _resolved(path: PathLike) -> Path:
    # strict=False: outputs usually do not exist yet; their existing parents are still resolved.
    return Path(path).expanduser().resolve(strict=False)


def refuse_overlap(
    outputs: Iterable[PathLike | None],
    inputs: Iterable[PathLike | None],
    hosts: Iterable[PathLike | None] = (),
) -> None:
    """Raise :class:`InputError` if an output is, lies inside, or contains an input.

    Args:
        outputs: files or folders the command will write (``None`` entries are skipped).
        inputs: files or folders it reads; none of them may be touched.
        hosts: folders it reads that may *contain* an output folder (e.g. a training run folder
            with its ``predictions/``), but may not be one or lie inside one.
    """
    ins = [(p, _resolved(p)) for p in inputs if p is not None]
    hs = [(p, _resolved(p)) for p in hosts if p is not None]
    for out in outputs:
        if out is None:
            continue
        o = _resolved(out)
        for given, i in ins:
            if o == i:
                raise InputError(out, f"output is the input {given}; choose another output path "
                                      "(advseg never overwrites its input)")
            if o.is_relative_to(i):
                raise InputError(out, f"output lies inside the input {given}; choose a folder outside it")
            if i.is_relative_to(o):
                raise InputError(out, f"output contains the input {given}; choose a folder that does not")
        for given, h in hs:
            if o == h:
                raise InputError(out, f"output is the input folder {given}; choose another output path")
            if h.is_relative_to(o):
                raise InputError(out, f"output contains the input {given}; choose a folder that does not")


def _manifest(folder: Path) -> dict:
    path = folder / MANIFEST
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def owned_files(folder: PathLike, command: str) -> set[str]:
    """Paths (relative, ``/``-separated) that ``command`` recorded as its outputs in ``folder``."""
    data = _manifest(Path(folder))
    if data.get("command") != command:
        return set()
    return {str(f) for f in data.get("files", []) if isinstance(f, str)}


def check_output_dir(folder: PathLike, command: str, overwrite: bool = False) -> None:
    """Refuse to write into ``folder`` if it holds files that ``command`` did not write there.

    ``command`` names the writer (``"predict"``, ``"evaluate"``, ...): a folder of predictions is
    not a folder of evaluations. Hidden files (``.*``, e.g. ``.DS_Store``) do not count, nor do
    subfolders with a manifest of their own (another advseg command's outputs, e.g. the samples
    folder inside a synthesis report, which that command checks when it writes there).
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise InputError(folder, "output exists and is not a folder")
    if not folder.is_dir() or overwrite:
        return
    owned = owned_files(folder, command)
    foreign = sorted(rel for rel in _visible_files(folder) if rel not in owned)
    if foreign:
        more = f" and {len(foreign) - 1} more" if len(foreign) > 1 else ""
        raise InputError(
            folder, f"output folder holds files that advseg {command} did not write ({foreign[0]}{more}); "
                    "choose an empty folder, or add --overwrite to write into it anyway",
        )


def _visible_files(folder: Path) -> list[str]:
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        here = Path(dirpath)
        # prune hidden folders and nested advseg output folders
        dirnames[:] = [d for d in dirnames if not d.startswith(".") and not (here / d / MANIFEST).is_file()]
        found += [(here / f).relative_to(folder).as_posix() for f in filenames if not f.startswith(".")]
    return found


def check_output_file(path: PathLike, overwrite: bool = False) -> None:
    """Refuse to replace an existing file that is not to be overwritten."""
    path = Path(path)
    if path.is_dir():
        raise InputError(path, "output is a folder; give a file name")
    if path.exists() and not overwrite:
        raise InputError(path, "output file exists; choose another name, or add --overwrite to replace it")


def _relative(folder: Path, files: Iterable[PathLike]) -> set[str]:
    """``files`` as the manifest lists them: ``/``-separated paths relative to ``folder``."""
    root = folder.resolve(strict=False)
    return {Path(f).resolve(strict=False).relative_to(root).as_posix() for f in files}


def record_outputs(folder: PathLike, command: str, files: Iterable[PathLike]) -> None:
    """Add ``files`` (inside ``folder``) to the folder's manifest of ``command``'s outputs.

    Call it after :func:`check_output_dir` and before writing them.
    """
    folder = Path(folder)
    listed = sorted(owned_files(folder, command) | _relative(folder, files))
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / MANIFEST, json.dumps({"command": command, "files": listed}, indent=1) + "\n")


def forget_outputs(folder: PathLike, command: str, files: Iterable[PathLike]) -> None:
    """Remove ``files`` (already deleted by their writer) from the folder's manifest."""
    folder = Path(folder)
    listed = sorted(owned_files(folder, command) - _relative(folder, files))
    atomic_write_text(folder / MANIFEST, json.dumps({"command": command, "files": listed}, indent=1) + "\n")
