"""D diagnostics of the adversarial trainer: known answers, mask source, the auto threshold, the log."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from advseg.config import apply_overrides, load_preset
from advseg.data.sampling import PatchDataset
from advseg.losses.semi import softmax_confidence
from advseg.metrics.confidence import roi_mask
from advseg.training.diagnostics import ConfidenceDiagnostics, pool_summary
from advseg.training.trainer import BatchSource, TrainData
from advseg.training.variants.adversarial import AdversarialTrainer

CLASSES = {0: "background", 1: "organ"}


def _case() -> tuple[np.ndarray, np.ndarray]:
    truth = np.zeros((6, 10, 10), np.int64)
    truth[2:4, 3:7, 3:7] = 1
    pred = truth.copy()
    pred[2, 3:7, 3:5] = 0  # S misses 8 organ voxels
    pred[3, 7, 3:7] = 1  # and adds 4
    return truth, pred


def test_a_d_that_is_one_exactly_where_s_is_right_scores_auc_one() -> None:
    truth, pred = _case()
    correct = pred == truth
    diag = ConfidenceDiagnostics(CLASSES)
    diag.add_case(truth, pred, softmax=np.where(correct, 0.9, 0.6), d_fake=correct.astype(np.float32),
                  d_real=np.ones(truth.shape, np.float32))
    assert diag.calibrate("d", 0.97) == 0.0  # every voxel with D > 0 is right
    out = diag.summary(threshold=0.5, target_accuracy=0.999)  # above the region's accuracy (n - 12) / n
    assert out["region_accuracy"] < 0.999
    assert out["conf_auc_correct"] == 1.0 and out["softmax_auc_correct"] == 1.0
    assert out["d_auc_real_fake"] == 1.0  # D = 1 on x * y, 0 on x * S(x) where S is wrong
    assert out["wrong_voxels"] == 12
    n = out["roi_voxels"]
    assert n == int(np.count_nonzero(roi_mask(truth, pred)))
    assert out["region_accuracy"] == pytest.approx((n - 12) / n)
    assert out["d_pass_fraction"] == pytest.approx((n - 12) / n) and out["d_pass_accuracy"] == 1.0
    assert out["softmax_pass_fraction"] == 1.0  # 0.6 and 0.9 both pass 0.5
    assert out["softmax_t_calibrated"] == pytest.approx(0.6) and out["d_t_calibrated"] == 0.0
    assert out["d_pass_fraction_calibrated"] == pytest.approx((n - 12) / n)
    # per class of S's label: the 4 added organ voxels are S's only wrong "organ" voxels
    assert out["region_accuracy_organ"] == pytest.approx(24 / 28)
    assert out["d_pass_accuracy_organ"] == 1.0
    assert sum(out["d_reliability_counts"]) == n and out["d_reliability_correct"][-1] == n - 12
    assert diag.summary(0.5, 0.97) == {}  # the collection was emptied


def test_a_constant_d_scores_one_half() -> None:
    truth, pred = _case()
    diag = ConfidenceDiagnostics(CLASSES)
    const = np.full(truth.shape, 0.4, np.float32)
    diag.add_case(truth, pred, softmax=const, d_fake=const, d_real=const)
    out = diag.summary(threshold=0.2, target_accuracy=0.999)
    assert out["conf_auc_correct"] == 0.5 and out["d_auc_real_fake"] == 0.5
    assert out["softmax_auc_correct"] == 0.5
    assert out["d_pass_fraction"] == 1.0  # the seed's failure mode: every voxel passes T_semi = 0.2
    assert out["d_pass_accuracy"] == pytest.approx(out["region_accuracy"])
    assert out["d_t_calibrated"] == 1.0  # a constant cannot beat the region's accuracy: nothing passes


def test_without_a_voxel_map_only_softmax_entries() -> None:
    truth, pred = _case()
    diag = ConfidenceDiagnostics(CLASSES)
    diag.add_case(truth, pred, softmax=np.full(truth.shape, 0.7))
    out = diag.summary(0.5, 0.97)
    assert "softmax_auc_correct" in out and "conf_auc_correct" not in out and "d_pass_fraction" not in out
    assert diag.calibrate("d", 0.97) is None


def test_pool_summary_histograms_and_pass_fraction() -> None:
    pred = np.zeros((4, 8, 8), np.int64)
    pred[1:3, 3:5, 3:5] = 1
    d = np.full(pred.shape, 0.1, np.float32)
    d[pred > 0] = 0.92
    sm = np.full(pred.shape, 0.55, np.float32)
    out = pool_summary([pred], [sm], [d], threshold=0.5, source="d", dilation_voxels=1)
    assert sum(out["pool_d_hist"]) == pred.size and sum(out["pool_softmax_hist"]) == pred.size
    roi = int(sum(out["pool_d_hist_roi"]))
    assert out["pool_d_hist_roi"][-2] == 8 and roi > 8  # 0.92 falls in the bin [0.9, 0.95)
    assert out["pool_pass_fraction"] == pytest.approx(8 / pred.size)
    assert out["pool_pass_fraction_roi"] == pytest.approx(8 / roi)
    soft = pool_summary([pred], [sm], None, threshold=0.5, source="softmax")
    assert soft["pool_pass_fraction"] == 1.0 and "pool_d_hist" not in soft


# ------------------------------------------------------------------------------------- trainer level
def _cfg(*overrides: str):
    return apply_overrides(load_preset("res_unet_aux_adv_semi+tiny"),
                           ["data.patch_size=[8, 32, 32]", "network.out_channels=2", *overrides])


def _data(cfg) -> TrainData:
    rng = np.random.default_rng(0)
    imgs, lbls = [], []
    for _ in range(2):
        lbl = np.zeros((8, 32, 32), np.int64)
        lbl[2:6, 8:20, 10:22] = 1
        imgs.append((lbl + rng.normal(0, 0.5, lbl.shape))[None].astype(np.float32))
        lbls.append(lbl)
    labeled = BatchSource(PatchDataset(imgs, lbls, cfg.data.patch_size, 0.0, None, seed=1), 1)
    unlabeled = BatchSource(PatchDataset(imgs, None, cfg.data.patch_size, 0.0, None, seed=2), 1)
    return TrainData(labeled=labeled, unlabeled=unlabeled, labels=CLASSES, val_names=["a", "b"],
                     val_images=imgs, val_labels=lbls)


def _val_row(run: Path) -> dict:
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    return [r for r in rows if r["kind"] == "val"][-1]


@pytest.mark.parametrize("source", ["d", "softmax"])
def test_auto_threshold_is_recalibrated_at_validation_and_checkpointed(source: str, tmp_path: Path) -> None:
    cfg = _cfg("adversarial.t_semi=auto", f"adversarial.mask_source={source}",
               "adversarial.t_semi_target_accuracy=0.9", "train.figure_every=1000")
    trainer = AdversarialTrainer(cfg, tmp_path, _data(cfg), device="cpu")
    assert trainer.t_semi == 0.9  # before any calibration: the target accuracy
    trainer.training_step()
    trainer.iteration = 1
    trainer.validate()
    row = _val_row(tmp_path)
    assert row["t_semi"] == trainer.t_semi == row[f"{source}_t_calibrated"]
    for key in ("softmax_auc_correct", "conf_auc_correct", "d_auc_real_fake", "region_accuracy",
                "d_pass_fraction", "softmax_pass_fraction", "pool_pass_fraction"):
        assert 0.0 <= row[key] <= 1.0, key
    assert row["pool_cases"] == 2 and sum(row["pool_d_hist"]) == 2 * 8 * 32 * 32
    # the threshold travels with the checkpoint
    state = trainer.extra_state()
    other = AdversarialTrainer(cfg, tmp_path / "other", _data(cfg), device="cpu")
    assert other.t_semi == 0.9
    other.load_extra_state(state)
    assert other.t_semi == trainer.t_semi


@pytest.mark.parametrize("source", ["d", "softmax", "product"])
def test_mask_source_selects_the_confidence_of_l_semi(
    source: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import advseg.training.variants.adversarial as adv_module

    cfg = _cfg(f"adversarial.mask_source={source}", "adversarial.pretrain_iterations=0",
               "adversarial.unlabeled_prob=1.0", "adversarial.t_semi=0.6")
    trainer = AdversarialTrainer(cfg, tmp_path, _data(cfg), device="cpu")
    calls = []
    real_soft, real_d = adv_module.masked_self_training_loss, adv_module.semi_supervised_loss

    def spy_soft(logits, conf, threshold):
        is_softmax = torch.equal(conf, softmax_confidence(logits))
        calls.append(("softmax" if is_softmax else "product", threshold))
        if not is_softmax:  # D's confidence times the max-softmax: never above the max-softmax
            assert torch.all(conf <= softmax_confidence(logits) + 1e-6)
        return real_soft(logits, conf, threshold)

    def spy_d(logits, d_logits, threshold):
        calls.append(("d", threshold))
        return real_d(logits, d_logits, threshold)

    monkeypatch.setattr(adv_module, "masked_self_training_loss", spy_soft)
    monkeypatch.setattr(adv_module, "semi_supervised_loss", spy_d)
    logs = trainer.training_step()
    assert calls == [(source, 0.6)]
    assert logs["t_semi"] == 0.6 and 0.0 <= logs["semi_fraction"] <= 1.0


def test_diagnostics_can_be_switched_off(tmp_path: Path) -> None:
    cfg = _cfg("adversarial.diagnostics=false", "train.figure_every=1000")
    trainer = AdversarialTrainer(cfg, tmp_path, _data(cfg), device="cpu")
    trainer.validate()
    row = _val_row(tmp_path)
    assert row["t_semi"] == 0.2 and "softmax_auc_correct" not in row and "dsc_mean" in row


# ------------------------------------------------------------------------------------- end to end
DIAGNOSTIC_KEYS = ("d_auc_real_fake", "conf_auc_correct", "softmax_auc_correct", "t_semi", "region_accuracy",
                   "d_pass_fraction", "d_pass_accuracy", "softmax_pass_fraction", "pool_pass_fraction")


def test_tiny_semi_adversarial_run_logs_the_diagnostics(tiny_run: Path) -> None:
    """The tiny preset's 4 iterations validate at 2 and 4: every diagnostic is in the log, in [0, 1]."""
    rows = [json.loads(line) for line in (tiny_run / "log.jsonl").read_text().splitlines()]
    val = [r for r in rows if r["kind"] == "val"]
    assert [r["iteration"] for r in val] == [2, 4]
    for r in val:
        for key in DIAGNOSTIC_KEYS:
            value = r.get(key)
            assert value is not None and math.isfinite(value) and 0.0 <= value <= 1.0, (key, value)
        assert r["t_semi"] == 0.2  # the study's fixed threshold
        assert sum(r["d_reliability_counts"]) == r["roi_voxels"] > 0
    assert (tiny_run / "learning_curves.png").stat().st_size > 0


def test_softmax_mask_preset_is_the_study_with_a_calibrated_max_softmax_mask() -> None:
    from advseg.config import load_preset
    from advseg.training.variants import trainer_class

    seed, better = load_preset("res_unet_aux_adv_semi"), load_preset("res_unet_aux_adv_semi_softmax")
    assert trainer_class(better) is AdversarialTrainer
    assert (better.adversarial.mask_source, better.adversarial.t_semi) == ("softmax", "auto")
    assert (seed.adversarial.mask_source, seed.adversarial.t_semi) == ("d", 0.2)  # the paper's form
    assert better.adversarial.lambda_semi == seed.adversarial.lambda_semi and better.adversarial.semi
