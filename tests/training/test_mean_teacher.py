"""Mean Teacher trainer: selection, a short run on the tiny phantom set, exact resume with the teacher."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from advseg.config import apply_overrides, load_preset
from advseg.errors import InputError
from advseg.runtime.checkpoint import load_checkpoint
from advseg.training.api import train_run
from advseg.training.variants import trainer_class
from advseg.training.variants.mean_teacher import MeanTeacherTrainer


def _cfg(*overrides: str):
    return apply_overrides(load_preset("mean_teacher+tiny"), ["train.labeled_fraction=0.5", *overrides])


def test_preset_selects_the_mean_teacher_trainer() -> None:
    cfg = _cfg()
    assert trainer_class(cfg) is MeanTeacherTrainer
    assert cfg.uses_unlabeled and not cfg.adversarial.enabled
    both = apply_overrides(cfg, ["adversarial.enabled=true"])
    with pytest.raises(InputError, match="exclusive"):
        trainer_class(both)


def test_short_run_uses_unlabeled_batches_and_a_teacher(tiny_phantom: Path, tmp_path: Path) -> None:
    cfg = _cfg("train.iterations=4", "mean_teacher.rampup_iterations=2", "train.val_every=0")
    train_run(cfg, tiny_phantom, tmp_path / "run", progress=False)
    rows = [json.loads(r) for r in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["kind"] == "train"]
    assert len(train) == 4 and all(r["unlabeled"] == 1 for r in train)
    assert all(r["loss_cons"] >= 0 for r in train)
    assert [r["cons_weight"] for r in train][-2:] == [0.1, 0.1]  # ramp-up over after 2 iterations
    assert train[0]["cons_weight"] < 0.01 and train[0]["ema_alpha"] == 0.0
    state = load_checkpoint(tmp_path / "run" / "checkpoint_last.pt")
    assert set(state["nets"]) >= {"S", "T"}
    s, t = state["nets"]["S"], state["nets"]["T"]
    diffs = [k for k in s if s[k].is_floating_point() and not torch.equal(s[k], t[k])]
    assert diffs  # the teacher is an average, not a copy


def test_resume_is_exact_including_the_teacher(tiny_phantom: Path, tmp_path: Path, run_interrupted) -> None:
    cfg = _cfg("train.iterations=4", "train.checkpoint_every=2", "train.val_every=0")
    train_run(cfg, tiny_phantom, tmp_path / "a", progress=False)
    assert run_interrupted(cfg, tiny_phantom, tmp_path / "b", crash_at=3) == 2
    sa = load_checkpoint(tmp_path / "a" / "checkpoint_last.pt")
    sb = load_checkpoint(tmp_path / "b" / "checkpoint_last.pt")
    for net in ("S", "T"):
        for k, v in sa["nets"][net].items():
            assert torch.equal(v, sb["nets"][net][k]), (net, k)


def test_unlabeled_batch_size(tiny_phantom: Path, tmp_path: Path) -> None:
    from advseg.training.api import prepare_training

    cfg = _cfg("train.batch_size=2", "train.unlabeled_batch_size=1")
    _, data, _ = prepare_training(cfg, tiny_phantom, tmp_path / "run", progress=False)
    assert data.labeled.next()["image"].shape[0] == 2
    assert data.unlabeled.next()["image"].shape[0] == 1


def test_unlabeled_patch_size(tiny_phantom: Path, tmp_path: Path) -> None:
    from advseg.training.api import prepare_training

    cfg = _cfg("train.unlabeled_patch_size=[8, 16, 16]")
    _, data, _ = prepare_training(cfg, tiny_phantom, tmp_path / "run", progress=False)
    assert tuple(data.labeled.next()["image"].shape[2:]) == tuple(cfg.data.patch_size)
    assert tuple(data.unlabeled.next()["image"].shape[2:]) == (8, 16, 16)
    with pytest.raises(InputError, match="divisible"):
        _cfg("train.unlabeled_patch_size=[8, 16, 15]")
    with pytest.raises(InputError, match="one size"):
        _cfg("train.unlabeled_patch_size=[8, 16, 16]", "adversarial.joint_forward=true")
    with pytest.raises(InputError, match="mean_teacher.joint_forward"):
        _cfg("train.unlabeled_patch_size=[8, 16, 16]", "mean_teacher.joint_forward=true")


@pytest.mark.parametrize("joint", [True, False])
def test_separate_passes_normalise_the_labeled_batch_alone(tiny_phantom: Path, tmp_path: Path,
                                                            joint: bool) -> None:
    """With joint_forward false, S's batch-norm layers see the labeled and the unlabeled patches as
    two batches (each pass with its own size); with true, as one batch of both."""
    from advseg.training.api import prepare_training

    cfg = _cfg("train.batch_size=2", "train.unlabeled_batch_size=1", f"mean_teacher.joint_forward={joint}")
    cfg, data, _ = prepare_training(cfg, tiny_phantom, tmp_path / "run", progress=False)
    trainer = MeanTeacherTrainer(cfg, tmp_path / "run", data, device="cpu")
    seen: list[int] = []
    norm = next(m for m in trainer.model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm))
    hook = norm.register_forward_pre_hook(lambda _m, args: seen.append(args[0].shape[0]))
    trainer.training_step()
    hook.remove()
    # S (the hook is on the student only): one batch of 3, or the labeled 2 and the unlabeled 1 apart
    assert seen == ([3] if joint else [2, 1])
