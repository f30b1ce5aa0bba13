"""Base trainer: checkpoints, exact resume, NaN guard, what the loop consumes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from advseg.config import apply_overrides, load_preset
from advseg.runtime.checkpoint import load_checkpoint
from advseg.training.api import prepare_training, train_run
from advseg.training.trainer import Trainer, TrainingDiverged, dice_per_class
from advseg.training.variants import trainer_class


def _cfg(preset: str, *overrides: str):
    return apply_overrides(load_preset(f"{preset}+tiny"), list(overrides))


def _weights(path: Path) -> dict[str, torch.Tensor]:
    state = load_checkpoint(path)
    return {f"{net}.{k}": v for net, sd in state["nets"].items() for k, v in sd.items()}


def test_dice_per_class_counts() -> None:
    truth = np.array([0, 1, 1, 2, 2, 2])
    pred = np.array([0, 1, 2, 2, 2, 0])
    d = dice_per_class(pred, truth, 4)
    assert d[1] == pytest.approx(2 * 1 / (1 + 2))
    assert d[2] == pytest.approx(2 * 2 / (3 + 3))
    assert np.isnan(d[3])


def test_supervised_run_writes_run_folder(tiny_phantom: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = train_run(_cfg("res_unet_aux"), tiny_phantom, out, progress=False)
    for name in (
        "config.yaml",
        "dataset_info.json",
        "checkpoint_last.pt",
        "checkpoint_best.pt",
        "log.jsonl",
        "learning_curves.png",
        "figures/val_000004.png",
        "splits.json",
    ):
        assert (out / name).exists(), name
    state = load_checkpoint(out / "checkpoint_last.pt")
    assert state["iteration"] == 4
    assert {"S", "loss_vox"} <= set(state["nets"])
    assert set(state["rng"]) >= {"torch", "numpy", "python"}
    assert state["config"]["network"]["out_channels"] == 6
    assert 0.0 <= result["best_score"] <= 1.0


def test_channels_last_training_matches_contiguous(tiny_phantom: Path, tmp_path: Path) -> None:
    """The channels-last layout (train.channels_last) is a speed option: same losses, same weights."""
    losses, weights = {}, {}
    for flag in (True, False):
        cfg, data, _ = prepare_training(
            _cfg("res_unet_aux", f"train.channels_last={str(flag).lower()}"),
            tiny_phantom,
            tmp_path / f"r{flag}",
            progress=False,
        )
        trainer = Trainer(cfg, tmp_path / f"r{flag}", data, device="cpu")
        w = trainer.model.encoder[0][0].conv2.weight  # C_in > 1: the two layouts differ
        assert (not w.is_contiguous()) == flag
        losses[flag] = [trainer.training_step()["loss_vox"] for _ in range(3)]
        weights[flag] = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    np.testing.assert_allclose(losses[True], losses[False], rtol=1e-4)
    for k, v in weights[False].items():
        torch.testing.assert_close(weights[True][k], v, rtol=1e-3, atol=1e-4)


def test_refuses_to_overwrite_a_run(tiny_phantom: Path, tmp_path: Path) -> None:
    from advseg.errors import InputError

    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(InputError, match="not empty"):
        train_run(_cfg("res_unet"), tiny_phantom, out, progress=False)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


@pytest.mark.parametrize("preset", ["res_unet_aux", "res_unet_aux_adv_semi"])
def test_resume_is_exact(preset: str, tiny_phantom: Path, tmp_path: Path, run_interrupted) -> None:
    """A run killed after its iteration-2 checkpoint and resumed equals an uninterrupted run."""
    cfg = _cfg(preset, "train.iterations=4", "train.checkpoint_every=2", "train.val_every=0")
    train_run(cfg, tiny_phantom, tmp_path / "a", progress=False)

    assert run_interrupted(cfg, tiny_phantom, tmp_path / "b", crash_at=3) == 2

    wa, wb = _weights(tmp_path / "a" / "checkpoint_last.pt"), _weights(tmp_path / "b" / "checkpoint_last.pt")
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    sa = load_checkpoint(tmp_path / "a" / "checkpoint_last.pt")
    sb = load_checkpoint(tmp_path / "b" / "checkpoint_last.pt")
    assert sa["optimizers"]["S"]["state"][0]["exp_avg"].equal(sb["optimizers"]["S"]["state"][0]["exp_avg"])
    rows_b = [r for r in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    assert len(rows_b) == 4  # the log was rewound to the checkpoint, not duplicated


def test_a_resumed_run_reports_the_seconds_trained_before_the_crash(
    tiny_phantom: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The checkpoint carries the training seconds so far: a run resumed after a crash reports the time all
    its iterations took (the cost column of a results table), not only the resumed call's share."""
    import time

    cfg = _cfg("res_unet_aux", "train.iterations=4", "train.checkpoint_every=2", "train.val_every=0")
    cls = trainer_class(cfg)
    original = cls.training_step

    def slow_then_crash(self):
        if self.iteration == 3:
            raise KeyboardInterrupt
        time.sleep(0.6)  # the two iterations before the checkpoint take at least 1.2 s
        return original(self)

    monkeypatch.setattr(cls, "training_step", slow_then_crash)
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train_run(cfg, tiny_phantom, out, progress=False)
    saved = load_checkpoint(out / "checkpoint_last.pt")
    assert saved["iteration"] == 2 and saved["train_seconds"] >= 1.2
    monkeypatch.setattr(cls, "training_step", original)
    result = train_run(None, tiny_phantom, out, resume=True, progress=False)
    assert result["resumed_at"] == 2
    # the first call's 1.2 s and more are in the total, not only the resumed call's share
    assert result["seconds"] == pytest.approx(saved["train_seconds"] + result["seconds_this_call"])
    assert result["seconds"] - result["seconds_this_call"] >= 1.2


def test_resume_is_exact_with_the_auto_threshold(tiny_phantom: Path, tmp_path: Path, run_interrupted) -> None:
    """adversarial.t_semi: auto is recalibrated at the iteration-2 validation, used by the unlabeled batches
    of iterations 3 and 4 and saved in the checkpoint: a run killed at iteration 3 and resumed equals an
    uninterrupted one (weights, threshold, log)."""
    import json

    cfg = _cfg("res_unet_aux_adv_semi", "adversarial.t_semi=auto", "adversarial.unlabeled_prob=1.0",
               "train.iterations=4", "train.checkpoint_every=2", "train.val_every=2")
    train_run(cfg, tiny_phantom, tmp_path / "a", progress=False)
    assert run_interrupted(cfg, tiny_phantom, tmp_path / "b", crash_at=3) == 2

    wa, wb = _weights(tmp_path / "a" / "checkpoint_last.pt"), _weights(tmp_path / "b" / "checkpoint_last.pt")
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    rows = {r: [json.loads(line) for line in (tmp_path / r / "log.jsonl").read_text().splitlines()]
            for r in ("a", "b")}
    assert rows["a"] == rows["b"]
    val2 = next(r for r in rows["a"] if r["kind"] == "val" and r["iteration"] == 2)
    used = [r["t_semi"] for r in rows["a"] if r["kind"] == "train" and r["iteration"] > 2]
    assert used == [val2["t_semi"]] * 2 == [val2["d_t_calibrated"]] * 2
    sa = load_checkpoint(tmp_path / "a" / "checkpoint_last.pt")
    assert sa["extra"]["t_semi"] == load_checkpoint(tmp_path / "b" / "checkpoint_last.pt")["extra"]["t_semi"]


def test_nan_loss_stops_without_saving(
    tiny_phantom: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = _cfg("res_unet", "train.checkpoint_every=1", "train.val_every=0")
    cfg_t, data, _ = prepare_training(cfg, tiny_phantom, tmp_path / "run", progress=False)
    trainer = Trainer(cfg_t, tmp_path / "run", data)
    real_loss = trainer.loss_vox

    class NanAfterTwo(torch.nn.Module):
        calls = 0

        def forward(self, out, target):
            NanAfterTwo.calls += 1
            loss = real_loss(out, target)
            return loss * float("nan") if NanAfterTwo.calls > 2 else loss

    trainer.loss_vox = NanAfterTwo()
    with pytest.raises(TrainingDiverged, match="NaN"):
        trainer.fit(progress=False)
    state = load_checkpoint(tmp_path / "run" / "checkpoint_last.pt")
    assert state["iteration"] == 2
    assert all(torch.isfinite(v).all() for v in state["nets"]["S"].values() if v.is_floating_point())


def test_pretraining_serves_no_unlabeled_data(tiny_phantom: Path, tmp_path: Path) -> None:
    cfg = _cfg(
        "res_unet_aux_adv_semi",
        "train.iterations=6",
        "adversarial.pretrain_iterations=3",
        "adversarial.unlabeled_prob=1.0",
        "train.val_every=0",
        "train.checkpoint_every=0",
    )
    cfg_t, data, _ = prepare_training(cfg, tiny_phantom, tmp_path / "run", progress=False)
    trainer = trainer_class(cfg_t)(cfg_t, tmp_path / "run", data)
    served = []
    for _ in range(6):
        trainer.training_step()
        trainer.iteration += 1
        served.append(data.unlabeled.served)
    assert served[:3] == [0, 0, 0]
    assert served[3:] == [1, 2, 3]  # batch size 1, one unlabeled batch per iteration after pre-training


def test_early_stopping_on_a_validation_plateau(
    tiny_phantom: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Validation DSC 0.1, 0.5, 0.45, 0.5, 0.4, ...: with patience 3 the run stops 3 validations after
    the best (iteration 2), not at 20; resuming the stopped run trains nothing more."""
    import advseg.training.trainer as trainer_mod

    scores = iter([0.1, 0.5, 0.45, 0.5, 0.4] + [0.3] * 30)

    def fake_dice(pred, truth, num_classes):
        return np.array([np.nan] + [next(scores)] * (num_classes - 1))

    monkeypatch.setattr(trainer_mod, "dice_per_class", fake_dice)
    cfg = _cfg("res_unet", "train.iterations=20", "train.val_every=1", "train.checkpoint_every=0",
               "train.early_stop_patience=3", "train.val_cases=1")
    result = train_run(cfg, tiny_phantom, tmp_path / "run", progress=False)
    assert result["best_iteration"] == 2 and result["iterations"] == 5
    rows = [json.loads(r) for r in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert rows[-1] == {"kind": "stop", "iteration": 5, "best_iteration": 2, "reason": "plateau"}
    assert load_checkpoint(tmp_path / "run" / "checkpoint_last.pt")["iteration"] == 5
    again = train_run(None, tiny_phantom, tmp_path / "run", resume=True, progress=False)
    assert again["iterations"] == 5


def test_resume_with_more_iterations_re_aims_the_learning_rate_decay(
    tiny_phantom: Path, tmp_path: Path
) -> None:
    """A finished 4-iteration run resumed to 8 iterations continues on the 8-iteration schedule (not at
    the old schedule's end, learning rate 0)."""
    def lrs(run: Path) -> dict[int, float]:
        rows = [json.loads(r) for r in (run / "log.jsonl").read_text().splitlines()]
        return {r["iteration"]: r["lr"] for r in rows if r["kind"] == "train"}

    short = _cfg("res_unet", "train.iterations=4", "train.val_every=0")
    train_run(short, tiny_phantom, tmp_path / "a", progress=False)
    assert lrs(tmp_path / "a")[4] == 0.0
    longer = apply_overrides(short, ["train.iterations=8"])
    train_run(longer, tiny_phantom, tmp_path / "a", resume=True, progress=False)
    train_run(longer, tiny_phantom, tmp_path / "b", progress=False)
    resumed, fresh = lrs(tmp_path / "a"), lrs(tmp_path / "b")
    for it in range(5, 9):
        assert resumed[it] == pytest.approx(fresh[it], rel=1e-6), it
    assert resumed[7] > 0


@pytest.mark.parametrize(("pool", "expect"), [
    ("[withheld, dataset, extra]", {"withheld", "dataset", "extra"}),
    ("[dataset]", {"dataset"}),
    ("[extra]", {"extra"}),
    ("[withheld]", {"withheld"}),
])
def test_unlabeled_pool_picks_its_sources(tiny_phantom: Path, tmp_path: Path, pool: str, expect: set) -> None:
    """train.unlabeled_pool: the withheld labeled rest, the dataset's imagesUnlabeled/ and the --unlabeled
    folders are chosen independently (Table II compares a real and a synthesized pool alone)."""
    import shutil

    extra = tmp_path / "synthetic"
    extra.mkdir()
    for i, src in enumerate(sorted((tiny_phantom / "imagesUnlabeled").iterdir())[:2]):
        shutil.copy(src, extra / f"synth_{i:03d}_0000.nii.gz")
    cfg = _cfg("mean_teacher", "train.labeled_fraction=0.5", f"train.unlabeled_pool={pool}")
    _, data, info = prepare_training(cfg, tiny_phantom, tmp_path / "run", unlabeled=[extra], progress=False)
    cases = info["cases"]
    dataset = {p.name.split("_0000")[0].removesuffix(".nii.gz")
               for p in (tiny_phantom / "imagesUnlabeled").iterdir()}
    by_source = {"withheld": set(cases["unlabeled_withheld"]),
                 "dataset": set(cases["unlabeled_extra"]) & dataset,
                 "extra": {n for n in cases["unlabeled_extra"] if n.startswith("synth_")}}
    assert {k for k, v in by_source.items() if v} == expect
    assert set(cases["unlabeled_extra"]) == by_source["dataset"] | by_source["extra"]
    assert len(data.unlabeled.sampler.names) == sum(len(v) for v in by_source.values())


def test_an_empty_unlabeled_pool_is_refused(tiny_phantom: Path, tmp_path: Path) -> None:
    from advseg.errors import InputError

    cfg = _cfg("mean_teacher", "train.labeled_fraction=0.5", "train.unlabeled_pool=[extra]")
    with pytest.raises(InputError, match=r"none found in train.unlabeled_pool \['extra'\]"):
        prepare_training(cfg, tiny_phantom, tmp_path / "run", progress=False)
    with pytest.raises(InputError, match="must be one of"):
        _cfg("mean_teacher", "train.unlabeled_pool=[synthetic]")
