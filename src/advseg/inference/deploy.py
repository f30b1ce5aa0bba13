"""``advseg export``: a training run's segmenter as an ONNX or OpenVINO file for deployment.

    advseg export RUN --format onnx OUT.onnx        # or --format openvino OUT.xml (+ OUT.bin)

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
from advseg.inference.export import FORMATS, export_onnx, export_openvino
from advseg.inference.runtimes import require
from advseg.io.atomic import atomic_write_text
from advseg.io.guard import check_output_file, refuse_overlap


def export_run(run_dir: str | Path, out: str | Path, fmt: str = "onnx", checkpoint: str = "best",
               overwrite: bool = False) -> list[Path]:
    """Export the segmenter of a training run folder; returns the files written.

    ``fmt="onnx"``: ``out`` (``.onnx``). ``fmt="openvino"``: ``out`` (``.xml``) and the ``.bin``
    beside it. A ``<out>.json`` beside them records the run, checkpoint, label names, input channels
    and preprocessing the graph expects (the graph itself is the network only: preprocessing and the
    mapping back to the original geometry stay in ``advseg predict``).
    """
    if fmt not in FORMATS:
        raise InputError(None, f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    out = Path(out)
    want = ".onnx" if fmt == "onnx" else ".xml"
    if out.suffix != want:
        raise InputError(out, f"--format {fmt} writes a {want} file; name OUT *{want}")
    files = [out] + ([out.with_suffix(".bin")] if fmt == "openvino" else []) + [out.with_suffix(".json")]
    refuse_overlap(files, [], hosts=[run_dir])  # inside the run folder is fine (no .pt suffix)
    for f in files:
        check_output_file(f, overwrite)
    if fmt == "openvino":
            require("openvino")
    model = load_model(run_dir, checkpoint, device="cpu", engine="torch", precision="fp32")
    cfg = model.cfg
    if fmt == "onnx":
        export_onnx(model.source_net, out, cfg.network.in_channels)
    else:
        with tempfile.TemporaryDirectory(prefix="advseg-export-") as tmp:
            onnx_path = export_onnx(model.source_net, Path(tmp) / "model.onnx", cfg.network.in_channels)
            export_openvino(onnx_path, out)
    meta = {
        "run": str(Path(run_dir).resolve()), "checkpoint": checkpoint, "format": fmt,
        "input": "x (B, C, Z, Y, X) float32, preprocessed as data.* of the run's config.yaml",
        "output": "logits (B, K, Z, Y, X) float32 (no softmax)",
        "in_channels": cfg.network.in_channels, "out_channels": cfg.network.out_channels,
        "size_divisor": getattr(model.source_net, "size_divisor", None),
        "labels": {str(k): v for k, v in model.labels.items()},
        "data": cfg.to_dict()["data"],
    }
    atomic_write_text(out.with_suffix(".json"), json.dumps(meta, indent=2) + "\n")
    return files
