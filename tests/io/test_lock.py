"""The run-folder lock: one writer per folder, stale locks of dead processes taken over."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from advseg.errors import InputError
from advseg.io.lock import LOCK_NAME, RunLock, check_unlocked

HOLD = """
import sys, time
from advseg.io.lock import RunLock
RunLock(sys.argv[1]).acquire()
print("locked", flush=True)
time.sleep(60)
"""


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_acquire_release_and_a_second_holder_is_refused(tmp_path: Path) -> None:
    lock = RunLock(tmp_path).acquire()
    info = json.loads((tmp_path / LOCK_NAME).read_text())
    assert info["pid"] == os.getpid() and info["host"] == socket.gethostname()
    with pytest.raises(InputError, match=f"in use by another advseg run \\(PID {os.getpid()}"):
        RunLock(tmp_path).acquire()
    check_unlocked(tmp_path)  # our own lock does not stop our own checks
    lock.release()
    lock.release()  # twice is harmless
    assert not (tmp_path / LOCK_NAME).exists()
    with RunLock(tmp_path):
        assert (tmp_path / LOCK_NAME).exists()
    assert not (tmp_path / LOCK_NAME).exists()


def test_lock_of_a_live_process_then_taken_over_once_it_is_killed(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(InputError) as info:
            check_unlocked(tmp_path)
        assert f"PID {proc.pid}" in str(info.value) and str(tmp_path) in str(info.value)
        with pytest.raises(InputError, match=f"PID {proc.pid}"):
            RunLock(tmp_path).acquire()
    finally:
        proc.kill()
        proc.wait()
    assert (tmp_path / LOCK_NAME).exists()  # kill -9 leaves the lock behind ...
    check_unlocked(tmp_path)  # ... but it is stale now
    with RunLock(tmp_path):
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()


def test_fake_stale_pid_is_taken_over_but_another_hosts_lock_is_not(tmp_path: Path) -> None:
    stale = {"host": socket.gethostname(), "pid": _dead_pid(), "started": "then"}
    (tmp_path / LOCK_NAME).write_text(json.dumps(stale))
    with RunLock(tmp_path):
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    other = {"host": "some-other-node", "pid": 1, "started": time.strftime("%Y")}
    (tmp_path / LOCK_NAME).write_text(json.dumps(other))
    with pytest.raises(InputError, match="PID 1 on some-other-node"):
        RunLock(tmp_path).acquire()
    assert json.loads((tmp_path / LOCK_NAME).read_text()) == other  # never removed


def test_train_refuses_a_running_runs_folder_and_resumes_over_a_stale_lock(
    tmp_path: Path, tiny_phantom: Path
) -> None:
    from advseg.config import apply_overrides, load_preset
    from advseg.training.api import train_run

    cfg = apply_overrides(load_preset("res_unet+tiny"), ["train.iterations=2"])
    out = tmp_path / "run"
    train_run(cfg, tiny_phantom, out, progress=False)
    assert not (out / LOCK_NAME).exists()  # released at the end
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        before = (out / "checkpoint_last.pt").read_bytes()
        with pytest.raises(InputError, match=f"in use by another advseg run \\(PID {proc.pid}"):
            train_run(None, tiny_phantom, out, resume=True, progress=False)
        assert (out / "checkpoint_last.pt").read_bytes() == before
    finally:
        proc.kill()
        proc.wait()
    longer = apply_overrides(cfg, ["train.iterations=3"])
    train_run(longer, tiny_phantom, out, resume=True, progress=False)  # the stale lock is taken over
    assert not (out / LOCK_NAME).exists()


def test_lock_released_when_training_fails(tmp_path: Path, tiny_phantom: Path, monkeypatch) -> None:
    from advseg.config import apply_overrides, load_preset
    from advseg.training.api import train_run
    from advseg.training.trainer import Trainer

    cfg = apply_overrides(load_preset("res_unet+tiny"), ["train.iterations=2", "train.checkpoint_every=1"])

    def boom(self):
        if self.iteration == 1:
            raise RuntimeError("crash")
        return original(self)

    original = Trainer.training_step
    monkeypatch.setattr(Trainer, "training_step", boom)
    with pytest.raises(RuntimeError, match="crash"):
        train_run(cfg, tiny_phantom, tmp_path / "run", progress=False)
    assert (tmp_path / "run" / "checkpoint_last.pt").exists()
    assert not (tmp_path / "run" / LOCK_NAME).exists()


def test_experiment_cell_in_use_is_neither_cleared_nor_judged(tmp_path: Path) -> None:
    from advseg.config import load_preset
    from advseg.experiments.matrix import _prepare_cell_folder

    cell = tmp_path / "cell"
    cell.mkdir()
    load_preset("res_unet+tiny").save(cell / "config.yaml")  # no checkpoint yet: would be cleared
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(cell)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(InputError, match=f"in use by another advseg run \\(PID {proc.pid}"):
            _prepare_cell_folder(cell, load_preset("res_unet+tiny"))
        assert (cell / "config.yaml").exists()
    finally:
        proc.kill()
        proc.wait()
    assert _prepare_cell_folder(cell, load_preset("res_unet+tiny")) is False  # stale: cleared as before
    assert not cell.exists()
