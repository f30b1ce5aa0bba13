"""The ``advseg`` command: a thin layer over the Python API.

Every command catches :class:`advseg.errors.InputError` and prints it as one line per problem,
``error: <file>: <problem>``, exits with status 2 and never shows a traceback for bad input.

Each command imports what it runs inside its function, not at the top: that keeps torch, monai,
scipy and matplotlib out of the start-up of ``advseg --help`` and of the commands that need none of
them (the only function-local advseg imports in this package, and the reason for them).
"""

from __future__ import annotations

import os
import sys

# How long idle OpenMP (libgomp) threads spin before they sleep. The default (300k spins) is fastest
# alone but, with anything else running on a 2-core machine, made training steps 3-10x slower
# (two 60-step runs side by side: 3.15 s a step each at 100k spins, 1.2 s at 10k); always sleeping
# (OMP_WAIT_POLICY=PASSIVE) cost 35 % alone (0.69 vs 0.51 s a step; 10k spins: 0.60 s). A user's
# own OMP_WAIT_POLICY / GOMP_SPINCOUNT win. Must be set before torch's OpenMP runtime is loaded.
if "OMP_WAIT_POLICY" not in os.environ:
    os.environ.setdefault("GOMP_SPINCOUNT", "10000")
from pathlib import Path
from typing import Annotated

import typer

from advseg.cli.common import command_app, fail
from advseg.cli.experiment import experiment, report
from advseg.cli.synthesize import app as synthesis_app
from advseg.errors import InputError

app = command_app(
    "Semi-supervised adversarial 3D segmentation: phantom data, training, prediction, evaluation.",
    name="advseg",
)


@app.command()
def phantom(
    out: Annotated[Path, typer.Argument(help="Dataset folder to create (MSD layout).")],
    labeled: Annotated[int, typer.Option(help="Labeled training cases (imagesTr/labelsTr).")] = 12,
    unlabeled: Annotated[int, typer.Option(help="Unlabeled cases (imagesUnlabeled/, no labels).")] = 24,
    test: Annotated[int, typer.Option(help="Test cases (imagesTs/ with labelsTs/).")] = 6,
    shape: Annotated[tuple[int, int, int], typer.Option(help="Volume shape Z Y X.")] = (64, 128, 128),
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same data).")] = 0,
) -> None:
    """Write a synthetic male-pelvis CT dataset (HU, 6 classes) in MSD / nnU-Net layout."""
    from advseg.data.phantom import write_phantom_dataset

    try:
        write_phantom_dataset(out, labeled=labeled, unlabeled=unlabeled, test=test, shape=shape, seed=seed)
    except InputError as exc:
        fail(exc)
    typer.echo(f"wrote {labeled} labeled, {unlabeled} unlabeled and {test} test cases to {out}")


@app.command()
def validate(
    dataset: Annotated[Path, typer.Argument(help="Dataset folder (MSD or nnU-Net v2 raw layout).")],
    unlabeled: Annotated[
        list[Path] | None, typer.Option(help="Extra folder(s) of unlabeled images to check too.")
    ] = None,
) -> None:
    """Check a dataset folder before anything is trained; one line per problem."""
    from advseg.data.dataset import load_dataset
    from advseg.data.validate import validate_dataset

    try:
        index = load_dataset(dataset, unlabeled_dirs=unlabeled)
        warnings = validate_dataset(index)
    except InputError as exc:
        fail(exc)
    for w in warnings:
        typer.echo(f"warning: {w}", err=True)
    typer.echo(
        f"{dataset}: OK ({len(index.training)} labeled, {len(index.unlabeled)} unlabeled, "
        f"{len(index.test)} test cases; classes {index.labels})"
    )


@app.command("import-dicom")
def import_dicom(
    dicom_root: Annotated[
        Path, typer.Argument(help="Folder tree of CT series and RTSTRUCT files (TPS export).")
    ],
    out_dataset: Annotated[Path, typer.Argument(help="Dataset folder to create (MSD layout).")],
    structures: Annotated[
        str | None,
        typer.Option(help='ROI=label pairs, e.g. "Prostate=prostate,Bladder=bladder" (labels numbered '
                          "in this order; default: prostate, bladder, rectum, left_femur, right_femur, "
                          "found via synonyms)."),
    ] = None,
    synonyms: Annotated[
        Path | None, typer.Option(help="YAML/JSON {label: [ROI names]} extending the built-in synonym table.")
    ] = None,
    keep_patient_id: Annotated[
        bool, typer.Option(help="Name cases <PatientID>_NNN (default case_NNN: no patient identifier).")
    ] = False,
    resample: Annotated[
        bool, typer.Option(help="Interpolate series with a missing slice or uneven spacing (warning) "
                                "instead of refusing them.")
    ] = False,
) -> None:
    """Convert planning CTs (DICOM series) and their RTSTRUCT contours into a training dataset."""
    from advseg.data.import_dicom import import_dicom as run_import

    try:
        result = run_import(dicom_root, out_dataset, structures=structures, synonyms=synonyms,
                            keep_patient_id=keep_patient_id, resample=resample)
    except InputError as exc:
        fail(exc)
    for w in result.warnings:
        typer.echo(f"warning: {w}", err=True)
    classes = ", ".join(f"{k} {v}" for k, v in result.labels.items())
    typer.echo(f"wrote {len(result.labeled)} labeled and {len(result.unlabeled)} unlabeled cases to "
               f"{out_dataset} (labels: {classes})")


@app.command()
def train(
    data: Annotated[Path, typer.Option(help="Labeled dataset folder.")],
    out: Annotated[Path, typer.Option(help="Run folder to write (config, checkpoints, logs).")],
    unlabeled: Annotated[list[Path] | None, typer.Option(help="Folder(s) of unlabeled images.")] = None,
    preset: Annotated[str | None, typer.Option(help="Preset(s), e.g. res_unet_aux_adv_semi+cpu.")] = None,
    config: Annotated[Path | None, typer.Option(help="YAML config file.")] = None,
    iterations: Annotated[int | None, typer.Option(help="Override train.iterations.")] = None,
    resume: Annotated[bool, typer.Option(help="Continue the run in --out exactly where it stopped.")] = False,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Override a key, e.g. --set train.batch_size=4.")
    ] = None,
) -> None:
    """Train a segmenter (supervised, adversarial or semi-supervised, per the config)."""
    from advseg.config import build_config
    from advseg.training import distributed
    from advseg.training.api import train_run

    try:
        overrides = list(set_ or [])
        if iterations is not None:
            overrides.append(f"train.iterations={iterations}")
        saved = out / "config.yaml"
        if resume and preset is None and config is None:  # the run's own config (+ any --set)
            cfg = build_config(None, None, overrides, base=saved) if overrides and saved.is_file() else None
        else:
            cfg = build_config(preset, config, overrides)
        train_run(cfg, data=data, out=out, unlabeled=unlabeled or [], resume=resume)
    except InputError as exc:
        fail(exc)
    distributed.shutdown()  # under torchrun: leave the process group together


@app.command()
def predict(
    model_dir: Annotated[Path, typer.Argument(help="Training run folder.")],
    input: Annotated[Path, typer.Argument(help="A NIfTI file, a folder of them, or a DICOM folder.")],
    output: Annotated[Path, typer.Argument(help="Output file (for one input) or folder.")],
    mode: Annotated[str | None, typer.Option(help="slabs | sliding_window (default: from config).")] = None,
    tta: Annotated[bool | None, typer.Option(help="Flip test-time augmentation.")] = None,
    keep_largest: Annotated[bool | None, typer.Option(help="Keep the largest component per class.")] = None,
    checkpoint: Annotated[str, typer.Option(help="best | last")] = "best",
    save_confidence: Annotated[
        bool, typer.Option(help="Also write D's confidence map per case (into OUTPUT's confidence/ folder).")
    ] = False,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = "auto",
    rtstruct: Annotated[
        bool, typer.Option(help="DICOM input: also write <case>_RTSTRUCT.dcm per series (for the TPS).")
    ] = False,
    dicom_seg: Annotated[
        bool, typer.Option(help="DICOM input: also write <case>_SEG.dcm, a DICOM Segmentation (for PACS).")
    ] = False,
    resample: Annotated[
        bool, typer.Option(help="DICOM input: interpolate series with a missing slice or uneven spacing.")
    ] = False,
    overwrite: Annotated[bool, typer.Option(
        help="Write into an OUTPUT folder that holds other files, or replace an OUTPUT file.")] = False,
    engine: Annotated[str, typer.Option(
        help="torch | onnxruntime | openvino (the last two: CPU, optional extras; docs/inference.md)."),
    ] = "torch",
    precision: Annotated[str | None, typer.Option(
        help="auto | fp32 | bf16 (default: inference.precision of the run, auto = bf16 on CPUs with "
             "native bf16).")] = None,
    engine_file: Annotated[Path | None, typer.Option(
        help="An `advseg export` file of this run for --engine onnxruntime (.onnx) or openvino "
             "(.onnx / .xml, e.g. the --int8 IR), run instead of exporting the checkpoint.")] = None,
) -> None:
    """Segment images with a trained model; labels come out in each input's original geometry.

    INPUT may be a NIfTI file, a folder of them, or a folder tree of DICOM CT series.
    OUTPUT may never be, contain or lie inside INPUT (refused before anything is read)."""
    from advseg.inference.api import predict_path

    try:
        predict_path(
            model_dir, input, output, mode=mode, tta=tta, keep_largest=keep_largest,
            checkpoint=checkpoint, save_confidence=save_confidence, device=device, overwrite=overwrite,
            rtstruct=rtstruct, dicom_seg=dicom_seg, resample=resample, engine=engine, precision=precision,
            engine_file=engine_file,
        )
    except InputError as exc:
        fail(exc)


@app.command()
def export(
    model_dir: Annotated[Path, typer.Argument(help="Training run folder.")],
    out: Annotated[Path, typer.Argument(help="File to write: *.onnx (onnx) or *.xml (+ .bin, openvino).")],
    format: Annotated[str, typer.Option("--format", help="onnx | openvino")] = "onnx",
    checkpoint: Annotated[str, typer.Option(help="best | last")] = "best",
    overwrite: Annotated[bool, typer.Option(help="Replace existing OUT files.")] = False,
    int8: Annotated[bool, typer.Option(
        "--int8", help="openvino: int8 post-training quantisation with NNCF (the int8 extra).")] = False,
    calibration: Annotated[Path | None, typer.Option(
        help="--int8: folder of NIfTI images to calibrate on (default: the run's training cases).")] = None,
    calibration_size: Annotated[int | None, typer.Option(
        help="--int8: network inputs (slabs / windows) to calibrate on, at most (default 300).")] = None,
) -> None:
    """Export the run's segmenter (batch norm folded, float32, dynamic sizes) for ONNX Runtime or
    OpenVINO (optionally int8); a <OUT>.json beside it records the labels and preprocessing it
    expects. Run it with `advseg predict RUN ... --engine openvino --engine-file OUT.xml`."""
    from advseg.inference.deploy import export_run

    try:
        files = export_run(model_dir, out, format, checkpoint=checkpoint, overwrite=overwrite, int8=int8,
                           calibration=calibration, calibration_size=calibration_size)
    except InputError as exc:
        fail(exc)
    typer.echo("wrote " + ", ".join(str(f) for f in files))


@app.command()
def evaluate(
    pred_dir: Annotated[Path, typer.Argument(help="Folder of predicted label files.")],
    label_dir: Annotated[Path, typer.Argument(help="Folder of ground-truth label files (same names).")],
    out: Annotated[Path | None, typer.Option(help="Where to write per_case.csv, summary.md/json.")] = None,
    dataset_json: Annotated[Path | None, typer.Option(help="dataset.json naming the classes.")] = None,
    nsd_tolerance: Annotated[float, typer.Option(help="Normalized surface Dice tolerance (mm).")] = 2.0,
    overwrite: Annotated[bool, typer.Option(help="Write into an --out folder holding other files.")] = False,
) -> None:
    """Per-case and per-organ metrics (DSC, AHD, ASHD, RVD, HD95, NSD, ...) of predictions vs labels."""
    from advseg.evaluation.evaluate import evaluate_folders, format_summary

    try:
        summary = evaluate_folders(
            pred_dir, label_dir, out or pred_dir.parent / f"{pred_dir.name}_eval",
            dataset_json=dataset_json, nsd_tolerance_mm=nsd_tolerance, overwrite=overwrite,
        )
    except InputError as exc:
        fail(exc)
    typer.echo(format_summary(summary, nsd_tolerance_mm=nsd_tolerance))


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Run folder.")] = Path("runs/demo"),
    method: Annotated[
        list[str] | None,
        typer.Option(help="Method preset(s), repeatable (default: res_unet_aux, the supervised S-net)."),
    ] = None,
    synthetic: Annotated[int, typer.Option(help="Add N GAN-synthesized volumes to the unlabeled pool.")] = 0,
    iterations: Annotated[int | None, typer.Option(help="Override the CPU preset's iterations.")] = None,
    seed: Annotated[int, typer.Option(help="Seed for data and training.")] = 0,
) -> None:
    """Phantom data -> train -> predict -> evaluate, on the CPU, in minutes."""
    from advseg.experiments.demo import run_demo

    try:
        run_demo(out, method=method, synthetic=synthetic, iterations=iterations, seed=seed)
    except InputError as exc:
        fail(exc)


app.command()(experiment)
app.command()(report)


app.add_typer(synthesis_app, name="synthesize", help="3D progressive-growing GAN: train, sample, report.")


def main() -> None:
    try:
        app()
    except InputError as exc:  # a command that forgot to catch; still one line, no traceback
        for line in exc.one_line().splitlines():
            print(f"error: {line}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
