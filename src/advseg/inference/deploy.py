"""``advseg export``: a training run's segmenter as an ONNX or OpenVINO file for deployment.

    advseg export RUN --format onnx OUT.onnx        # or --format openvino OUT.xml (+ OUT.bin)
    advseg export RUN --format openvino --int8 [--calibration DIR] OUT.xml   # int8 weights/activations

The graph itself is written by :mod:`advseg.inference.export`; this module adds the run folder
(its model and checkpoint, through :func:`advseg.inference.api.load_model`), the output checks of
:mod:`advseg.io.guard` and the ``<OUT>.json`` that records what the graph expects.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from advseg.errors import InputError
from advseg.inference.api import load_model
from advseg.inference.export import FORMATS, export_onnx, export_openvino, save_openvino
from advseg.inference.runtimes import require
from advseg.io.atomic import atomic_write_text
from advseg.io.guard import check_output_file, refuse_overlap


def export_run(run_dir: str | Path, out: str | Path, fmt: str = "onnx", checkpoint: str = "best",
               overwrite: bool = False, int8: bool = False, calibration: str | Path | None = None,
               calibration_size: int | None = None, keep_float: bool = True) -> list[Path]:
    """Export the segmenter of a training run folder; returns the files written.

    ``fmt="onnx"``: ``out`` (``.onnx``). ``fmt="openvino"``: ``out`` (``.xml``) and the ``.bin``
    beside it. A ``<out>.json`` beside them records the run, checkpoint, label names, input channels
    and preprocessing the graph expects (the graph itself is the network only: preprocessing and the
    mapping back to the original geometry stay in ``advseg predict``).

    ``int8`` (OpenVINO only): post-training int8 quantisation with NNCF
    (:mod:`advseg.inference.quantize`), calibrated on the NIfTI images of the folder ``calibration``
    (default: the run's own training cases), ``calibration_size`` network inputs (slabs or windows,
    default 300) at most; ``keep_float=False`` quantises the first convolution and the classifier
    heads too (:func:`advseg.inference.quantize.quantize_openvino`). Every calibration image is read
    and checked before anything is written.
    """
    if fmt not in FORMATS:
        raise InputError(None, f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    out = Path(out)
    want = ".onnx" if fmt == "onnx" else ".xml"
    if out.suffix != want:
        raise InputError(out, f"--format {fmt} writes a {want} file; name OUT *{want}")
    if calibration_size is not None and calibration_size < 1:
        raise InputError(None, f"--calibration-size must be at least 1, got {calibration_size}")
    if (calibration is not None or calibration_size is not None) and not int8:
        raise InputError(None, "--calibration / --calibration-size only go with --int8")
    if int8 and fmt != "openvino":
        raise InputError(None, "--int8 is for --format openvino (NNCF quantisation for OpenVINO's CPU "
                               "plugin); ONNX int8 is not supported")
    files = [out] + ([out.with_suffix(".bin")] if fmt == "openvino" else []) + [out.with_suffix(".json")]
    refuse_overlap(files, [], hosts=[run_dir])  # inside the run folder is fine (no .pt suffix)
    for f in files:
        check_output_file(f, overwrite)
    if fmt == "openvino":
        require("openvino")
    if int8:
        from advseg.inference import quantize

        quantize.require_nncf()
    model = load_model(run_dir, checkpoint, device="cpu", engine="torch", precision="fp32")
    cfg = model.cfg
    quant: dict | None = None
    if int8:
        cases, where = quantize.calibration_cases(run_dir, calibration, cfg.network.in_channels)
        if calibration is not None:
            refuse_overlap(files, [calibration])
    if fmt == "onnx":
        export_onnx(model.source_net, out, cfg.network.in_channels)
    else:
        with tempfile.TemporaryDirectory(prefix="advseg-export-") as tmp:
            onnx_path = export_onnx(model.source_net, Path(tmp) / "model.onnx", cfg.network.in_channels)
            if int8:
                size = quantize.DEFAULT_CALIBRATION_SIZE if calibration_size is None else calibration_size
                ov_model, quant = quantize.quantize_openvino(model, onnx_path, cases, size, keep_float)
                quant["calibration"] = where
                save_openvino(ov_model, out)
            else:
                export_openvino(onnx_path, out)
    meta = {
        "run": str(Path(run_dir).resolve()), "checkpoint": checkpoint, "format": fmt,
        "input": "x (B, C, Z, Y, X) float32, preprocessed as data.* of the run's config.yaml",
        "output": "logits (B, K, Z, Y, X) float32 (no softmax)",
        "in_channels": cfg.network.in_channels, "out_channels": cfg.network.out_channels,
        "size_divisor": getattr(model.source_net, "size_divisor", None),
        "labels": {str(k): v for k, v in model.labels.items()},
        "data": cfg.to_dict()["data"],
        "inference": cfg.to_dict()["inference"],
        "precision": "int8" if int8 else "fp32",
    }
    if quant is not None:
        meta["int8"] = quant
    atomic_write_text(out.with_suffix(".json"), json.dumps(meta, indent=2) + "\n")
    return files
