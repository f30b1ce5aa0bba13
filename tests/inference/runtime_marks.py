"""Skip marks for the optional CPU runtimes, and the CLI prediction helper, shared by the engine,
export and int8 tests of this folder."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from advseg.cli.main import app
from advseg.inference.engines import cpu_has_bf16
from advseg.io import read_volume

runner = CliRunner()


def predict_labels(run: Path, images: Path, out: Path, *extra: str) -> dict[str, np.ndarray]:
    """``advseg predict RUN IMAGES OUT --device cpu EXTRA...``; the label maps written, by file name."""
    res = runner.invoke(app, ["predict", str(run), str(images), str(out), "--device", "cpu", *extra])
    assert res.exit_code == 0, res.output
    return {p.name: read_volume(p).array for p in sorted(out.glob("*.nii.gz"))}

needs_ort = pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None
                               or importlib.util.find_spec("onnxscript") is None,
                               reason="onnxruntime / onnxscript not installed (pip install 'advseg[onnx]')")
needs_ov = pytest.mark.skipif(importlib.util.find_spec("openvino") is None
                              or importlib.util.find_spec("onnxscript") is None,
                              reason="openvino / onnxscript not installed (pip install 'advseg[openvino]')")
needs_nncf = pytest.mark.skipif(importlib.util.find_spec("openvino") is None
                                or importlib.util.find_spec("onnxscript") is None
                                or importlib.util.find_spec("nncf") is None,
                                reason="openvino / onnxscript / nncf not installed "
                                       "(pip install 'advseg[int8]')")
needs_bf16 = pytest.mark.skipif(not cpu_has_bf16(), reason="this CPU has no native bf16 (AVX512-BF16 or AMX)")
