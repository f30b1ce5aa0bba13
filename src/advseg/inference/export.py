"""Export a trained segmenter S for CPU deployment runtimes: ONNX (ONNX Runtime) and OpenVINO IR.

    advseg export RUN --format onnx OUT.onnx        # or --format openvino OUT.xml (+ OUT.bin)
    advseg export RUN --format openvino --int8 OUT.xml   # int8, advseg.inference.quantize

The exported graph is the inference network: eval mode, batch norm folded into the convolutions
(:func:`advseg.inference.fuse.fold_batchnorm`), float32, input ``x`` ``(B, C, Z, Y, X)`` and output
``logits`` ``(B, K, Z, Y, X)`` (the fused logits of an S-net with auxiliary classifiers, no softmax).
The batch size and the spatial sizes are dynamic; each spatial size must be a multiple of the
network's ``size_divisor`` (``2 ** (levels - 1)``), as in PyTorch. The graph is exported with
``torch.onnx.export(dynamo=True)`` (needs ``onnxscript``, part of the ``onnx`` extra).
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from advseg.errors import InputError
from advseg.inference.fuse import fold_batchnorm
from advseg.inference.runtimes import require
from advseg.io.atomic import atomic_path

FORMATS = ("onnx", "openvino")  # what advseg.inference.deploy.export_run writes
OPSET = 18


def export_onnx(net: nn.Module, path: str | Path, in_channels: int | None = None,
                example_size: tuple[int, int, int] = (16, 64, 64)) -> Path:
    """Write ``net`` (folded, float32, CPU) as an ONNX file with dynamic batch and spatial sizes.

    ``example_size`` ``(Z, Y, X)`` is only the tracing example (any multiple of ``size_divisor``).
    Returns ``path``. Needs the ``onnx`` and ``onnxscript`` packages.
    """
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        raise InputError(None, "ONNX export needs onnx and onnxscript: "
                               "pip install -c constraints.txt 'advseg[onnx]'") from None
    path = Path(path)
    net, _ = fold_batchnorm(net)
    net = net.to("cpu", torch.float32).eval()
    net = net._apply(lambda t: t.contiguous())  # the export traces the plain (NCDHW) layout
    divisor = int(getattr(net, "size_divisor", 1) or 1)
    spatial_dims = getattr(net, "spatial_dims", 3)
    if in_channels is None:
        first = next(m for m in net.modules() if isinstance(m, nn.Conv2d | nn.Conv3d))
        in_channels = first.in_channels
    size = example_size if spatial_dims == 3 else example_size[1:]
    x = torch.zeros((2, in_channels, *(max(divisor, s // divisor * divisor) for s in size)))
    dim = torch.export.Dim
    # Multiples of the divisor, so the network's own divisibility check holds for every size.
    spatial = {i + 2: divisor * dim(f"s{i}", min=1, max=4096 // divisor) for i in range(spatial_dims)}
    shapes = {"x": {0: dim("batch", min=1, max=1024), **spatial}}
    with atomic_path(path, suffix=".onnx") as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        with torch.inference_mode(False), torch.no_grad():
            program = torch.onnx.export(net, (x,), input_names=["x"], output_names=["logits"],
                                        dynamic_shapes=shapes, opset_version=OPSET, dynamo=True,
                                        external_data=False, verbose=False)
        program.save(str(tmp), external_data=False)
    return path


def export_openvino(onnx_path: str | Path, xml_path: str | Path) -> Path:
    """Convert an ONNX file to OpenVINO IR (``xml_path`` and the ``.bin`` beside it), weights float32
    (bf16 or f32 is chosen when the IR is compiled, :class:`~advseg.inference.engines.OpenVinoEngine`)."""
    ov = require("openvino")
    return save_openvino(ov.convert_model(str(onnx_path)), xml_path)


def save_openvino(model: Any, xml_path: str | Path) -> Path:
    """Write an ``openvino.Model`` as ``xml_path`` + the ``.bin`` beside it, atomically, weights as
    they are in the model (float32, or int8 after :mod:`advseg.inference.quantize`)."""
    ov = require("openvino")
    xml_path = Path(xml_path)
    bin_path = xml_path.with_suffix(".bin")
    # save_model writes <name>.xml + <name>.bin; both go through temporary names, the .bin first
    # (an .xml never points at a missing or partial .bin).
    with atomic_path(xml_path, suffix=".xml") as tmp_xml:
        tmp_bin = tmp_xml.with_suffix(".bin")
        try:
            ov.save_model(model, str(tmp_xml), compress_to_fp16=False)
            with atomic_path(bin_path, suffix=".bin") as tmp_b:
                tmp_bin.replace(tmp_b)  # the .xml names no .bin file: OpenVINO pairs them by name
        finally:
            tmp_bin.unlink(missing_ok=True)  # a save that failed half-way leaves no stray .bin
    return xml_path
