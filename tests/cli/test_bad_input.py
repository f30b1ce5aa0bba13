"""The bad-input suite: malformed files, configs, datasets, checkpoints, run folders and outputs.

Every case builds its inputs under ``tmp_path`` (copies of the tiny phantom dataset and of a tiny
trained run), hashes every file there, runs one ``advseg`` command and checks the promise of
:mod:`advseg.errors`: exit status 2, exactly one line on stderr, ``error: <file or key>: <problem>``,
no traceback, and every file under ``tmp_path`` byte-identical afterwards with nothing added
(no new file or folder anywhere, the output location included).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from advseg.cli.main import app

runner = CliRunner()
REPO = Path(__file__).resolve().parents[2]


@dataclass
class Ctx:
    """What a case builds on: its own copies of the dataset and of a trained run."""

    tmp: Path
    data: Path
    run: Path
    request: pytest.FixtureRequest
    cleanup: list[Callable[[], None]] = field(default_factory=list)

    def img(self, case: str = "phantom_001") -> Path:
        return self.data / "imagesTr" / f"{case}.nii.gz"

    def lbl(self, case: str = "phantom_001") -> Path:
        return self.data / "labelsTr" / f"{case}.nii.gz"

    def train(self, *extra: str, preset: str = "res_unet+tiny") -> list[str]:
        args = ["train", "--data", str(self.data), "--out", str(self.tmp / "newrun")]
        return [*args, "--preset", preset, *extra] if preset else [*args, *extra]

    def predict(self, images: Path | None = None, out: Path | None = None) -> list[str]:
        images = images or self.data / "imagesTs"
        return ["predict", str(self.run), str(images), str(out or self.tmp / "pred")]


# A case: (build(ctx) -> CLI args, text the error line must name, text of the problem).
CASES: dict[str, tuple[Callable[[Ctx], list[str]], Callable[[Ctx], str], str]] = {}


def case(name: str, names: Callable[[Ctx], str], problem: str):
    def register(build: Callable[[Ctx], list[str]]) -> Callable[[Ctx], list[str]]:
        assert name not in CASES
        CASES[name] = (build, names, problem)
        return build

    return register


def _save(path: Path, array: np.ndarray, affine: np.ndarray | None = None) -> None:
    """Write a NIfTI (array in file order x, y, z) the way a user's tool would (plain nibabel)."""
    nib.save(nib.Nifti1Image(array, np.eye(4) if affine is None else affine), str(path))


def _array(path: Path) -> tuple[np.ndarray, np.ndarray]:
    img = nib.load(str(path))
    return np.asarray(img.dataobj).copy(), img.affine


# ------------------------------------------------------------------------------ image and label files
@case("corrupt_gzip", lambda c: str(c.img()), "cannot read NIfTI")
def _(c: Ctx) -> list[str]:
    c.img().write_bytes(gzip.compress(b"\x00" * 64)[:10] + os.urandom(300))
    return ["validate", str(c.data)]


@case("truncated_nifti", lambda c: str(c.img()), "cannot read NIfTI")
def _(c: Ctx) -> list[str]:
    raw = c.img().read_bytes()
    c.img().write_bytes(raw[: len(raw) // 2])
    return ["validate", str(c.data)]


@case("volume_2d", lambda c: str(c.img()), "expected a 3D image")
def _(c: Ctx) -> list[str]:
    _save(c.img(), np.random.default_rng(0).normal(size=(64, 64)).astype(np.float32))
    return ["validate", str(c.data)]


@case("volume_4d", lambda c: str(c.img()), "expected a 3D image")
def _(c: Ctx) -> list[str]:
    arr, aff = _array(c.img())
    _save(c.img(), np.stack([arr, arr], axis=-1), aff)
    return ["validate", str(c.data)]


@case("label_shape_mismatch", lambda c: str(c.lbl()), "shape (z, y, x)")
def _(c: Ctx) -> list[str]:
    arr, aff = _array(c.lbl())
    _save(c.lbl(), arr[:, :, :16], aff)
    return ["validate", str(c.data)]


@case("label_affine_mismatch", lambda c: str(c.lbl()), "spacing (z, y, x)")
def _(c: Ctx) -> list[str]:
    arr, aff = _array(c.lbl())
    aff = aff.copy()
    aff[:3, :3] *= 1.5
    _save(c.lbl(), arr, aff)
    return ["validate", str(c.data)]


@case("label_origin_mismatch", lambda c: str(c.lbl()), "origin")
def _(c: Ctx) -> list[str]:
    arr, aff = _array(c.lbl())
    aff = aff.copy()
    aff[:3, 3] += 7.0
    _save(c.lbl(), arr, aff)
    return ["validate", str(c.data)]


@case("label_values_outside_classes", lambda c: str(c.lbl()), "label values 9 are not declared classes")
def _(c: Ctx) -> list[str]:
    arr, aff = _array(c.lbl())
    arr[0, 0, 0] = 9
    _save(c.lbl(), arr, aff)
    return ["validate", str(c.data)]


@case("label_non_integer", lambda c: str(c.lbl()), "non-integer values")
def _(c: Ctx) -> list[str]:
    arr, aff = _array(c.lbl())
    arr = arr.astype(np.float32)
    arr[0, 0, 0] = 0.5
    _save(c.lbl(), arr, aff)
    return ["validate", str(c.data)]


@case("nan_voxels", lambda c: str(c.img()), "NaN")
def _(c: Ctx) -> list[str]:
    arr, aff = _array(c.img())
    arr = arr.astype(np.float32)
    arr[3, 4, 5] = np.nan
    _save(c.img(), arr, aff)
    return ["validate", str(c.data)]


@case("inf_voxels", lambda c: str(c.img()), "1 Inf voxels")
def _(c: Ctx) -> list[str]:
    arr, aff = _array(c.img())
    arr = arr.astype(np.float32)
    arr[3, 4, 5] = np.inf
    _save(c.img(), arr, aff)
    return ["validate", str(c.data)]


@case("constant_image", lambda c: str(c.img()), "image is constant")
def _(c: Ctx) -> list[str]:
    arr, aff = _array(c.img())
    _save(c.img(), np.zeros_like(arr), aff)
    return ["validate", str(c.data)]


@case("empty_label_file", lambda c: str(c.lbl()), "file is empty")
def _(c: Ctx) -> list[str]:
    c.lbl().write_bytes(b"")
    return ["validate", str(c.data)]


@case("empty_label_map", lambda c: str(c.lbl()), "expected a 3D image, got shape")
def _(c: Ctx) -> list[str]:
    _save(c.lbl(), np.zeros((0,), dtype=np.uint8))  # a label map without a single voxel
    return ["validate", str(c.data)]


@case("missing_label_file", lambda c: str(c.img()), "no label file")
def _(c: Ctx) -> list[str]:
    c.lbl().unlink()
    return ["validate", str(c.data)]


@case("missing_image_file", lambda c: str(c.lbl()), "label without an image")
def _(c: Ctx) -> list[str]:
    c.img().unlink()
    return ["validate", str(c.data)]


@case("predict_image_missing", lambda c: str(c.tmp / "nothere.nii.gz"), "not found")
def _(c: Ctx) -> list[str]:
    return c.predict(images=c.tmp / "nothere.nii.gz")


@case("predict_broken_image", lambda c: str(c.data / "imagesTs" / "phantom_t000.nii.gz"), "cannot read NIfTI")
def _(c: Ctx) -> list[str]:
    (c.data / "imagesTs" / "phantom_t000.nii.gz").write_bytes(b"not a nifti file at all")
    return c.predict()


@case("predict_nan_image", lambda c: str(c.data / "imagesTs" / "phantom_t001.nii.gz"), "NaN or Inf")
def _(c: Ctx) -> list[str]:
    path = c.data / "imagesTs" / "phantom_t001.nii.gz"
    arr, aff = _array(path)
    arr = arr.astype(np.float32)
    arr[1, 1, 1] = np.nan
    _save(path, arr, aff)
    return c.predict()


# ----------------------------------------------------------------------------------------- datasets
@case("dataset_json_not_json", lambda c: str(c.data / "dataset.json"), "invalid JSON")
def _(c: Ctx) -> list[str]:
    (c.data / "dataset.json").write_text('{"labels": {"0": "background",')
    return ["validate", str(c.data)]


@case("dataset_json_without_labels", lambda c: str(c.data / "dataset.json"), "no 'labels' key")
def _(c: Ctx) -> list[str]:
    meta = json.loads((c.data / "dataset.json").read_text())
    del meta["labels"]
    (c.data / "dataset.json").write_text(json.dumps(meta))
    return c.train()


@case("dataset_json_missing", lambda c: str(c.data / "dataset.json"), "not found")
def _(c: Ctx) -> list[str]:
    (c.data / "dataset.json").unlink()
    return c.train()


@case("dataset_folder_missing", lambda c: str(c.tmp / "nodata"), "dataset folder not found")
def _(c: Ctx) -> list[str]:
    return ["train", "--data", str(c.tmp / "nodata"), "--out", str(c.tmp / "newrun"),
            "--preset", "res_unet+tiny"]


@case("train_on_a_broken_dataset", lambda c: str(c.lbl()), "label values 7")
def _(c: Ctx) -> list[str]:
    arr, aff = _array(c.lbl())
    arr[1, 1, 1] = 7
    _save(c.lbl(), arr, aff)
    return c.train()


# ------------------------------------------------------------------------------------------ configs
@case("config_unknown_key", lambda c: "--set: unknown config key 'train.iteration'", "known in train")
def _(c: Ctx) -> list[str]:
    return c.train("--set", "train.iteration=5")


@case("config_wrong_type", lambda c: "--set: train.batch_size", "expected an integer, got 'abc'")
def _(c: Ctx) -> list[str]:
    return c.train("--set", "train.batch_size=abc")


@case("config_negative_lr", lambda c: "config: train.lr", "must be > 0, got -1.0")
def _(c: Ctx) -> list[str]:
    return c.train("--set", "train.lr=-1")


@case("config_probability_above_one", lambda c: "config: augment.flip_prob", "must be in [0, 1], got 1.5")
def _(c: Ctx) -> list[str]:
    return c.train("--set", "augment.flip_prob=1.5")


@case("config_gamma_range_reversed", lambda c: "config: augment.contrast_gamma", "lo <= hi")
def _(c: Ctx) -> list[str]:
    return c.train("--set", "augment.contrast_gamma=[1.5, 0.7]")


@case("config_window_reversed", lambda c: "config: data.hu_window", "lo < hi")
def _(c: Ctx) -> list[str]:
    return c.train("--set", "data.hu_window=[350, -250]")


@case("config_patch_not_divisible", lambda c: "config: data.patch_size", "divisible by 4")
def _(c: Ctx) -> list[str]:
    return c.train("--set", "data.patch_size=[16, 30, 32]")


@case("config_pretraining_longer_than_training", lambda c: "config: adversarial.pretrain_iterations",
      "must be < train.iterations (2)")
def _(c: Ctx) -> list[str]:
    return c.train("--iterations", "2", preset="res_unet_aux_adv_semi+tiny")


@case("config_unknown_preset", lambda c: "unknown preset 'res_unet_xl'", "known:")
def _(c: Ctx) -> list[str]:
    return c.train(preset="res_unet_xl+tiny")


@case("config_unknown_network", lambda c: "config: network.name", "unknown network 'unet3d'")
def _(c: Ctx) -> list[str]:
    return c.train("--set", "network.name=unet3d")


@case("config_file_invalid_yaml", lambda c: str(c.tmp / "my.yaml"), "invalid YAML")
def _(c: Ctx) -> list[str]:
    (c.tmp / "my.yaml").write_text("train: [1, 2\n")
    return c.train("--config", str(c.tmp / "my.yaml"), preset="")


@case("config_file_bad_value", lambda c: f"{c.tmp / 'my.yaml'}: train.val_every", "must be >= 0, got -5")
def _(c: Ctx) -> list[str]:
    (c.tmp / "my.yaml").write_text("base: res_unet\ntrain:\n  val_every: -5\n")
    return c.train("--config", str(c.tmp / "my.yaml"), preset="")


@case("config_file_unknown_section", lambda c: str(c.tmp / "my.yaml"), "unknown config key 'optimizer'")
def _(c: Ctx) -> list[str]:
    (c.tmp / "my.yaml").write_text("base: res_unet\noptimizer:\n  name: sgd\n")
    return c.train("--config", str(c.tmp / "my.yaml"), preset="")


@case("config_file_missing", lambda c: str(c.tmp / "none.yaml"), "config file not found")
def _(c: Ctx) -> list[str]:
    return c.train("--config", str(c.tmp / "none.yaml"), preset="")


@case("gan_config_bad_value", lambda c: f"{c.tmp / 'gan.yaml'}: fade_fraction", "must be in [0, 1], got 3.0")
def _(c: Ctx) -> list[str]:
    (c.tmp / "gan.yaml").write_text("base: small\nfade_fraction: 3\n")
    return ["synthesize", "train", "--data", str(c.data), "--out", str(c.tmp / "gan"),
            "--config", str(c.tmp / "gan.yaml")]


# -------------------------------------------------------------------------------------- checkpoints
def _best(c: Ctx) -> Path:
    return c.run / "checkpoint_best.pt"


@case("checkpoint_truncated", lambda c: str(_best(c)), "checkpoint is truncated or corrupt")
def _(c: Ctx) -> list[str]:
    raw = _best(c).read_bytes()
    _best(c).write_bytes(raw[: len(raw) // 3])
    return c.predict()


@case("checkpoint_empty", lambda c: str(_best(c)), "checkpoint file is empty")
def _(c: Ctx) -> list[str]:
    _best(c).write_bytes(b"")
    return c.predict()


@case("checkpoint_foreign_file", lambda c: str(_best(c)), "not an advseg checkpoint")
def _(c: Ctx) -> list[str]:
    _best(c).write_text("these are not the weights you are looking for\n")
    return c.predict()


@case("checkpoint_foreign_torch_file", lambda c: str(_best(c)), "not an advseg checkpoint (no advseg format")
def _(c: Ctx) -> list[str]:
    torch.save({"state_dict": {"w": torch.zeros(3)}, "epoch": 3}, _best(c))  # someone else's checkpoint
    return c.predict()


class _Payload:
    def __reduce__(self):  # unpickling would call os.system
        return (os.system, ("echo pwned",))


@case("checkpoint_with_pickled_code", lambda c: str(_best(c)), "checkpoint holds pickled code; refusing")
def _(c: Ctx) -> list[str]:
    state = torch.load(_best(c), weights_only=True)
    state["extra"] = {"hook": _Payload()}
    torch.save(state, _best(c))
    return c.predict()


@case("checkpoint_newer_format", lambda c: str(_best(c)),
      "written by a newer advseg (format advseg-checkpoint-7")
def _(c: Ctx) -> list[str]:
    state = torch.load(_best(c), weights_only=True)
    state["format"] = "advseg-checkpoint-7"
    torch.save(state, _best(c))
    return c.predict()


@case("checkpoint_gan_instead_of_segmenter", lambda c: str(_best(c)), "another kind of advseg checkpoint")
def _(c: Ctx) -> list[str]:
    torch.save({"format": "advseg-pggan-1", "generator": {}}, _best(c))
    return c.predict()


@case("checkpoint_with_a_bad_config", lambda c: f"{_best(c)}: train.lr", "must be > 0, got -0.1")
def _(c: Ctx) -> list[str]:
    state = torch.load(_best(c), weights_only=True)
    state["config"]["train"]["lr"] = -0.1
    torch.save(state, _best(c))
    return c.predict()


# -------------------------------------------------------------------------------------- run folders
@case("model_folder_missing", lambda c: str(c.tmp / "norun"), "model folder not found")
def _(c: Ctx) -> list[str]:
    return ["predict", str(c.tmp / "norun"), str(c.data / "imagesTs"), str(c.tmp / "pred")]


@case("run_folder_from_a_newer_version", lambda c: str(c.run / "config.yaml"), "written by a newer advseg")
def _(c: Ctx) -> list[str]:
    text = (c.run / "config.yaml").read_text().replace("config_version: 1", "config_version: 3")
    (c.run / "config.yaml").write_text(text)
    return ["train", "--data", str(c.data), "--out", str(c.run), "--resume"]


@case("resume_without_a_run", lambda c: str(c.tmp / "empty_run"), "nothing to resume")
def _(c: Ctx) -> list[str]:
    (c.tmp / "empty_run").mkdir()
    return ["train", "--data", str(c.data), "--out", str(c.tmp / "empty_run"), "--resume"]


@case("train_into_a_used_folder", lambda c: str(c.run), "run folder exists and is not empty")
def _(c: Ctx) -> list[str]:
    return ["train", "--data", str(c.data), "--out", str(c.run), "--preset", "res_unet+tiny"]


@case("resume_a_running_run", lambda c: f"{c.run}: in use by another advseg run (PID", "wait for it")
def _(c: Ctx) -> list[str]:
    hold = "import sys, time\nfrom advseg.io.lock import RunLock\nRunLock(sys.argv[1]).acquire()\n" \
           "print('locked', flush=True)\ntime.sleep(120)\n"
    proc = subprocess.Popen([sys.executable, "-c", hold, str(c.run)], stdout=subprocess.PIPE, text=True)
    c.cleanup.append(lambda: (proc.kill(), proc.wait()))
    assert proc.stdout.readline().strip() == "locked"
    return ["train", "--data", str(c.data), "--out", str(c.run), "--resume"]


@case("train_into_a_running_runs_folder", lambda c: f"{c.run}: in use by another advseg run (PID", "wait")
def _(c: Ctx) -> list[str]:
    args = CASES["resume_a_running_run"][0](c)  # the same live holder
    return [*args[:-1], "--preset", "res_unet+tiny"]  # a fresh `advseg train --out SAME`


# ------------------------------------------------------------------------------------------ outputs
@case("output_is_the_input", lambda c: str(c.data / "imagesTs"), "output is the input")
def _(c: Ctx) -> list[str]:
    return c.predict(out=c.data / "imagesTs")


@case("output_inside_the_input", lambda c: str(c.data / "imagesTs" / "pred"), "output lies inside the input")
def _(c: Ctx) -> list[str]:
    return c.predict(out=c.data / "imagesTs" / "pred")


@case("evaluate_into_the_labels", lambda c: str(c.data / "labelsTs"), "output is the input")
def _(c: Ctx) -> list[str]:
    return ["evaluate", str(c.data / "labelsTs"), str(c.data / "labelsTs"), "--out", str(c.data / "labelsTs")]


@case("train_output_is_the_dataset", lambda c: str(c.data), "output is the input")
def _(c: Ctx) -> list[str]:
    return ["train", "--data", str(c.data), "--out", str(c.data), "--preset", "res_unet+tiny"]


@case("output_folder_holds_other_files", lambda c: str(c.tmp / "pred"), "did not write")
def _(c: Ctx) -> list[str]:
    (c.tmp / "pred").mkdir()
    (c.tmp / "pred" / "notes.txt").write_text("mine")
    return c.predict()


@case("read_only_output_folder", lambda c: str(c.tmp / "pred"),
      "cannot write in this folder (Permission denied)")
def _(c: Ctx) -> list[str]:
    # Tests may run as root, for whom chmod does not stop a write: the folder refuses every new file
    # the way a read-only one does, at the system call the writer makes.
    import tempfile

    import advseg.io.atomic as atomic

    (c.tmp / "pred").mkdir()
    real = tempfile.mkstemp

    def refusing(*args, dir=None, **kw):  # noqa: A002 - tempfile's own argument name
        if dir is not None and Path(dir).resolve() == (c.tmp / "pred").resolve():
            raise PermissionError(13, "Permission denied")
        return real(*args, dir=dir, **kw)

    mp = pytest.MonkeyPatch()
    mp.setattr(atomic.tempfile, "mkstemp", refusing)
    c.cleanup.append(mp.undo)
    return c.predict()


# -------------------------------------------------------------------------------------------- DICOM
def _export(c: Ctx, rtstruct: bool = True) -> Path:
    """A TPS-like export under tmp: the phantom CT series (CT_0000.dcm, ...) and its RTSTRUCT."""
    from advseg.io.dicom.rtstruct import write_rtstruct
    from advseg.io.dicom.series import read_series_folder

    root = c.tmp / "export"
    shutil.copytree(c.request.getfixturevalue("phantom_series"), root / "PAT001" / "CT")
    if rtstruct:
        label = c.request.getfixturevalue("phantom_ct").label
        names = {0: "background", 1: "Prostate", 2: "Bladder", 3: "Rectum", 4: "Femur_L", 5: "Femur_R"}
        series = read_series_folder(root / "PAT001" / "CT")[0]
        write_rtstruct(root / "PAT001" / "RS.dcm", label, names, series)
    return root


def _dicom_edit(path: Path, **values) -> None:
    import pydicom

    ds = pydicom.dcmread(path)
    for k, v in values.items():
        setattr(ds, k, v)
    ds.save_as(path)


@case("dicom_missing_slice", lambda c: "CT_0004.dcm", "1 missing slice")
def _(c: Ctx) -> list[str]:
    root = _export(c)
    (root / "PAT001" / "CT" / "CT_0005.dcm").unlink()
    return ["import-dicom", str(root), str(c.tmp / "imported")]


@case("dicom_uneven_spacing", lambda c: str(c.tmp / "export"), "uneven slice spacing")
def _(c: Ctx) -> list[str]:
    import pydicom

    root = _export(c)
    f = root / "PAT001" / "CT" / "CT_0007.dcm"
    ipp = [float(v) for v in pydicom.dcmread(f).ImagePositionPatient]
    _dicom_edit(f, ImagePositionPatient=[ipp[0], ipp[1], ipp[2] + 3.0])
    return ["import-dicom", str(root), str(c.tmp / "imported")]


@case("dicom_rtstruct_without_its_series", lambda c: str(c.tmp / "export"), "no DICOM CT series")
def _(c: Ctx) -> list[str]:
    root = _export(c)
    shutil.rmtree(root / "PAT001" / "CT")
    return ["import-dicom", str(root), str(c.tmp / "imported")]


@case("dicom_folder_without_dicom", lambda c: str(c.tmp / "export"), "DICOM")
def _(c: Ctx) -> list[str]:
    (c.tmp / "export").mkdir()
    (c.tmp / "export" / "notes.txt").write_text("not a scan")
    return ["import-dicom", str(c.tmp / "export"), str(c.tmp / "imported")]


@case("dicom_unknown_structure", lambda c: "RS.dcm", "no ROI for 'spleen'")
def _(c: Ctx) -> list[str]:
    return ["import-dicom", str(_export(c)), str(c.tmp / "imported"), "--structures", "Spleen=spleen"]


@case("predict_dicom_series_with_a_missing_slice", lambda c: "CT_0004.dcm", "1 missing slice")
def _(c: Ctx) -> list[str]:
    root = _export(c, rtstruct=False)
    (root / "PAT001" / "CT" / "CT_0005.dcm").unlink()
    return c.predict(images=root / "PAT001" / "CT")


# ------------------------------------------------------------------------------------------- the run
@pytest.fixture
def ctx(tmp_path: Path, tiny_phantom: Path, tiny_run: Path, request: pytest.FixtureRequest):
    data, run = tmp_path / "data", tmp_path / "run"
    shutil.copytree(tiny_phantom, data)
    shutil.copytree(tiny_run, run)
    c = Ctx(tmp_path, data, run, request)
    yield c
    for undo in reversed(c.cleanup):
        undo()


def _snapshot(root: Path) -> dict[str, str]:
    """Every file and folder under ``root``: relative path -> content hash ("dir" for folders)."""
    out = {}
    for p in sorted(root.rglob("*")):
        out[str(p.relative_to(root))] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _check(code: int, stderr: str, output: str, names: str, problem: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert code == 2, (code, output)
    assert "Traceback" not in output and "Traceback" not in stderr
    assert len(lines) == 1, stderr
    line = lines[0]
    assert line.startswith("error: "), line
    assert names in line, (names, line)
    assert problem in line, (problem, line)
    return line


def test_the_suite_is_big_enough() -> None:
    assert len(CASES) + 1 >= 30  # + the full-disk case below


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input(name: str, ctx: Ctx) -> None:
    build, names, problem = CASES[name]
    args = build(ctx)
    before = _snapshot(ctx.tmp)
    res = runner.invoke(app, args)
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    _check(res.exit_code, res.stderr, res.output, names(ctx), problem)
    assert _snapshot(ctx.tmp) == before  # nothing changed, nothing added


def _limit_file_size(limit: int) -> Callable[[], None]:
    def preexec() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return preexec


def test_full_disk_is_one_line_and_leaves_nothing(ctx: Ctx) -> None:
    """A file-size limit (``ulimit -f``) as a stand-in for a full disk: predicting into a new folder
    fails at the first label map with one line naming it, and the folder is not left behind."""
    before = _snapshot(ctx.tmp)
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "advseg", *ctx.predict()], capture_output=True, text=True, env=env,
        preexec_fn=_limit_file_size(600), timeout=300, cwd=ctx.tmp,
    )
    _check(proc.returncode, proc.stderr, proc.stdout, str(ctx.tmp / "pred"), "cannot write (File too large)")
    assert _snapshot(ctx.tmp) == before


def test_checkpoint_write_failure_keeps_the_previous_one(tmp_path: Path, tiny_phantom: Path) -> None:
    """Training into a folder whose checkpoint can no longer be written (file-size limit): one line
    naming the checkpoint, and the good checkpoint of the earlier run stays byte-identical."""
    from advseg.config import apply_overrides, load_preset
    from advseg.training.api import train_run

    run = tmp_path / "run"
    cfg = apply_overrides(load_preset("res_unet+tiny"), ["train.iterations=2", "train.val_every=0"])
    train_run(cfg, tiny_phantom, run, progress=False)
    good = (run / "checkpoint_last.pt").read_bytes()
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1"}
    limit = len(good) // 2  # config and logs fit; a checkpoint does not
    proc = subprocess.run(
        [sys.executable, "-m", "advseg", "train", "--data", str(tiny_phantom), "--out", str(run), "--resume",
         "--iterations", "4", "--set", "train.val_every=0"],
        capture_output=True, text=True, env=env, preexec_fn=_limit_file_size(limit), timeout=300,
    )
    stderr = "\n".join(ln for ln in proc.stderr.splitlines() if not ln.startswith("train "))  # progress
    line = _check(proc.returncode, stderr, proc.stdout, str(run / "checkpoint_last.pt"), "cannot write")
    assert "File too large" in line and "nothing was replaced" in line
    assert (run / "checkpoint_last.pt").read_bytes() == good
    assert not [p for p in run.iterdir() if p.name.startswith(".checkpoint")]  # no temp file left


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders; the monkeypatched "
                                              "case read_only_output_folder covers it")
def test_read_only_output_folder_for_real(ctx: Ctx) -> None:
    out = ctx.tmp / "pred"
    out.mkdir()
    out.chmod(0o555)
    ctx.cleanup.append(lambda: out.chmod(0o755))
    before = _snapshot(ctx.tmp)
    res = runner.invoke(app, ctx.predict())
    _check(res.exit_code, res.stderr, res.output, str(out), "cannot write in this folder (Permission denied)")
    assert _snapshot(ctx.tmp) == before
