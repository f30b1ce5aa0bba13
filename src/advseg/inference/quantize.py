"""Post-training int8 quantisation of the exported S-net for OpenVINO on the CPU (NNCF).

    advseg export RUN OUT.xml --format openvino --int8 [--calibration DIR] [--calibration-size 300]

NNCF (``nncf.quantize``, preset ``MIXED``: symmetric int8 weights per output channel, asymmetric
int8 activations) inserts FakeQuantize nodes into the float32 OpenVINO model; their activation
ranges are the statistics of the network's inputs on a calibration set, and OpenVINO's CPU plugin
runs the quantised convolutions in int8 (VNNI / AMX where the CPU has them). Weights are stored in
int8 in the ``.bin``.

The calibration inputs are exactly what the engine sees in ``advseg predict``: each calibration image
goes through :meth:`advseg.inference.api.SegmentationModel.predict_volume` of the run (its
preprocessing, its ``inference.*`` settings: slab recipe or sliding window, flip TTA, slabs per
pass) with the engine replaced by a recorder that keeps every ``(1, C, Z, Y, X)`` sample it is
given and answers zero logits. So the slabs (or windows) are cut, preprocessed and flipped by the
same code as at prediction time, nothing re-implemented here. ``calibration_size`` samples are kept,
evenly spaced over all recorded ones (deterministic).

The first convolution (it sees the raw normalised intensities, whose int8 grid is the coarsest for
CT's range) and the classifier convolutions (their outputs are the logits whose argmax is the label
map) stay in floating point (``nncf.IgnoredScope``); everything else is int8.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from advseg.errors import InputError
from advseg.io import read_volume

DEFAULT_CALIBRATION_SIZE = 300  # nncf.quantize's own default subset_size


def require_nncf() -> Any:
    """Import ``nncf`` or raise :class:`InputError` saying how to install it."""
    try:
        import nncf
    except ImportError:
        raise InputError(None, "--int8 needs nncf: pip install -c constraints.txt 'advseg[int8]'") from None
    return nncf


def calibration_cases(run_dir: str | Path, calibration: str | Path | None,
                      in_channels: int) -> tuple[dict[str, list[Path]], str]:
    """The calibration images: ``case name -> channel files`` and a description of where from.

    ``calibration``: a folder of NIfTI images (``<case>.nii.gz`` or nnU-Net's ``<case>_0000.nii.gz``
    per channel). None: the run's own training images (its labeled, unlabeled and validation cases
    as ``dataset_info.json`` and the dataset folder it names record them, unlabeled images from
    ``--unlabeled`` folders outside it excepted; never its test cases).
    Every image is opened here, so a folder of files that are not images is refused before anything
    is written.
    """
    from advseg.inference.api import nifti_cases

    if calibration is not None:
        folder = Path(calibration)
        if not folder.is_dir():
            raise InputError(folder, "calibration folder not found (--calibration takes a folder of "
                                     "NIfTI images)")
        cases = nifti_cases(folder)
        if not cases:
            raise InputError(folder, "no NIfTI images (.nii.gz / .nii) in this calibration folder")
        where = str(folder.resolve())
    else:
        cases, where = _run_training_cases(Path(run_dir))
    for name, files in cases.items():
        if len(files) != in_channels:
            raise InputError(files[0], f"calibration case '{name}' has {len(files)} channel file(s), the "
                                       f"model needs {in_channels}")
        for f in files:
            vol = read_volume(f)  # InputError naming the file if it is not a readable image
            if vol.array.ndim != 3:
                raise InputError(f, f"expected a 3D image, got shape {tuple(vol.array.shape)}")
            if not np.isfinite(vol.array).all():
                raise InputError(f, "image contains NaN or Inf values")
    return cases, where


def _run_training_cases(run_dir: Path) -> tuple[dict[str, list[Path]], str]:
    from advseg.data.dataset import load_dataset

    info_path = run_dir / "dataset_info.json"
    hint = "; give --calibration DIR (a folder of NIfTI images like the ones to segment)"
    try:
        info = json.loads(info_path.read_text())
        root, selection = info["dataset"], info["cases"]
    except (OSError, KeyError, TypeError, json.JSONDecodeError):
        raise InputError(info_path, "no record of the run's training dataset" + hint) from None
    try:
        index = load_dataset(root, require_labels=False)
    except InputError as exc:
        raise InputError(root, f"the run's training dataset cannot be read ({exc.problem})" + hint) from None
    names = [n for key in ("labeled", "unlabeled_withheld", "unlabeled_extra", "val")
             for n in selection.get(key, [])]
    cases = {}
    for name in dict.fromkeys(names):
        try:
            cases[name] = list(index.case(name).images)
        except KeyError:
            continue
    if not cases:
        raise InputError(root, "none of the run's training cases is in its dataset folder" + hint)
    return cases, f"{Path(root).resolve()} (the run's training cases)"


class _Recorder(nn.Module):
    """Stands in for an engine: keeps every sample ``(1, C, Z, Y, X)`` float32 it is given, answers
    zero logits ``(B, K, Z, Y, X)``."""

    def __init__(self, size_divisor: int | None, out_channels: int) -> None:
        super().__init__()
        self._size_divisor = size_divisor
        self.out_channels = out_channels
        self.samples: list[np.ndarray] = []

    @property
    def size_divisor(self) -> int | None:
        return self._size_divisor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        array = x.detach().to("cpu", torch.float32).numpy()
        self.samples.extend(np.ascontiguousarray(array[i : i + 1]) for i in range(array.shape[0]))
        return torch.zeros((x.shape[0], self.out_channels, *x.shape[2:]), device=x.device)


def engine_inputs(model: Any, cases: Mapping[str, Sequence[Path]]) -> list[np.ndarray]:
    """Every network input ``(1, C, Z, Y, X)`` float32 that ``model.predict_volume`` (a
    :class:`~advseg.inference.api.SegmentationModel`) passes its engine for these cases."""
    engine = model.engine
    recorder = _Recorder(getattr(engine, "size_divisor", None), model.cfg.network.out_channels)
    model.engine = recorder
    try:
        for files in cases.values():
            vols = [read_volume(f) for f in files]
            model.predict_volume(vols if len(vols) > 1 else vols[0])
    finally:
        model.engine = engine
    return recorder.samples


def spread(samples: Sequence[Any], n: int) -> list[Any]:
    """``n`` of ``samples`` evenly spaced over the list (all of them if there are no more than ``n``)."""
    if n <= 0:
        raise InputError(None, f"--calibration-size must be at least 1, got {n}")
    if len(samples) <= n:
        return list(samples)
    return [samples[i] for i in np.linspace(0, len(samples) - 1, n).round().astype(int)]


def float_layers(ov_model: Any) -> list[str]:
    """Friendly names of the convolutions kept in floating point: the first one fed by the input and
    the last one(s) before the output (the classifier heads, found by walking back from the result
    through the non-convolution ops: the aux heads' upsampling and the weighted sum)."""
    ops = ov_model.get_ordered_ops()
    convs = [op for op in ops if op.get_type_name() == "Convolution"]
    if not convs:
        return []
    names = [convs[0].get_friendly_name()]
    stack = [r.input_value(0).get_node() for r in ov_model.get_results()]
    seen: set[str] = set()
    while stack:
        node = stack.pop()
        name = node.get_friendly_name()
        if name in seen or node.get_type_name() in ("Parameter", "Constant"):
            continue
        seen.add(name)
        if node.get_type_name() == "Convolution":
            names.append(name)
            continue
        stack.extend(node.input_value(i).get_node() for i in range(node.get_input_size()))
    return list(dict.fromkeys(names))


def quantize_openvino(model: Any, onnx_path: str | Path, cases: Mapping[str, Sequence[Path]],
                      calibration_size: int = DEFAULT_CALIBRATION_SIZE,
                      keep_float: bool = True) -> tuple[Any, dict[str, Any]]:
    """The run's ONNX graph as an int8 OpenVINO model, calibrated on ``cases``.

    ``model``: the run's :class:`~advseg.inference.api.SegmentationModel` (its preprocessing and
    ``inference.*`` settings give the calibration inputs, :func:`engine_inputs`). Returns the
    quantised ``openvino.Model`` (save it with :func:`advseg.inference.export.save_openvino`) and
    what the sidecar JSON records about it.
    """
    nncf = require_nncf()
    from advseg.inference.runtimes import require

    ov = require("openvino")
    samples = engine_inputs(model, cases)
    chosen = spread(samples, calibration_size)
    ov_model = ov.convert_model(str(onnx_path))
    kept = float_layers(ov_model) if keep_float else []
    quantized = nncf.quantize(
        ov_model, nncf.Dataset(chosen), preset=nncf.QuantizationPreset.MIXED, subset_size=len(chosen),
        ignored_scope=nncf.IgnoredScope(names=kept) if kept else None,
    )
    info = {
        "weights": "int8", "tool": f"nncf {nncf.__version__}", "preset": "mixed",
        "calibration_cases": len(cases), "calibration_samples": len(chosen),
        "calibration_samples_recorded": len(samples),
        "sample_shape": list(chosen[0].shape) if chosen else None,
        "float_layers": kept,
    }
    return quantized, info
