"""``advseg export`` and ``advseg predict --engine / --precision`` on a trained (tiny) run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from runtime_marks import needs_bf16, needs_ort, needs_ov, predict_labels
from typer.testing import CliRunner

from advseg.cli.main import app

runner = CliRunner()


@pytest.fixture(scope="module")
def fp32_labels(tiny_run: Path, tiny_phantom: Path, tmp_path_factory) -> dict[str, np.ndarray]:
    return predict_labels(tiny_run, tiny_phantom / "imagesTs", tmp_path_factory.mktemp("p") / "fp32",
                    "--precision", "fp32")


@needs_bf16
def test_bf16_precision_labels_close_to_fp32(tiny_run: Path, tiny_phantom: Path, tmp_path: Path,
                                             fp32_labels: dict[str, np.ndarray]) -> None:
    bf16 = predict_labels(tiny_run, tiny_phantom / "imagesTs", tmp_path / "bf16", "--precision", "bf16")
    assert bf16.keys() == fp32_labels.keys() and len(bf16) == 2
    same = np.mean([np.mean(bf16[k] == fp32_labels[k]) for k in bf16])
    assert same > 0.98  # 4-iteration model: small margins; trained models: benchmarks/inference_accuracy.py


def test_bf16_on_a_cpu_without_it_is_one_line_and_writes_nothing(tiny_run: Path, tiny_phantom: Path,
                                                                 tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from advseg.inference import engines

    monkeypatch.setattr(engines, "cpu_has_bf16", lambda: False)
    out = tmp_path / "bf16"
    res = runner.invoke(app, ["predict", str(tiny_run), str(tiny_phantom / "imagesTs"), str(out), "--device",
                              "cpu", "--precision", "bf16"])
    assert res.exit_code != 0 and "native bfloat16" in res.output
    assert "Traceback" not in res.output and not list(out.glob("*.nii.gz"))


@pytest.mark.parametrize("engine", [pytest.param("onnxruntime", marks=needs_ort),
                                    pytest.param("openvino", marks=needs_ov)])
def test_engine_labels_match_torch(engine: str, tiny_run: Path, tiny_phantom: Path, tmp_path: Path,
                                   fp32_labels: dict[str, np.ndarray]) -> None:
    labels = predict_labels(tiny_run, tiny_phantom / "imagesTs", tmp_path / engine, "--engine", engine,
                      "--precision", "fp32")
    assert labels.keys() == fp32_labels.keys()
    for k in labels:
        assert np.mean(labels[k] == fp32_labels[k]) >= 0.999


@needs_ort
def test_export_onnx_runs_in_onnxruntime(tiny_run: Path, tmp_path: Path) -> None:
    import onnxruntime as ort

    out = tmp_path / "model.onnx"
    res = runner.invoke(app, ["export", str(tiny_run), str(out), "--format", "onnx"])
    assert res.exit_code == 0, res.output
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["in_channels"] == 1 and meta["format"] == "onnx" and meta["labels"]
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    div = meta["size_divisor"]
    logits = sess.run(None, {"x": np.zeros((3, 1, 2 * div, div, 3 * div), np.float32)})[0]
    assert logits.shape == (3, meta["out_channels"], 2 * div, div, 3 * div)
    again = runner.invoke(app, ["export", str(tiny_run), str(out), "--format", "onnx"])
    assert again.exit_code == 2 and "error:" in again.output  # no silent overwrite


@needs_ov
def test_export_openvino_writes_xml_and_bin(tiny_run: Path, tmp_path: Path) -> None:
    import openvino as ov

    out = tmp_path / "ir" / "model.xml"
    out.parent.mkdir()
    res = runner.invoke(app, ["export", str(tiny_run), str(out), "--format", "openvino"])
    assert res.exit_code == 0, res.output
    assert out.with_suffix(".bin").stat().st_size > 1000
    assert sorted(p.name for p in out.parent.iterdir()) == ["model.bin", "model.json", "model.xml"]
    compiled = ov.Core().compile_model(str(out), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    div = json.loads(out.with_suffix(".json").read_text())["size_divisor"]
    y = compiled(np.zeros((1, 1, div, div, div), np.float32))[compiled.output(0)]
    assert y.shape[2:] == (div, div, div)


def test_export_bad_format_and_suffix_are_one_line_errors(tiny_run: Path, tmp_path: Path) -> None:
    res = runner.invoke(app, ["export", str(tiny_run), str(tmp_path / "m.onnx"), "--format", "tflite"])
    assert res.exit_code == 2 and "format" in res.output and "Traceback" not in res.output
    res = runner.invoke(app, ["export", str(tiny_run), str(tmp_path / "m.xml"), "--format", "onnx"])
    assert res.exit_code == 2 and ".onnx" in res.output
    assert not list(tmp_path.iterdir())
