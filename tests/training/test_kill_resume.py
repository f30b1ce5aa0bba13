"""Faults: ``kill -9`` of real training processes at random points, then ``--resume``.

Each run is a real ``python -m advseg ...`` process on the tiny phantom set with one thread
(``OMP_NUM_THREADS=1``) and a checkpoint every iteration. The interrupted run is SIGKILLed once its
log shows a randomly drawn iteration (so the kill may land anywhere, also inside a checkpoint write),
resumed with ``--resume`` (which also takes over the dead process's run lock), and its final weights
are compared bit for bit (``torch.equal`` on every tensor) with an uninterrupted run's.
The simulated crash of ``tests/conftest.py::run_interrupted`` covers the same promise in-process;
these check it survives a real kill.
"""

from __future__ import annotations

import csv
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from advseg.io.lock import LOCK_NAME
from advseg.runtime.checkpoint import load_checkpoint, save_checkpoint

POLL_S = 0.02
# Which kill points to draw (ADVSEG_FAULT_SEEDS=0,1,2,... for more; each seed is one more run pair).
SEEDS = [int(s) for s in os.environ.get("ADVSEG_FAULT_SEEDS", "0").split(",")]
LIMIT_S = 300  # a hung child fails the test instead of blocking the suite (not a timing assert)


def _env() -> dict[str, str]:
    # ADVSEG_CACHE comes from the autouse fixture (shared preprocessing cache, never ~/.cache)
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}


def _run(args: list[str]) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "advseg", *args], capture_output=True, text=True,
                          env=_env(), timeout=LIMIT_S)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _train_rows(log: Path) -> int:
    if not log.is_file():
        return 0
    return sum(1 for ln in log.read_text().splitlines() if '"kind": "train"' in ln)


def _csv_rows(log: Path) -> int:
    if not log.is_file():
        return 0
    with log.open() as fh:
        return max(0, sum(1 for _ in csv.reader(fh)) - 1)


def _kill_when(args: list[str], reached: Any) -> int:
    """Start ``advseg args``, SIGKILL it as soon as ``reached()`` is true; return its exit status."""
    proc = subprocess.Popen([sys.executable, "-m", "advseg", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=_env())
    deadline = time.monotonic() + LIMIT_S
    try:
        while not reached():
            if proc.poll() is not None:
                pytest.fail(f"the run ended (status {proc.returncode}) before the kill point: "
                            f"{proc.stderr.read().decode()[-2000:]}")
            if time.monotonic() > deadline:
                pytest.fail("the run never reached the kill point")
            time.sleep(POLL_S)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
        proc.stderr.close()
    return proc.returncode


def _assert_same_tensors(a: Any, b: Any, where: str = "") -> int:
    """Recursively ``torch.equal`` every tensor of two states; returns how many were compared."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
        return 1
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        return sum(_assert_same_tensors(a[k], b[k], f"{where}.{k}") for k in a)
    return 0


SEGMENTATION = {
    "supervised": ("res_unet_aux+tiny", 8),
    "semi_adversarial": ("res_unet_aux_adv_semi+tiny", 8),
    "mean_teacher": ("mean_teacher+tiny", 8),  # the teacher (nets.T) must come back exactly too
}


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(SEGMENTATION))
@pytest.mark.parametrize("seed", SEEDS)
def test_kill9_then_resume_is_bit_identical(
    method: str, seed: int, tmp_path: Path, tiny_phantom: Path
) -> None:
    preset, total = SEGMENTATION[method]
    common = ["--data", str(tiny_phantom), "--preset", preset, "--iterations", str(total),
              "--set", "train.checkpoint_every=1", "--set", "train.val_every=3"]
    ref, run = tmp_path / "ref", tmp_path / "run"
    _run(["train", "--out", str(ref), *common])
    kill_at = random.Random(f"{method}-{seed}").randint(1, total - 1)  # a train log row, 1..total-1
    status = _kill_when(["train", "--out", str(run), *common],
                        lambda: _train_rows(run / "log.jsonl") >= kill_at)
    assert status == -signal.SIGKILL
    assert (run / LOCK_NAME).exists()  # the killed process could not release its lock
    _run(["train", "--data", str(tiny_phantom), "--out", str(run), "--resume"])
    assert not (run / LOCK_NAME).exists()
    a, b = load_checkpoint(ref / "checkpoint_last.pt"), load_checkpoint(run / "checkpoint_last.pt")
    assert a["iteration"] == b["iteration"] == total
    assert _assert_same_tensors(a["nets"], b["nets"]) > 10
    assert _assert_same_tensors(a["optimizers"], b["optimizers"]) > 10
    rows = [json.loads(ln) for ln in (run / "log.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows if r["kind"] == "train"] == list(range(1, total + 1))


def _gan_config(path: Path) -> Path:
    path.write_text(
        "base: small\nstages: [[4, 4, 4], [8, 8, 8], [8, 16, 16]]\nchannels: [8, 8, 4]\nlatent_channels: 8\n"
        "iterations_per_stage: 4\nbatch_sizes: [2]\ncheckpoint_every: 1\ngrid_samples: 0\nmbstd_group: 2\n"
        "device: cpu\n"
    )
    return path


@pytest.mark.slow
@pytest.mark.parametrize("seed", SEEDS)
def test_kill9_of_the_pggan_then_resume_is_bit_identical(
    seed: int, tmp_path: Path, tiny_phantom: Path
) -> None:
    cfg = _gan_config(tmp_path / "gan.yaml")
    common = ["--data", str(tiny_phantom), "--config", str(cfg), "--no-progress"]
    ref, run = tmp_path / "ref", tmp_path / "run"
    _run(["synthesize", "train", "--out", str(ref), *common])
    kill_at = random.Random(f"gan-{seed}").randint(1, 11)  # of 12 iterations (3 stages x 4)
    status = _kill_when(["synthesize", "train", "--out", str(run), *common],
                        lambda: _csv_rows(run / "log.csv") >= kill_at)
    assert status == -signal.SIGKILL
    _run(["synthesize", "train", "--data", str(tiny_phantom), "--out", str(run), "--resume", "--no-progress"])
    a = load_checkpoint(ref / "checkpoints" / "latest.pt", kind="advseg-pggan")
    b = load_checkpoint(run / "checkpoints" / "latest.pt", kind="advseg-pggan")
    assert (a["stage"], a["iteration"]) == (b["stage"], b["iteration"]) == (2, 4)
    for key in ("generator", "discriminator", "generator_ema"):
        assert _assert_same_tensors(a[key], b[key], key) > 4
    with (run / "log.csv").open() as fh:
        assert [int(r["step"]) for r in csv.DictReader(fh)] == list(range(1, 13))  # lost rows rewritten


def test_interrupted_checkpoint_write_keeps_the_good_one(tmp_path: Path) -> None:
    """A process killed half-way through writing a checkpoint (SIGKILL from inside the write) leaves
    the previous checkpoint byte-identical and loadable; only a hidden temp file remains."""
    path = tmp_path / "checkpoint_last.pt"
    save_checkpoint(path, {"format": "advseg-checkpoint-1", "w": torch.arange(1000.0)})
    good = path.read_bytes()
    child = f"""
import os, pathlib, signal, torch
from advseg.runtime import checkpoint

real_open = pathlib.Path.open

class HalfThenKilled:
    def __init__(self, fh):
        self.fh = fh
    def __enter__(self):
        return self
    def __exit__(self, *exc):
        self.fh.close()
    def write(self, data):
        self.fh.write(bytes(data)[: len(data) // 2])
        self.fh.flush()
        os.kill(os.getpid(), signal.SIGKILL)

def opener(self, mode="r", *args, **kw):
    fh = real_open(self, mode, *args, **kw)
    return HalfThenKilled(fh) if "w" in mode and self.name.startswith(".checkpoint") else fh

pathlib.Path.open = opener
checkpoint.save_checkpoint({str(path)!r}, {{"format": "advseg-checkpoint-1", "w": torch.zeros(1000)}})
"""
    proc = subprocess.run([sys.executable, "-c", child], env=_env(), timeout=LIMIT_S, capture_output=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert path.read_bytes() == good
    assert torch.equal(load_checkpoint(path)["w"], torch.arange(1000.0))
    leftovers = [p.name for p in tmp_path.iterdir() if p != path]
    assert len(leftovers) == 1 and leftovers[0].startswith(".checkpoint_last.pt.")  # the half-written temp


def test_resume_removes_a_checkpoint_temp_a_kill_left(tmp_path: Path, tiny_phantom: Path) -> None:
    from advseg.config import apply_overrides, load_preset
    from advseg.training.api import train_run

    cfg = apply_overrides(load_preset("res_unet+tiny"), ["train.iterations=2", "train.val_every=0"])
    run = tmp_path / "run"
    train_run(cfg, tiny_phantom, run, progress=False)
    (run / ".checkpoint_last.pt.abcd1234.tmp").write_bytes(b"half a checkpoint")
    train_run(None, tiny_phantom, run, resume=True, progress=False)
    assert not list(run.glob(".checkpoint_*"))


def test_failed_checkpoint_write_in_process_keeps_the_good_one(tmp_path: Path, monkeypatch) -> None:
    """The same with an exception (e.g. Ctrl-C) raised after half the bytes: no temp file is left."""
    import pathlib

    path = tmp_path / "checkpoint_last.pt"
    save_checkpoint(path, {"format": "advseg-checkpoint-1", "w": torch.arange(10.0)})
    good = path.read_bytes()
    real_open = pathlib.Path.open

    class HalfThenInterrupted:
        def __init__(self, fh):
            self.fh = fh

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

        def write(self, data):
            self.fh.write(bytes(data)[: len(data) // 2])
            raise KeyboardInterrupt

    def opener(self, mode="r", *args, **kw):
        fh = real_open(self, mode, *args, **kw)
        return HalfThenInterrupted(fh) if "w" in mode and self.name.startswith(".checkpoint") else fh

    monkeypatch.setattr(pathlib.Path, "open", opener)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, {"format": "advseg-checkpoint-1", "w": torch.zeros(10)})
    monkeypatch.undo()
    assert path.read_bytes() == good
    assert [p.name for p in tmp_path.iterdir()] == [path.name]
