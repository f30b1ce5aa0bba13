"""``advseg export --format openvino --int8`` (NNCF post-training quantisation) on a trained tiny run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from runtime_marks import needs_nncf, predict_labels
from typer.testing import CliRunner

from advseg.cli.main import app
from advseg.io import read_volume

runner = CliRunner()


@pytest.fixture(scope="module")
def int8_ir(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny run's int8 IR, calibrated on the run's own training cases (the default)."""
    out = tmp_path_factory.mktemp("int8") / "model.xml"
    res = runner.invoke(app, ["export", str(tiny_run), str(out), "--format", "openvino", "--int8",
                              "--calibration-size", "16"])
    assert res.exit_code == 0, res.output
    return out


@needs_nncf
def test_int8_sidecar_records_int8_and_calibration(int8_ir: Path, tiny_run: Path) -> None:
    meta = json.loads(int8_ir.with_suffix(".json").read_text())
    assert meta["precision"] == "int8" and meta["format"] == "openvino"
    q = meta["int8"]
    # the tiny run's labeled, unlabeled and validation cases of imagesTr (never the 2 test cases),
    # each cut into the 16-slice slabs the engine sees
    splits = json.loads((tiny_run / "splits.json").read_text())
    names = {n for k in ("labeled", "unlabeled_withheld", "unlabeled_extra", "val") for n in splits[k]}
    assert q["calibration_cases"] == len(names) and "training cases" in q["calibration"]
    recorded = q["calibration_samples_recorded"]
    assert recorded >= 2 * len(names) and q["calibration_samples"] == min(16, recorded)
    assert q["sample_shape"][:3] == [1, 1, 16]
    assert len(q["float_layers"]) >= 2  # the first convolution and at least the main classifier
    assert sorted(p.name for p in int8_ir.parent.iterdir()) == ["model.bin", "model.json", "model.xml"]


@needs_nncf
def test_int8_ir_has_quantized_layers(int8_ir: Path) -> None:
    import openvino as ov

    model = ov.Core().read_model(str(int8_ir))
    types = [op.get_type_name() for op in model.get_ordered_ops()]
    assert types.count("FakeQuantize") >= 4  # activations quantised around the int8 convolutions
    assert any(c.get_element_type() == ov.Type.i8 for c in model.get_ordered_ops()
               if c.get_type_name() == "Constant")  # weights stored as int8


@needs_nncf
def test_int8_predict_agrees_with_torch_fp32(int8_ir: Path, tiny_run: Path, tiny_phantom: Path,
                                             tmp_path: Path) -> None:
    ref = predict_labels(tiny_run, tiny_phantom / "imagesTs", tmp_path / "fp32", "--precision", "fp32")
    int8 = predict_labels(tiny_run, tiny_phantom / "imagesTs", tmp_path / "int8", "--engine", "openvino",
                    "--engine-file", str(int8_ir), "--precision", "fp32")
    assert int8.keys() == ref.keys() and len(int8) == 2
    same = np.mean([np.mean(int8[k] == ref[k]) for k in int8])
    # 95 %: a 4-iteration model's logits are near ties over much of the volume, so int8 rounding
    # (~1/255 of an activation range per layer) flips more voxels than on a trained model; what a
    # trained S-net loses is measured by benchmarks/inference_accuracy.py (docs/inference.md).
    # A broken calibration (wrong preprocessing, ranges from zeros) gives far below this.
    assert same >= 0.95
    # The 4-iteration model labels nearly every voxel background, so the label bound alone is weak;
    # the logits show that the IR is really quantised (they differ) yet close to float32's (within
    # 5 % of their range; measured ~1 %): ranges from a wrong calibration set are far off that.
    from advseg.inference.api import load_model

    ref_model = load_model(tiny_run, device="cpu", precision="fp32")
    ov_model = load_model(tiny_run, device="cpu", engine="openvino", engine_file=int8_ir, precision="fp32")
    image = sorted((tiny_phantom / "imagesTs").glob("*.nii.gz"))[0]
    x = torch.from_numpy(ref_model.preprocessor.forward(read_volume(image)).image).unsqueeze(0)
    a, b = ref_model.logits(x), ov_model.logits(x)
    diff = float((a - b).abs().max())
    assert 1e-5 < diff < 0.05 * float(a.max() - a.min())


def test_calibration_folder_gives_the_slabs_predict_feeds_the_engine(tiny_run: Path,
                                                                     tiny_phantom: Path) -> None:
    from advseg.inference.api import load_model
    from advseg.inference.quantize import calibration_cases, engine_inputs, spread

    cases, where = calibration_cases(tiny_run, tiny_phantom / "imagesTs", 1)
    assert sorted(cases) == ["phantom_t000", "phantom_t001"]
    assert where == str((tiny_phantom / "imagesTs").resolve())
    model = load_model(tiny_run, device="cpu", precision="fp32")
    samples = engine_inputs(model, cases)
    # what predict_volume hands the engine: the preprocessed volume cut into 16-slice slabs
    x = model.preprocessor.forward(read_volume(cases["phantom_t000"][0])).image  # (C, Z, Y, X)
    slab = model.cfg.data.patch_size[0]
    per_case = (x.shape[1] // slab) * (2 if model.cfg.inference.tta_flip else 1)
    assert len(samples) == 2 * per_case
    np.testing.assert_array_equal(samples[0][0], x[:, :slab])
    assert model.engine is not None and type(model.engine).__name__ == "TorchEngine"  # put back
    assert len(spread(samples, 3)) == 3 and spread(samples, 3)[0] is samples[0]


@needs_nncf
@pytest.mark.parametrize("problem", ["missing", "empty", "not_images", "onnx", "no_int8", "size"])
def test_int8_bad_input_is_refused_with_nothing_written(problem: str, tiny_run: Path, tmp_path: Path) -> None:
    cal = tmp_path / "cal"
    if problem != "missing":
        cal.mkdir()
    if problem == "not_images":
        (cal / "case_000.nii.gz").write_bytes(b"this is not a NIfTI file at all")
    out = tmp_path / "out" / ("model.onnx" if problem == "onnx" else "model.xml")
    args = ["export", str(tiny_run), str(out), "--format", "onnx" if problem == "onnx" else "openvino",
            *([] if problem == "no_int8" else ["--int8"]), "--calibration", str(cal)]
    if problem == "size":
        args += ["--calibration-size", "0"]
    res = runner.invoke(app, args)
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in res.output
    expect = {"missing": "not found", "empty": "no NIfTI", "not_images": "case_000", "onnx": "--int8",
              "no_int8": "--int8", "size": "calibration-size"}[problem]
    assert expect in lines[0]
    assert not (tmp_path / "out").exists()


@needs_nncf
def test_engine_file_for_another_model_is_refused(int8_ir: Path, tiny_run: Path, tiny_phantom: Path,
                                                  tmp_path: Path) -> None:
    ir = tmp_path / "other" / "model.xml"
    ir.parent.mkdir()
    for suffix in (".xml", ".bin"):
        ir.with_suffix(suffix).write_bytes(int8_ir.with_suffix(suffix).read_bytes())
    meta = json.loads(int8_ir.with_suffix(".json").read_text())
    ir.with_suffix(".json").write_text(json.dumps({**meta, "out_channels": meta["out_channels"] + 1}))
    res = runner.invoke(app, ["predict", str(tiny_run), str(tiny_phantom / "imagesTs"), str(tmp_path / "p"),
                              "--device", "cpu", "--engine", "openvino", "--engine-file", str(ir)])
    assert res.exit_code == 2 and "out_channels" in res.output
    assert not (tmp_path / "p").exists()
