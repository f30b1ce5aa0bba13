"""Which torch device a run uses."""

from __future__ import annotations

import torch


def resolve_device(name: str = "auto") -> torch.device:
    """``auto``: CUDA if available, else CPU; any other name (``cpu``, ``cuda:1``, ``mps``) as given."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
