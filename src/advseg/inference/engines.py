"""Inference engines: what runs the segmenter S on ``(B, C, Z, Y, X)`` slabs or windows.

Every engine is an ``nn.Module`` whose ``forward`` takes a float tensor ``(B, C, Z, Y, X)`` and
returns float32 logits ``(B, K, Z, Y, X)`` on the input's device, and that exposes the network's
``size_divisor``; so :func:`advseg.inference.sliding.predict_logits` (slab recipe or MONAI's sliding
window) runs any of them unchanged.

* ``torch`` (:class:`TorchEngine`): the trained network itself, batch norm folded into the
  convolutions (:func:`advseg.inference.fuse.fold_batchnorm`), weights and activations
  channels-last (oneDNN's fast 3D layout), and with ``precision="bf16"`` on a CPU the weights and
  activations in bfloat16 (oneDNN's AVX512-BF16 / AMX convolutions), the classifier heads in
  float32 so that the logits are not rounded to bf16's 8-bit mantissa before the argmax.
  On CUDA the network stays float32 and :class:`~advseg.inference.api.SegmentationModel` autocasts.
* ``onnxruntime`` (:class:`OnnxRuntimeEngine`): an exported ONNX graph on ONNX Runtime's CPU
  execution provider (float32; ORT has no bf16 convolutions on CPU).
* ``openvino`` (:class:`OpenVinoEngine`): the ONNX graph compiled by OpenVINO for the CPU, with
  ``INFERENCE_PRECISION_HINT`` f32 or bf16 (OpenVINO picks bf16 by itself on CPUs that have it,
  so fp32 is asked for explicitly).

ONNX Runtime and OpenVINO are optional (``pip install advseg[onnx]`` / ``advseg[openvino]``); asking
for an engine whose package is missing raises :class:`~advseg.errors.InputError` naming the install.
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from advseg.errors import InputError
from advseg.inference.export import export_onnx
from advseg.inference.fuse import fold_batchnorm
from advseg.inference.runtimes import require
from advseg.networks.factory import channels_last_input, to_channels_last

PRECISIONS = ("auto", "fp32", "bf16")


def cpu_has_bf16() -> bool:
    """Whether oneDNN has native bf16 convolutions here (AVX512-BF16 or AMX); emulated bf16 is slower
    than float32, so ``precision="auto"`` only picks bf16 where this is True."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(precision: str, device: torch.device, network: str = "res_unet") -> str:
    """``auto`` -> ``bf16`` for advseg's S-net (``network == "res_unet"``, whose bf16 labels were
    measured against fp32) on a CPU with native bf16 (:func:`cpu_has_bf16`), else ``fp32`` (MONAI
    networks: asked for explicitly). On CUDA ``auto`` is ``fp32`` here; the model's ``train.amp``
    autocast (fp16) applies as before."""
    if precision not in PRECISIONS:
        raise InputError(None, f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision != "auto":
        return precision
    return "bf16" if device.type == "cpu" and network == "res_unet" and cpu_has_bf16() else "fp32"


def _heads(net: nn.Module) -> list[nn.Module]:
    """The classifier convolutions of a :class:`~advseg.networks.ResUNet` (none for other networks)."""
    heads = [getattr(net, "head", None), *getattr(net, "aux_heads", [])]
    return [h for h in heads if isinstance(h, nn.Module)]


def _float_input(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
    return (args[0].float(), *args[1:])


class TorchEngine(nn.Module):
    """The network in eager PyTorch, prepared for inference (see the module docstring).

    ``fold_bn``, ``channels_last`` and ``precision`` are the levers of
    ``benchmarks/inference_speed.py``; the defaults are the fastest measured ones. The engine owns a
    copy of ``net`` (the original is not modified). ``precision="bf16"`` on a CPU without native
    bf16 (:func:`cpu_has_bf16`) raises :class:`~advseg.errors.InputError`.
    """

    def __init__(self, net: nn.Module, device: torch.device | str = "cpu", precision: str = "fp32",
                 fold_bn: bool = True, channels_last: bool = True) -> None:
        super().__init__()
        device = torch.device(device)
        bf16_on_cpu = precision == "bf16" and device.type == "cpu"
        if bf16_on_cpu and not cpu_has_bf16():
            # without oneDNN's bf16 kernels PyTorch has no bf16 3D average pooling on the CPU, and
            # emulated bf16 convolutions would be slower than float32 anyway
            raise InputError(None, "precision bf16 needs a CPU with native bfloat16 (AVX512-BF16 or AMX) "
                                   "and this one has none: use --precision fp32 or auto")
        net = fold_batchnorm(net)[0] if fold_bn else copy.deepcopy(net).eval()
        self.dtype = torch.bfloat16 if bf16_on_cpu else torch.float32
        net = net.to(device)
        if self.dtype == torch.bfloat16:
            net = net.to(torch.bfloat16)
            for head in _heads(net):  # logits in float32: argmax of bf16 logits ties too often
                head.float()
                head.register_forward_pre_hook(_float_input)
        self.channels_last = channels_last
        if channels_last:
            to_channels_last(net)
        self.net = net.eval()
        self.precision = "bf16" if self.dtype == torch.bfloat16 else "fp32"

    @property
    def size_divisor(self) -> int | None:
        return getattr(self.net, "size_divisor", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.dtype)
        if self.channels_last:
            x = channels_last_input(x)
        out = self.net(x)
        out = out[0] if isinstance(out, list | tuple) else out
        return out.float()


class _ArrayEngine(nn.Module):
    """Shared part of the engines that run on numpy arrays (CPU only)."""

    def __init__(self, size_divisor: int | None) -> None:
        super().__init__()
        self._size_divisor = size_divisor

    @property
    def size_divisor(self) -> int | None:
        return self._size_divisor

    def run(self, x: Any) -> Any:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        array = x.detach().to("cpu", torch.float32).contiguous().numpy()
        return torch.from_numpy(self.run(array)).to(x.device)


class OnnxRuntimeEngine(_ArrayEngine):
    """An ONNX file on ONNX Runtime's CPU execution provider, ``threads`` intra-op threads."""

    def __init__(self, path: str | Path, threads: int | None = None, size_divisor: int | None = None) -> None:
        super().__init__(size_divisor)
        ort = require("onnxruntime")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or torch.get_num_threads()
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def run(self, x: Any) -> Any:
        return self.session.run(None, {self.input_name: x})[0]


class OpenVinoEngine(_ArrayEngine):
    """An ONNX or OpenVINO IR (``.xml``) file compiled by OpenVINO for the CPU.

    ``precision`` ``fp32`` / ``bf16`` sets ``INFERENCE_PRECISION_HINT`` (``auto``: OpenVINO's own
    choice, bf16 where the CPU has it); ``threads`` sets ``INFERENCE_NUM_THREADS``.
    """

    def __init__(self, path: str | Path, precision: str = "fp32", threads: int | None = None,
                 size_divisor: int | None = None) -> None:
        super().__init__(size_divisor)
        ov = require("openvino")
        config: dict[str, Any] = {"INFERENCE_NUM_THREADS": threads or torch.get_num_threads(),
                                  "PERFORMANCE_HINT": "LATENCY"}
        if precision != "auto":
            config["INFERENCE_PRECISION_HINT"] = {"fp32": "f32", "bf16": "bf16"}[precision]
        self.compiled = ov.Core().compile_model(str(path), "CPU", config)
        self.output = self.compiled.output(0)

    def run(self, x: Any) -> Any:
        return self.compiled(x)[self.output]


def build_engine(net: nn.Module, engine: str = "torch", device: torch.device | str = "cpu",
                 precision: str = "fp32", threads: int | None = None,
                 workdir: str | Path | None = None, path: str | Path | None = None) -> nn.Module:
    """An engine for the trained network ``net`` (eval mode): ``torch`` directly, the others through
    an ONNX export (:func:`advseg.inference.export.export_onnx`) into ``workdir`` (a temporary
    folder if None: the runtimes read the file when the engine is built). ``precision`` is already
    resolved (``fp32`` or ``bf16``); ONNX Runtime always runs float32.

    ``path``: an ``advseg export`` file to run instead of exporting ``net`` (``.onnx`` for
    onnxruntime, ``.onnx`` or ``.xml`` for openvino, e.g. the int8 IR of ``--int8``; there
    ``precision`` applies to the layers left in floating point)."""
    device = torch.device(device)
    if path is not None and engine == "torch":
        raise InputError(path, "--engine-file needs --engine onnxruntime or openvino")
    if engine == "torch":
        return TorchEngine(net, device, precision)
    require(engine)
    if device.type != "cpu":
        raise InputError(None, f"--engine {engine} runs on the CPU; use --device cpu (or --engine torch)")
    divisor = getattr(net, "size_divisor", None)
    if path is not None:
        path = Path(path)
        allowed = (".onnx",) if engine == "onnxruntime" else (".onnx", ".xml")
        if path.suffix not in allowed:
            raise InputError(path, f"--engine {engine} runs {' or '.join(allowed)} files")
        if not path.is_file():
            raise InputError(path, "engine file not found")
        if engine == "onnxruntime":
            return OnnxRuntimeEngine(path, threads, divisor)
        return OpenVinoEngine(path, precision, threads, divisor)
    with tempfile.TemporaryDirectory(prefix="advseg-engine-") as tmp:  # both runtimes read it at once
        path = export_onnx(net, Path(workdir or tmp) / "model.onnx")
        if engine == "onnxruntime":
            return OnnxRuntimeEngine(path, threads, divisor)
        return OpenVinoEngine(path, precision, threads, divisor)
