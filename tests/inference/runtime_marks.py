"""Skip marks for the optional CPU runtimes (shared by the engine and export tests of this folder)."""

from __future__ import annotations

import importlib.util

import pytest

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
