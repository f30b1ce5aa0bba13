"""Atomic checkpoints that load with ``torch.load(weights_only=True)``.

A checkpoint holds everything needed to continue a run exactly: the weights and optimizer /
scheduler states of every network, the iteration, the config, the best validation score and the
RNG states (torch, numpy global, Python, and the samplers' own generators). Only tensors and plain
Python containers are stored, so the restricted unpickler of ``weights_only=True`` accepts them.
"""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from advseg.errors import InputError
from advseg.io.atomic import atomic_path


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically (temp file in the same folder, then rename).

    Refuses a state whose weights hold NaN/Inf: a diverged run must never overwrite a good
    checkpoint.
    """
    path = Path(path)
    _check_finite(state)
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise InputError(path, "checkpoint not found")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # corrupt, truncated or not a checkpoint
        raise InputError(path, f"cannot load checkpoint ({type(exc).__name__}: {exc})") from None


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
