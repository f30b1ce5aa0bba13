"""The optional CPU runtimes (ONNX Runtime, OpenVINO): their names and a guarded import.

Below :mod:`advseg.inference.export` and :mod:`advseg.inference.engines`, which both need them; the
packages are imported only when an engine or an export asks (they are optional extras).
"""

from __future__ import annotations

from typing import Any

from advseg.errors import InputError

ENGINES = ("torch", "onnxruntime", "openvino")
_EXTRA = {"onnxruntime": "onnx", "openvino": "openvino"}


def require(engine: str) -> Any:
    """Import the runtime package of ``engine`` or raise :class:`InputError` saying how to install it."""
    try:
        if engine == "onnxruntime":
            import onnxruntime

            return onnxruntime
        if engine == "openvino":
            import openvino

            return openvino
    except ImportError:
        raise InputError(None, f"--engine {engine} needs the {engine} package: "
                               f"pip install -c constraints.txt 'advseg[{_EXTRA[engine]}]'") from None
    raise InputError(None, f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
