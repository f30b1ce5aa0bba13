"""The other papers' variants: Kohl (pure / hybrid), ASDNet, Tan 2D, Pan fusion - each a trainer subclass."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from advseg.config import apply_overrides, load_preset
from advseg.data.sampling import PatchDataset
from advseg.errors import InputError
from advseg.networks.confidence import has_confidence_map
from advseg.runtime.checkpoint import load_checkpoint
from advseg.training.trainer import BatchSource, TrainData
from advseg.training.variants import trainer_class
from advseg.training.variants.asdnet import AsdnetTrainer
from advseg.training.variants.fusion import FusionTrainer
from advseg.training.variants.kohl import KohlTrainer
from advseg.training.variants.registry import ADVERSARIAL_TRAINERS
from advseg.training.variants.tan2d import Tan2DTrainer

LABELS = {0: "background", 1: "bladder", 2: "bone", 3: "obturator_internus", 4: "femur_l", 5: "femur_r"}
VARIANTS = {
    "pure_adv": KohlTrainer,
    "hybrid_adv": KohlTrainer,
    "asdnet": AsdnetTrainer,
    "semi_adv_2d": Tan2DTrainer,
    "fusion_pair": FusionTrainer,
}


# 8-slice slabs halve the cost of the 3D runs (2D runs use the last two entries only): the shared
# 2-core machine is the bottleneck of the unit suite.
SMALL_PATCH = "data.patch_size=[8, 32, 32]"


def _cfg(preset: str, *overrides: str):
    return apply_overrides(load_preset(f"{preset}+tiny"), [SMALL_PATCH, *overrides])


def _memory_data(cfg, semi: bool, n_cases: int = 2, shape=(12, 36, 36)) -> TrainData:
    """TrainData from random in-memory cases (no preprocessing): for step-level tests."""
    rng = np.random.default_rng(0)
    imgs = [rng.uniform(-1, 1, (1, *shape)).astype(np.float32) for _ in range(n_cases)]
    lbls = [rng.integers(0, 6, shape).astype(np.int64) for _ in range(n_cases)]
    patch = cfg.data.patch_size[1:] if cfg.network.spatial_dims == 2 else cfg.data.patch_size
    labeled = BatchSource(PatchDataset(imgs, lbls, patch, 0.0, None, seed=1), cfg.train.batch_size)
    unlabeled = None
    if semi:
        unlabeled = BatchSource(PatchDataset(imgs, None, patch, 0.0, None, seed=2), cfg.train.batch_size)
    return TrainData(labeled=labeled, unlabeled=unlabeled, labels=LABELS)


def _train_rows(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    return [r for r in rows if r["kind"] == "train"]


# ------------------------------------------------------------------------------------------- registry
def test_every_variant_preset_selects_its_trainer() -> None:
    for preset, cls in VARIANTS.items():
        for size in ("tiny", "cpu"):
            cfg = load_preset(f"{preset}+{size}")
            assert cfg.adversarial.enabled
            assert trainer_class(cfg) is cls, (preset, size)
    assert set(ADVERSARIAL_TRAINERS) >= {"semi_adv", "pure", "hybrid", "asdnet", "semi_adv_2d", "fusion"}


# ------------------------------------------------------------------------------------------- step level
def test_asdnet_uses_region_attention_loss(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import advseg.training.variants.asdnet as asdnet_module

    cfg = _cfg("asdnet", "adversarial.pretrain_iterations=0", "adversarial.unlabeled_prob=1.0",
               "adversarial.t_semi=0.35")
    trainer = AsdnetTrainer(cfg, tmp_path, _memory_data(cfg, semi=True))
    calls = []
    real = asdnet_module.region_attention_loss

    def spy(logits, d_logits, gamma):
        calls.append(gamma)
        return real(logits, d_logits, gamma)

    monkeypatch.setattr(asdnet_module, "region_attention_loss", spy)
    logs = trainer.training_step()
    assert calls == [0.35]
    assert {"loss_semi", "loss_adv_u", "semi_fraction"} <= set(logs)
    # L_S = L_gdice_att + lambda1 (L_adv + L_adv_u) + lambda2 L_semi, lambda1 = 0.03, lambda2 = 0.3
    expected = logs["loss_vox"] + 0.03 * (logs["loss_adv"] + logs["loss_adv_u"]) + 0.3 * logs["loss_semi"]
    assert logs["loss_s"] == pytest.approx(expected, rel=1e-5)
    assert trainer.loss_vox.base.__class__.__name__ == "GeneralizedDiceAttention"


def test_tan2d_is_supervised_during_its_first_phase(tmp_path: Path) -> None:
    cfg = _cfg("semi_adv_2d", "adversarial.pretrain_iterations=1", "adversarial.unlabeled_prob=1.0")
    trainer = Tan2DTrainer(cfg, tmp_path, _memory_data(cfg, semi=True))
    first = trainer.training_step()
    trainer.iteration += 1
    second = trainer.training_step()
    assert first["loss_s"] == pytest.approx(first["loss_vox"]) and "loss_adv" not in first
    assert "loss_d" in first  # D learns from the start
    assert {"loss_adv", "loss_adv_u", "loss_semi"} <= set(second)


class _FakeSegmenter(nn.Module):
    """Logits: class 1 where the image is positive, class 0 elsewhere; records its inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.inputs: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.inputs.append(x.detach().clone())
        logits = torch.full((x.shape[0], 6, *x.shape[2:]), -10.0)
        logits[:, 0] = 0.0
        logits[:, 1] = 4 * x[:, 0]
        return logits


class _ForegroundJudge(nn.Module):
    """A fake fusion D: the segmentation with more (or, ``prefer_more=False``, less) class 1 is better."""

    def __init__(self, prefer_more: bool) -> None:
        super().__init__()
        self.sign = 1.0 if prefer_more else -1.0
        self.images: list[torch.Tensor] = []

    def forward(self, image: torch.Tensor, seg_a: torch.Tensor, seg_b: torch.Tensor) -> torch.Tensor:
        self.images.append(image)
        return (self.sign * 100 * (self.foreground(seg_a) - self.foreground(seg_b))).unsqueeze(1)

    @staticmethod
    def foreground(seg: torch.Tensor) -> torch.Tensor:
        return (seg.argmax(1) == 1).flatten(1).float().mean(1)


@pytest.mark.parametrize("prefer_more", [True, False])
def test_fusion_pseudo_label_is_the_segmentation_d_prefers(tmp_path: Path, prefer_more: bool) -> None:
    cfg = _cfg("fusion_pair", "adversarial.noise_std=0.5")
    trainer = FusionTrainer(cfg, tmp_path, _memory_data(cfg, semi=True))
    trainer.model = _FakeSegmenter()
    trainer.D = _ForegroundJudge(prefer_more)
    torch.manual_seed(3)
    image = torch.randn(3, 1, 4, 8, 8) * 0.3
    logits = trainer.model(image)
    labels, took_noisy = trainer.pseudo_label(image, logits)
    noisy = trainer.model.inputs[-1]
    assert not torch.equal(noisy, image)
    own, other = image[:, 0] > 0, noisy[:, 0] > 0
    for i in range(3):
        margin = own[i].float().mean() - other[i].float().mean()
        assert margin != 0  # a tie would go to S(x) whatever D prefers
        pick_own = bool(margin > 0) == prefer_more
        expected = own[i] if pick_own else other[i]
        assert torch.equal(labels[i], expected.long()), i
        assert bool(took_noisy[i]) == (not pick_own)
    # D judged the pair against the original image and against its noised copy
    assert torch.equal(trainer.D.images[0], image) and torch.equal(trainer.D.images[1], noisy)


def test_fusion_schedule_is_supervised_first_and_last(tmp_path: Path) -> None:
    cfg = _cfg("fusion_pair", "train.iterations=7", "adversarial.pretrain_iterations=2")
    trainer = FusionTrainer(cfg, tmp_path, _memory_data(cfg, semi=True))
    wants = []
    for it in range(7):
        trainer.iteration = it
        wants.append(trainer.wants_unlabeled())
    assert wants == [False, False, True, True, True, False, False]  # tail = pretrain_iterations = 2
    trainer.cfg = apply_overrides(cfg, ["adversarial.supervised_tail=0"])
    trainer.iteration = 6
    assert trainer.wants_unlabeled()


def test_fusion_discriminator_step_poisons_both_masks(tmp_path: Path, monkeypatch) -> None:
    import advseg.training.variants.fusion as fusion_module

    cfg = _cfg("fusion_pair", "adversarial.mask_poison_std=0.2")
    trainer = FusionTrainer(cfg, tmp_path, _memory_data(cfg, semi=True))
    stds = []
    real = fusion_module.mask_poisoning

    def spy(target, std):
        stds.append(std)
        return real(target, std)

    monkeypatch.setattr(fusion_module, "mask_poisoning", spy)
    logs = trainer.training_step()
    assert stds == [0.2, 0.2]
    assert logs["d_real"] + logs["d_fake"] == pytest.approx(1.0)
    assert "loss_adv" not in logs  # S gets no adversarial term


# ------------------------------------------------------------------------------------------- end to end
def _check_losses(rows: list[dict]) -> None:
    """Every logged loss is finite, and S's and D's totals change from iteration to iteration."""
    keys = {k for r in rows for k in r if k.startswith("loss")}
    assert {"loss_s", "loss_d"} <= keys
    for k in keys:
        vals = [r[k] for r in rows if k in r]
        assert all(v is not None and math.isfinite(v) for v in vals), (k, vals)
    for k in ("loss_s", "loss_d"):
        assert len({r[k] for r in rows}) > 1, (k, [r[k] for r in rows])


@pytest.mark.parametrize("preset", ["pure_adv", "asdnet", "semi_adv_2d", "fusion_pair"])
def test_variant_trains_on_the_tiny_phantom(preset: str, tiny_phantom: Path, tmp_path: Path) -> None:
    """3 iterations via train_run (hybrid_adv: see the resume test). Pre-training is 1 iteration and an
    unlabeled batch is drawn every time after it, so the semi-supervised terms run (fusion: iteration 1;
    its supervised tail is 1 too)."""
    from advseg.training.api import train_run

    cfg = _cfg(preset, "train.iterations=3", "adversarial.pretrain_iterations=1",
               "adversarial.unlabeled_prob=1.0", "train.val_every=3", "train.checkpoint_every=3")
    out = tmp_path / "run"
    result = train_run(cfg, tiny_phantom, out, progress=False)
    rows = _train_rows(out)
    assert len(rows) == 3
    _check_losses(rows)
    assert 0.0 <= result["best_score"] <= 1.0
    # D diagnostics at the validation: S's max-softmax always, D's AUCs where D gives a per-voxel map
    val = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()][-1]
    assert val["kind"] == "val" and 0.0 <= val["softmax_auc_correct"] <= 1.0
    assert ("conf_auc_correct" in val) == has_confidence_map(cfg)
    if has_confidence_map(cfg):
        assert 0.0 <= val["conf_auc_correct"] <= 1.0 and 0.0 <= val["d_auc_real_fake"] <= 1.0
    if cfg.adversarial.semi:
        assert [("loss_semi" in r) for r in rows] == ([False, True, False] if preset == "fusion_pair"
                                                      else [False, True, True])
    if preset == "pure_adv":
        # L_S = -log D(x, S(x)) alone (lambda_adv = 1); L_mce is logged but not trained
        assert all(r["loss_s"] == pytest.approx(r["loss_adv"], rel=1e-6) for r in rows)
        assert all(math.isfinite(r["loss_vox"]) for r in rows)
    if preset == "semi_adv_2d":
        _check_2d_prediction(out, tiny_phantom)


def _check_2d_prediction(run: Path, data: Path) -> None:
    """The 2D network segments a whole 3D volume slice by slice, in the input's geometry."""
    from advseg.inference.api import load_model
    from advseg.io import read_volume

    model = load_model(run)
    assert model.cfg.network.spatial_dims == 2
    image = read_volume(sorted((data / "imagesTs").glob("*.nii*"))[0])
    pred = model.predict_volume(image)
    assert pred.labels.array.shape == image.array.shape
    assert pred.labels.array.max() < 6


def test_kohl_resume_is_exact(tiny_phantom: Path, tmp_path: Path, run_interrupted) -> None:
    """hybrid_adv: k = 3 D steps, each on a fresh labeled batch, per S step; and a run killed after its
    iteration-2 checkpoint and resumed equals an uninterrupted run (S, D, both optimizers, schedulers,
    sampler, log)."""
    from advseg.training.api import train_run

    cfg = _cfg("hybrid_adv", "train.iterations=3", "train.checkpoint_every=2", "train.val_every=0")
    train_run(cfg, tiny_phantom, tmp_path / "a", progress=False)
    sa = load_checkpoint(tmp_path / "a" / "checkpoint_last.pt")
    assert int(sa["optimizers"]["S"]["state"][0]["step"]) == 3
    assert int(sa["optimizers"]["D"]["state"][0]["step"]) == 9
    assert sa["data"]["labeled"]["served"] == 9 * cfg.train.batch_size  # a fresh batch per D step
    rows_a = _train_rows(tmp_path / "a")
    _check_losses(rows_a)
    # hybrid: L_S = L_mce / 2 - log D(x, S(x))
    assert all(r["loss_s"] == pytest.approx(0.5 * r["loss_vox"] + r["loss_adv"], rel=1e-5) for r in rows_a)

    assert run_interrupted(cfg, tiny_phantom, tmp_path / "b", crash_at=2) == 2

    sb = load_checkpoint(tmp_path / "b" / "checkpoint_last.pt")
    assert sb["iteration"] == 3
    for net in ("S", "D"):
        for k, v in sa["nets"][net].items():
            assert torch.equal(v, sb["nets"][net][k]), (net, k)
        for pid, st in sa["optimizers"][net]["state"].items():
            other = sb["optimizers"][net]["state"][pid]
            assert torch.equal(st["exp_avg_sq"], other["exp_avg_sq"]), (net, pid)
    assert sa["schedulers"] == sb["schedulers"]
    assert sa["data"] == sb["data"]
    assert [r["loss_d"] for r in rows_a] == [r["loss_d"] for r in _train_rows(tmp_path / "b")]


# ------------------------------------------------------------------------------------- D levers (issue 10)
def _params(net: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def test_d_warmup_trains_d_alone_on_a_frozen_s(tmp_path: Path) -> None:
    from advseg.training.variants.adversarial import AdversarialTrainer

    cfg = _cfg("res_unet_aux_adv_semi", "adversarial.d_warmup_iterations=1", "adversarial.unlabeled_prob=1.0",
               "adversarial.pretrain_iterations=0")
    trainer = AdversarialTrainer(cfg, tmp_path, _memory_data(cfg, semi=True))
    s0, d0 = _params(trainer.model), _params(trainer.D)
    logs = trainer.training_step()
    assert logs["d_warmup"] == 1 and logs["unlabeled"] == 0 and "loss_d" in logs
    s1, d1 = _params(trainer.model), _params(trainer.D)
    assert all(torch.equal(s0[k], s1[k]) for k in s0)  # S frozen, BN statistics too (eval mode)
    assert any(not torch.equal(d0[k], d1[k]) for k in d0)
    trainer.iteration = 1  # warm-up over: the ordinary step, S learns
    logs = trainer.training_step()
    assert "d_warmup" not in logs and "loss_adv" in logs
    assert any(not torch.equal(s1[k], v) for k, v in _params(trainer.model).items())


def test_d_target_errors_calls_fake_only_where_s_is_wrong(tmp_path: Path, monkeypatch) -> None:
    import advseg.training.variants.adversarial as adv_module
    from advseg.training.variants.adversarial import AdversarialTrainer

    cfg = _cfg("res_unet_aux_adv", "adversarial.d_target=errors", "adversarial.d_label_smoothing=0.1",
               "adversarial.d_instance_noise=0.05")
    trainer = AdversarialTrainer(cfg, tmp_path, _memory_data(cfg, semi=False))
    seen = {}
    real_loss = adv_module.discriminator_loss

    def spy(d_real, d_fake, real_target=1.0, fake_target=0.0):
        seen["real_target"], seen["fake_target"] = real_target, fake_target
        return real_loss(d_real, d_fake, real_target, fake_target)

    monkeypatch.setattr(adv_module, "discriminator_loss", spy)
    batch = trainer.next_labeled()
    fake = adv_module.onehot(batch["label"].clone(), 6, dtype=torch.float32)
    fake[:, :, 0] = 0
    fake[:, 0, 0] = 1  # S "says" background on the first slice, the truth elsewhere
    trainer.discriminator_step(batch, fake)
    target = seen["fake_target"][:, 0]
    right = batch["label"] == fake.argmax(1)
    assert seen["real_target"] == pytest.approx(0.9)
    assert torch.allclose(target[right], torch.tensor(0.9)) and torch.all(target[~right] == 0)
    assert (~right).any() and right.any()
    with pytest.raises(InputError, match="d_target"):
        apply_overrides(cfg, ["adversarial.d_target=nonsense"])


def test_init_from_starts_s_from_another_runs_weights(
    tiny_run: Path, tiny_phantom: Path, tmp_path: Path
) -> None:
    from advseg.training.api import train_run

    source = load_checkpoint(tiny_run / "checkpoint_last.pt")["nets"]["S"]
    cfg = apply_overrides(load_preset("res_unet_aux_adv_semi+tiny"),
                          [f"train.init_from={tiny_run / 'checkpoint_last.pt'}", "train.iterations=1",
                           "adversarial.d_warmup_iterations=1", "train.val_every=0"])
    train_run(cfg, tiny_phantom, tmp_path / "run", progress=False)
    after = load_checkpoint(tmp_path / "run" / "checkpoint_last.pt")["nets"]["S"]
    assert all(torch.equal(source[k], after[k]) for k in source)  # loaded, then frozen by the warm-up
    bad = apply_overrides(cfg, [f"train.init_from={tmp_path / 'nope.pt'}"])
    with pytest.raises(InputError, match="checkpoint not found"):
        train_run(bad, tiny_phantom, tmp_path / "run2", progress=False)
    assert not (tmp_path / "run2").exists()


def test_joint_forward_gives_the_same_terms_in_eval_mode_batch_norm(tmp_path: Path) -> None:
    """One S/D pass over labeled + unlabeled equals two passes when batch norm uses running statistics
    (in training mode the only difference is BN's batch statistics over both batches)."""
    from advseg.training.variants.adversarial import AdversarialTrainer

    terms = {}
    for joint in (False, True):
        cfg = _cfg("res_unet_aux_adv_semi", f"adversarial.joint_forward={str(joint).lower()}",
                   "adversarial.pretrain_iterations=0", "adversarial.unlabeled_prob=1.0")
        trainer = AdversarialTrainer(cfg, tmp_path / str(joint), _memory_data(cfg, semi=True))
        trainer.model.eval()
        batch, unl = trainer.next_labeled(), trainer.next_unlabeled()
        with torch.no_grad():
            t, logs, _ = trainer.segmenter_losses(batch, unl)
        terms[joint] = {k: float(v) for k, v in t.items()} | {"semi_fraction": logs["semi_fraction"]}
    assert terms[True].keys() == terms[False].keys() == {"loss_vox", "loss_adv", "loss_adv_u", "loss_semi",
                                                          "semi_fraction"}
    for k in terms[False]:
        assert terms[True][k] == pytest.approx(terms[False][k], rel=1e-4, abs=1e-6), k


def test_errors_target_d_logs_and_monitors_the_wrong_voxels(tmp_path: Path) -> None:
    from advseg.training.variants.adversarial import AdversarialTrainer

    cfg = _cfg("res_unet_aux_adv", "adversarial.d_target=errors")
    trainer = AdversarialTrainer(cfg, tmp_path, _memory_data(cfg, semi=False))
    batch = trainer.next_labeled()
    fake = torch.nn.functional.one_hot(batch["label"].long(), 6).movedim(-1, 1).float()
    assert "d_fake_wrong" not in trainer.discriminator_step(batch, fake)  # S right everywhere
    fake[:, :, 0] = 0
    fake[:, 0, 0] = 1
    logs = trainer.discriminator_step(batch, fake)
    assert 0 <= logs["d_fake_wrong"] <= 1 and 0 <= logs["d_real_wrong"] <= 1


def test_softmax_mask_without_unlabeled_adversarial_term_skips_d_on_the_unlabeled_batch(
    tmp_path: Path,
) -> None:
    from advseg.training.variants.adversarial import AdversarialTrainer

    cfg = _cfg("res_unet_aux_adv_semi_softmax", "adversarial.lambda_adv_unlabeled=0.0",
               "adversarial.pretrain_iterations=0", "adversarial.unlabeled_prob=1.0")
    trainer = AdversarialTrainer(cfg, tmp_path, _memory_data(cfg, semi=True))
    calls = []
    real = trainer.d_forward
    trainer.d_forward = lambda *a, **k: calls.append(a[0].shape[0]) or real(*a, **k)
    terms, logs, _ = trainer.segmenter_losses(trainer.next_labeled(), trainer.next_unlabeled())
    assert len(calls) == 1  # D on the labeled batch only
    assert "loss_adv_u" not in terms and "loss_semi" in terms and 0 <= logs["semi_fraction"] <= 1
    with_term = apply_overrides(cfg, ["adversarial.lambda_adv_unlabeled=0.001"])
    assert AdversarialTrainer(with_term, tmp_path / "b", _memory_data(with_term, semi=True))._needs_d_u()
