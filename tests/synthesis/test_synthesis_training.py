"""GAN training, exact resume, sampling, the report and the CLI, on a tiny phantom set."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from advseg.cli.synthesize import app
from advseg.errors import InputError
from advseg.io import Volume, read_volume
from advseg.synthesis.api import sample_gan, synthesis_report, synthesize_unlabeled, train_gan
from advseg.synthesis.config import GANConfig, gan_preset, merge_gan_config
from advseg.synthesis.data import find_training_images, load_training_set, to_int16_hu
from advseg.synthesis.trainer import load_state

# 4^3 -> 8^3 -> 8 x 16 x 16 (anisotropic last step), tiny widths; the whole stage fades in.
TINY = {"stages": [[4, 4, 4], [8, 8, 8], [8, 16, 16]], "channels": [8, 4, 4], "latent_channels": 4,
        "iterations_per_stage": 4, "fade_fraction": 1.0, "batch_sizes": [4], "grid_samples": 2,
        "checkpoint_every": 100, "ema_beta": 0.9, "seed": 3}


def tiny_cfg(**updates) -> GANConfig:
    return merge_gan_config(gan_preset("small"), {**TINY, **updates})


@pytest.fixture(scope="module")
def trained_gan(tiny_phantom: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("gan") / "run"
    train_gan(tiny_phantom, out, tiny_cfg(), progress=False)
    return out


def _tensors(state: dict, prefix: str = "") -> dict[str, torch.Tensor]:
    """Every tensor in a (nested) checkpoint, by path."""
    out: dict[str, torch.Tensor] = {}
    items = state.items() if isinstance(state, dict) else enumerate(state) if isinstance(state, list) else []
    for k, v in items:
        if isinstance(v, torch.Tensor):
            out[f"{prefix}{k}"] = v
        elif isinstance(v, dict | list):
            out.update(_tensors(v, f"{prefix}{k}."))
    return out


def test_training_writes_stage_checkpoints_grids_and_log(trained_gan: Path, tiny_phantom: Path) -> None:
    cfg = tiny_cfg()
    names = ["stage0_4x4x4", "stage1_8x8x8", "stage2_8x16x16"]
    for name in names:
        state = torch.load(trained_gan / "checkpoints" / f"{name}.pt", weights_only=True)
        assert state["opt_g"] is None  # a new stage starts with fresh optimizers
        png = trained_gan / "grids" / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    latest = load_state(trained_gan / "checkpoints" / "latest.pt")
    assert (latest["stage"], latest["iteration"], latest["step"]) == (2, 4, 12)
    rows = list(csv.DictReader((trained_gan / "log.csv").open()))
    assert [int(r["step"]) for r in rows] == list(range(1, 13))
    assert [float(r["alpha"]) for r in rows[4:8]] == [0.0, 0.25, 0.5, 0.75]  # linear fade-in
    assert all(np.isfinite(float(r["loss_d"])) for r in rows)
    # training data: the labeled and unlabeled images, never the test images
    files = [Path(f).parent.name for f in latest["data_files"]]
    assert sorted(set(files)) == ["imagesTr", "imagesUnlabeled"] and len(files) == 7
    assert yaml.safe_load((trained_gan / "gan_config.yaml").read_text())["stages"] == cfg.stages


def test_per_stage_iterations_train_each_stage_that_long(tiny_phantom: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    train_gan(tiny_phantom, out, tiny_cfg(iterations_per_stage=[3, 2, 1], grid_samples=0), progress=False)
    rows = list(csv.DictReader((out / "log.csv").open()))
    assert [int(r["stage"]) for r in rows] == [0, 0, 0, 1, 1, 2]
    assert [float(r["alpha"]) for r in rows[3:]] == [0.0, 0.5, 0.0]  # each stage fades over its own length
    latest = load_state(out / "checkpoints" / "latest.pt")
    assert (latest["stage"], latest["iteration"], latest["step"]) == (2, 1, 6)
    paths = sample_gan(out, 1, tmp_path / "s", seed=0, device="cpu")  # finished: the last stage's count
    assert len(paths) == 1


def test_resume_in_the_middle_of_a_stage_is_exact(trained_gan: Path, tiny_phantom: Path,
                                                  tmp_path: Path) -> None:
    out = tmp_path / "split"
    train_gan(tiny_phantom, out, tiny_cfg(), max_iterations=6, progress=False)
    mid = load_state(out / "checkpoints" / "latest.pt")
    assert (mid["stage"], mid["iteration"]) == (1, 2)  # stage 1, half-way through its fade-in
    assert mid["opt_g"] is not None
    with pytest.raises(InputError, match="sample|stage 2 of 3"):
        sample_gan(out, 1, tmp_path / "nope")
    train_gan(tiny_phantom, out, resume=True, progress=False)
    split = _tensors(load_state(out / "checkpoints" / "latest.pt"))
    whole = _tensors(load_state(trained_gan / "checkpoints" / "latest.pt"))
    assert split.keys() == whole.keys()
    assert any(k.startswith("generator_ema.") for k in whole) and "rng" in whole
    for key, value in whole.items():
        assert torch.equal(split[key], value), key
    rows = list(csv.DictReader((out / "log.csv").open()))
    assert [int(r["step"]) for r in rows] == list(range(1, 13))  # nothing logged twice


def test_training_input_errors_write_nothing(tiny_phantom: Path, trained_gan: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError) as err:
        train_gan(tmp_path / "missing", tmp_path / "out", tiny_cfg(), progress=False)
    assert str(tmp_path / "missing") in str(err.value) and not (tmp_path / "out").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="no NIfTI images"):
        train_gan(empty, tmp_path / "out", tiny_cfg(), progress=False)
    with pytest.raises(InputError, match="already holds a GAN run"):
        train_gan(tiny_phantom, trained_gan, tiny_cfg(), progress=False)
    with pytest.raises(InputError, match="differs from the saved run"):
        train_gan(tiny_phantom, trained_gan, tiny_cfg(seed=4), resume=True, progress=False)
    with pytest.raises(InputError, match="nothing to resume"):
        train_gan(tiny_phantom, tmp_path / "out", resume=True, progress=False)
    assert not (tmp_path / "out").exists()


def test_preparation_and_sample_geometry(tiny_phantom: Path) -> None:
    paths = find_training_images(tiny_phantom)
    tset = load_training_set(paths, (8, 16, 16), [-1000.0, 1000.0])
    assert tset.volumes.shape == (7, 1, 8, 16, 16)
    assert tset.volumes.min() >= -1 and tset.volumes.max() <= 1
    vols = [read_volume(p) for p in paths]
    extent = np.mean([np.asarray(v.shape) * np.asarray(v.spacing) for v in vols], axis=0)
    assert tset.geometry["shape"] == [8, 16, 16] and tset.geometry["data_shape"] == [32, 64, 64]
    centre = lambda v: (v.affine @ np.array([*((np.asarray(v.shape[::-1]) - 1) / 2), 1.0]))[:3]  # noqa: E731
    for shape, key in (((8, 16, 16), "affine"), ((32, 64, 64), "data_affine")):
        synth = Volume(np.zeros(shape), np.asarray(tset.geometry[key]))
        # same field of view as the mean training volume, same centre
        np.testing.assert_allclose(np.asarray(synth.shape) * np.asarray(synth.spacing), extent)
        np.testing.assert_allclose(centre(synth), np.mean([centre(v) for v in vols], axis=0), atol=1e-6)
    # the inverse: [-1, 1] back to HU in the window
    hu = to_int16_hu(np.array([-1.5, -1.0, 0.0, 1.0, 2.0]), [-1000, 1000])
    assert hu.dtype == np.int16 and hu.tolist() == [-1000, -1000, 0, 1000, 1000]
    # a plain folder of images is accepted too
    assert len(find_training_images(tiny_phantom / "imagesUnlabeled")) == 3


def test_sampling_is_deterministic_with_a_proper_affine(trained_gan: Path, tiny_phantom: Path,
                                                        tmp_path: Path) -> None:
    a = sample_gan(trained_gan, 3, tmp_path / "a", seed=5, device="cpu")
    b = sample_gan(trained_gan, 3, tmp_path / "b", seed=5, device="cpu")
    c = sample_gan(trained_gan, 3, tmp_path / "c", seed=6, device="cpu")
    assert [p.name for p in a] == ["synth_000.nii.gz", "synth_001.nii.gz", "synth_002.nii.gz"]
    va, vb, vc = ([read_volume(p) for p in x] for x in (a, b, c))
    geometry = load_state(trained_gan / "checkpoints" / "latest.pt")["geometry"]
    for x, y, z in zip(va, vb, vc, strict=True):
        # on the training images' grid by default: what a segmentation's preprocessing expects
        assert x.meta["dtype"] == "int16" and x.shape == (32, 64, 64)
        assert np.array_equal(x.array, y.array)
        assert not np.array_equal(x.array, z.array)
        np.testing.assert_allclose(x.affine, geometry["data_affine"], atol=1e-5)
        assert -1000 <= x.array.min() and x.array.max() <= 1000
    # the GAN's own grid on request: the same sample, before up-sampling
    small = read_volume(sample_gan(trained_gan, 1, tmp_path / "g", seed=5, resolution="gan")[0])
    assert small.shape == (8, 16, 16)
    np.testing.assert_allclose(small.affine, geometry["affine"], atol=1e-5)
    coarse_mean = va[0].array.reshape(8, 4, 16, 4, 16, 4).mean(axis=(1, 3, 5))
    assert np.abs(coarse_mean - small.array).mean() < 60  # HU: the up-sampled volume is the same image
    assert not np.array_equal(va[0].array, va[1].array)  # different samples within a run
    # fewer samples into the same folder: the first ones are the same volumes, stale ones removed
    again = sample_gan(trained_gan, 2, tmp_path / "a", seed=5, device="cpu")
    kept = sorted(p.name for p in (tmp_path / "a").iterdir() if not p.name.startswith("."))
    assert kept == ["synth_000.nii.gz", "synth_001.nii.gz"]
    assert np.array_equal(read_volume(again[1]).array, va[1].array)
    # directly usable as the unlabeled pool of a dataset
    from advseg.data.dataset import load_dataset

    index = load_dataset(tiny_phantom, unlabeled_dirs=[tmp_path / "b"])
    assert sum(c.name.startswith("synth_") for c in index.unlabeled) == 3


class _ThresholdModel:
    """Stands in for a trained S-net: labels by HU ranges (organ 2 = water-like, 4 = bone-like)."""

    def predict_volume(self, vol: Volume):
        hu = vol.array
        labels = np.zeros(hu.shape, np.uint8)
        labels[(hu > -100) & (hu < 100)] = 2
        labels[hu > 300] = 4
        return type("Prediction", (), {"labels": Volume(labels, vol.affine)})()


def test_report_with_a_fake_segmenter(trained_gan: Path, tiny_phantom: Path, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import advseg.synthesis.report as report

    monkeypatch.setattr(report, "_load_segmenter", lambda model_dir, device: _ThresholdModel())
    result = synthesis_report(trained_gan, tmp_path / "model", tiny_phantom, tmp_path / "rep", n=3, seed=1,
                              device="cpu")
    assert set(result["organs"]) == {"prostate", "bladder", "rectum", "left_femur", "right_femur"}
    samples = [read_volume(p) for p in result["samples"]]
    bladder = result["organs"]["bladder"]
    # recompute the synthesized side by hand
    means = [s.array[(s.array > -100) & (s.array < 100)].astype(float).mean() for s in samples
             if np.any((s.array > -100) & (s.array < 100))]
    assert means and bladder["synthetic"]["n"] == len(means)
    assert bladder["synthetic"]["mean"] == pytest.approx(np.mean(means), abs=1e-3)
    diff = np.mean(means) - bladder["real"]["mean"]
    assert bladder["difference"]["mean"] == pytest.approx(diff, abs=1e-3)
    assert bladder["difference"]["std"] == pytest.approx(np.std(means), abs=1e-3)
    assert bladder["real"]["n"] == 4 and -100 < bladder["real"]["mean"] < 100  # ground truth, 4 labeled
    assert result["organs"]["prostate"]["synthetic"]["n"] == 0  # the fake model never says prostate
    # Table I's HU error: |difference| per sample
    errors = np.abs(np.array(means) - bladder["real"]["mean"])
    assert bladder["hu_error"]["mean"] == pytest.approx(np.mean(errors), abs=1e-3)
    # organs found: the fake model never labels the prostate: no sample (nor real test case) has every organ
    found = result["organs_found"]
    assert found["all"] == 0 and found["share"] == 0.0 and found["real_test_share"] == 0.0
    assert result["organs"]["prostate"]["found"] == 0 and result["n_real_test"] == 2
    assert result["organs"]["bladder"]["hu_error_real_test"]["n"] == 2  # S on the 2 real test volumes
    assert found["min_volume_ml"]["bladder"] == pytest.approx(
        0.25 * result["organs"]["bladder"]["volume_ml_real"]["mean"], rel=0.5)
    # copy check: 3 samples against the 7 training images (labeled + unlabeled)
    nn = result["nearest_neighbour"]
    assert nn["sample"]["n"] == 3 and nn["training"]["n"] == 7
    assert 0 <= nn["sample"]["min"] <= 2 and 0 < nn["training"]["min"] <= 2
    assert 0 <= nn["closer_than_any_training_pair"] <= 3
    assert result["wasserstein_hu"] >= 0 and np.isfinite(result["wasserstein_hu"])
    for key in ("figure", "histogram_figure"):
        assert Path(result[key]).read_bytes()[:4] == b"\x89PNG"
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "| bladder |" in md and "Wasserstein" in md and "HU error" in md and "Copy check" in md
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no synth_"):
        synthesis_report(trained_gan, tmp_path / "model", tiny_phantom, tmp_path / "rep2",
                         samples=tmp_path / "empty")
    # the command, on the samples just written
    res = CliRunner().invoke(app, ["report", str(trained_gan), "--model", str(tmp_path / "model"), "--data",
                                   str(tiny_phantom), "--out", str(tmp_path / "rep3"), "--samples",
                                   str(tmp_path / "rep" / "samples"), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert "| left_femur |" in res.output and (tmp_path / "rep3" / "synth_slices.png").exists()


def test_cli_train_resume_sample_and_errors(tiny_phantom: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    cfg_file = tmp_path / "gan.yaml"
    cfg_file.write_text(yaml.safe_dump({**TINY, "stages": [[4, 4, 4], [8, 8, 8]], "channels": [4, 4],
                                        "iterations_per_stage": 2, "grid_samples": 0}))
    gan = tmp_path / "gan"
    res = runner.invoke(app, ["train", "--data", str(tiny_phantom / "imagesUnlabeled"), "--out", str(gan),
                              "--config", str(cfg_file), "--no-progress"])
    assert res.exit_code == 0, res.output
    assert (gan / "checkpoints" / "stage1_8x8x8.pt").exists()
    res = runner.invoke(app, ["train", "--data", str(tiny_phantom / "imagesUnlabeled"), "--out", str(gan),
                              "--resume", "--no-progress"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["sample", str(gan), "--n", "2", "--out", str(tmp_path / "s"), "--seed", "1"])
    assert res.exit_code == 0, res.output
    assert len(list((tmp_path / "s").glob("synth_*.nii.gz"))) == 2
    res = runner.invoke(app, ["train", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "g2")])
    assert res.exit_code == 2
    assert f"error: {tmp_path / 'nowhere'}: folder not found" in res.output
    assert not (tmp_path / "g2").exists()
    res = runner.invoke(app, ["sample", str(tmp_path / "nowhere"), "--out", str(tmp_path / "s2")])
    assert res.exit_code == 2 and "GAN folder not found" in res.output


def test_synthesize_unlabeled_trains_once_then_reuses(tiny_phantom: Path, tmp_path: Path) -> None:
    out = synthesize_unlabeled(tiny_phantom, tmp_path / "synthetic", n=2, seed=0, iterations_per_stage=1,
                               progress=False)
    assert out == tmp_path / "synthetic"
    kept = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    assert kept == ["synth_000.nii.gz", "synth_001.nii.gz"]
    assert read_volume(out / "synth_000.nii.gz").shape == (32, 64, 64)  # the images' grid
    latest = tmp_path / "synthetic_gan" / "checkpoints" / "latest.pt"
    stamp = latest.stat().st_mtime_ns
    synthesize_unlabeled(tiny_phantom, out, n=3, seed=0, iterations_per_stage=1, progress=False)
    assert latest.stat().st_mtime_ns == stamp  # trained once
    assert len(list(out.glob("synth_*.nii.gz"))) == 3


def test_synthesis_commands_never_touch_their_inputs(trained_gan: Path, tiny_phantom: Path,
                                                     tmp_path: Path) -> None:
    """Output = input, or a folder of someone else's files: one line, exit 2, nothing changed; with
    --overwrite, samples go into such a folder but no file of its own is removed."""
    import hashlib

    def hashes(root: Path) -> dict[str, str]:
        return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()}

    runner = CliRunner()
    data = Path(shutil.copytree(tiny_phantom, tmp_path / "data"))
    pool = tmp_path / "pool"
    pool.mkdir()
    (pool / "synth_099.nii.gz").write_bytes(b"a user's own volume with a sample-like name")
    cases = [
        (["train", "--data", str(data), "--out", str(data)], "output is the input"),
        (["sample", str(trained_gan), "--out", str(trained_gan), "--n", "1"], "output is the input folder"),
        (["sample", str(trained_gan), "--out", str(pool), "--n", "1"], "did not write (synth_099"),
        (["report", str(trained_gan), "--model", str(trained_gan), "--data", str(data), "--out",
          str(data / "rep")], "lies inside the input"),
    ]
    for args, expected in cases:
        before = {**hashes(tmp_path), **hashes(trained_gan)}
        res = runner.invoke(app, args)
        lines = [line for line in res.output.splitlines() if line.strip()]
        assert res.exit_code == 2 and len(lines) == 1 and expected in lines[0], (args, res.output)
        assert {**hashes(tmp_path), **hashes(trained_gan)} == before
    for n in (2, 1):  # fewer samples the second time: only the stale sample of its own is removed
        res = runner.invoke(app, ["sample", str(trained_gan), "--out", str(pool), "--n", str(n),
                                  "--overwrite"])
        assert res.exit_code == 0, res.output
    assert sorted(p.name for p in pool.glob("synth_*")) == ["synth_000.nii.gz", "synth_099.nii.gz"]
    assert (pool / "synth_099.nii.gz").read_bytes().startswith(b"a user's own")
