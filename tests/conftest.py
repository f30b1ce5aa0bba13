"""Shared fixtures: a tiny phantom dataset, an isolated preprocessing cache, the real-data path."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dicom_testing import PhantomCT, make_phantom

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

# Test tensors are tiny: one thread avoids OpenMP hand-offs that dominate their cost (and thrash badly
# when anything else runs on the 2 cores). Benchmarks, not tests, measure multi-threaded speed.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Never touch the user's ~/.cache/advseg from a test."""
    monkeypatch.setenv("ADVSEG_CACHE", str(tmp_path_factory.getbasetemp() / "advseg_cache"))


@pytest.fixture(scope="session")
def tiny_phantom(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 labeled, 3 unlabeled and 2 test phantom cases of 32 x 64 x 64 voxels (read-only for tests)."""
    from advseg.data.phantom import write_phantom_dataset

    root = tmp_path_factory.mktemp("phantom") / "data"
    write_phantom_dataset(root, labeled=4, unlabeled=3, test=2, shape=(32, 64, 64), seed=0)
    return root


@pytest.fixture(scope="session")
def hippocampus() -> Path:
    path = SHARED_DATA / "msd-hippocampus"
    if not path.exists():
        pytest.skip("../shared/data/msd-hippocampus not present (fresh clone without the shared data)")
    return path


@pytest.fixture(scope="session")
def tiny_run(tiny_phantom: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trained (4 iterations, tiny preset) semi-adversarial run folder on the tiny phantom set."""
    from advseg.config import load_preset
    from advseg.training.api import train_run

    out = tmp_path_factory.mktemp("runs") / "semi"
    mp = pytest.MonkeyPatch()
    mp.setenv("ADVSEG_CACHE", str(tmp_path_factory.getbasetemp() / "advseg_cache"))
    try:
        train_run(load_preset("res_unet_aux_adv_semi+tiny"), tiny_phantom, out, progress=False)
    finally:
        mp.undo()
    return out


class _Crash(Exception):
    """Stands in for a kill: raised inside the training loop."""


@pytest.fixture
def run_interrupted(monkeypatch: pytest.MonkeyPatch):
    """``run(cfg, data, out, crash_at)``: train into ``out``, crash when the loop reaches iteration
    ``crash_at``, then resume from ``out`` to the end. Returns the iteration the resume started from."""
    from advseg.runtime.checkpoint import load_checkpoint
    from advseg.training.api import train_run
    from advseg.training.variants import trainer_class

    def run(cfg, data: Path, out: Path, crash_at: int) -> int:
        cls = trainer_class(cfg)
        original = cls.training_step

        def crashing(self):
            if self.iteration == crash_at:
                raise _Crash()
            return original(self)

        monkeypatch.setattr(cls, "training_step", crashing)
        with pytest.raises(_Crash):
            train_run(cfg, data, out, progress=False)
        monkeypatch.setattr(cls, "training_step", original)
        resumed_from = load_checkpoint(out / "checkpoint_last.pt")["iteration"]
        train_run(None, data, out, resume=True, progress=False)
        return resumed_from

    return run


@pytest.fixture(scope="session")
def phantom_ct(tmp_path_factory: pytest.TempPathFactory) -> PhantomCT:
    """One 16 x 64 x 64 phantom case as NIfTI (image + per-organ masks); read-only for tests."""
    return make_phantom(tmp_path_factory.mktemp("phantom_ct"))


@pytest.fixture(scope="session")
def phantom_series(phantom_ct: PhantomCT, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The phantom case as a CT series written by advseg (``CT_0000.dcm``, ...); read-only."""
    from advseg.io import Volume
    from advseg.io.dicom.ctwrite import write_ct_series

    folder = tmp_path_factory.mktemp("series") / "ct"
    write_ct_series(folder, Volume(phantom_ct.image, phantom_ct.affine), patient_id="PAT001")
    return folder
