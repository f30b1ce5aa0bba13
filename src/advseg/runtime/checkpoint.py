"""Atomic checkpoints that load with ``torch.load(weights_only=True)``.

A checkpoint holds everything needed to continue a run exactly: the weights and optimizer /
scheduler states of every network, the iteration, the config, the best validation score, the
training seconds so far (so a resumed run reports what all its iterations cost) and the RNG states
(torch, numpy global, Python, and the samplers' own generators). Only tensors and plain
Python containers are stored, so the restricted unpickler of ``weights_only=True`` accepts them.
"""

from __future__ import annotations

import io
import math
import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from advseg.errors import InputError
from advseg.io.atomic import atomic_path

# Checkpoint formats this version writes and reads: "<kind>-<version>". A newer version (written by a
# later advseg) is refused rather than misread; bump the version when the state layout changes.
CHECKPOINT_KIND = "advseg-checkpoint"
CHECKPOINT_VERSION = 1
CHECKPOINT_FORMAT = f"{CHECKPOINT_KIND}-{CHECKPOINT_VERSION}"


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically (temp file in the same folder, then rename).

    Refuses a state whose weights hold NaN/Inf: a diverged run must never overwrite a good
    checkpoint. A failed write (disk full, file-size limit, no permission) leaves the previous
    file as it was and raises :class:`InputError` naming ``path`` ("nothing was replaced").
    """
    path = Path(path)
    _check_finite(state)
    # Serialised in memory first, then written by Python: a refused write (disk full, file-size
    # limit) is then a plain OSError, which atomic_path turns into one line, instead of an internal
    # error of torch's zip writer.
    buffer = io.BytesIO()
    torch.save(state, buffer)
    with atomic_path(path) as tmp, tmp.open("wb") as fh:
        fh.write(buffer.getbuffer())


def load_checkpoint(
    path: str | Path,
    map_location: str | torch.device = "cpu",
    kind: str = CHECKPOINT_KIND,
    version: int = CHECKPOINT_VERSION,
) -> dict[str, Any]:
    """Load a checkpoint of ``kind`` with the restricted unpickler (``weights_only=True``).

    Every way a file can be wrong is one :class:`InputError` naming it: missing, empty, truncated
    or corrupt, holding pickled code (refused: loading it could run it), not an advseg checkpoint
    (another program's file, or another kind of advseg checkpoint), or written by a newer advseg
    (format version above ``version``).
    """
    path = Path(path)
    if not path.exists():
        raise InputError(path, "checkpoint not found")
    if not path.is_file():
        raise InputError(path, "expected a checkpoint file, got a folder")
    if path.stat().st_size == 0:
        raise InputError(path, "checkpoint file is empty")
    with path.open("rb") as fh:
        is_zip = fh.read(4) == b"PK\x03\x04"  # torch.save's format since PyTorch 1.6
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        if "global" in str(exc).lower():  # a class or function reference: unpickling could run code
            raise InputError(path, "checkpoint holds pickled code; refusing to load it (weights_only)") \
                from None
        raise InputError(path, "not an advseg checkpoint (not a PyTorch zip checkpoint)") from None
    except Exception:  # torch raises RuntimeError, EOFError, KeyError, ... for damaged files
        if is_zip:
            raise InputError(path, "checkpoint is truncated or corrupt") from None
        raise InputError(path, "not an advseg checkpoint (not a PyTorch zip checkpoint)") from None
    fmt = state.get("format") if isinstance(state, dict) else None
    name, _, number = str(fmt).rpartition("-")
    if not isinstance(fmt, str) or not name.startswith("advseg-") or not number.isdigit():
        raise InputError(path, f"not an advseg checkpoint (no advseg format tag; expected {kind}-{version})")
    if name != kind:
        raise InputError(path, f"is another kind of advseg checkpoint ({fmt}; expected {kind}-{version})")
    if int(number) > version:
        raise InputError(path, f"written by a newer advseg (format {fmt}; this one reads up to "
                               f"{kind}-{version}): upgrade advseg to use it")
    return state


def _check_finite(state: Any, where: str = "") -> None:
    if isinstance(state, torch.Tensor):
        if state.is_floating_point() and not torch.isfinite(state).all():
            raise FloatingPointError(f"refusing to save a checkpoint with NaN/Inf in {where or 'a tensor'}")
    elif isinstance(state, dict):
        for k, v in state.items():
            if k in ("optimizer", "optimizers", "rng"):
                continue
            _check_finite(v, f"{where}.{k}" if where else str(k))
    elif isinstance(state, list | tuple):
        for i, v in enumerate(state):
            _check_finite(v, f"{where}[{i}]")
    elif isinstance(state, float) and math.isnan(state) and where.endswith("loss"):
        raise FloatingPointError(f"refusing to save a checkpoint with NaN {where}")


def _plain(obj: Any) -> Any:
    """numpy scalars/arrays -> Python ints/lists, recursively (for weights_only loading)."""
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    return obj


def capture_rng_state() -> dict[str, Any]:
    """Global RNG states (torch CPU/CUDA, numpy legacy global, Python ``random``)."""
    np_state = np.random.get_state()  # noqa: NPY002 - the legacy global state is what we must restore
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *_plain(list(np_state[2:]))],
        "python": _plain(random.getstate()),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))  # noqa: NPY002
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def to_plain(obj: Any) -> Any:
    """Public form of :func:`_plain` for sampler states and logs stored in checkpoints."""
    return _plain(obj)
