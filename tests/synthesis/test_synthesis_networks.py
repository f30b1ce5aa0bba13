"""3D PGGAN networks: stage shapes, fade-in, stabilizers, config validation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from advseg.config import DataConfig
from advseg.errors import InputError
from advseg.synthesis.config import gan_preset, merge_gan_config
from advseg.synthesis.layers import EqConv3d, minibatch_std, pixel_norm
from advseg.synthesis.networks import Discriminator, Generator, stage_factors


def _nets(preset: str, channels: list[int]) -> tuple[Generator, Discriminator, list[list[int]]]:
    cfg = merge_gan_config(gan_preset(preset), {"channels": channels, "latent_channels": 4})
    torch.manual_seed(0)
    return (Generator(cfg.stages, cfg.channels, cfg.latent_channels),
            Discriminator(cfg.stages, cfg.channels, mbstd_group=2), cfg.stages)


def _nearest_up(x: torch.Tensor, factor: tuple[int, int, int]) -> torch.Tensor:
    """Reference nearest up-sampling, independent of the code under test."""
    for axis, f in zip((2, 3, 4), factor, strict=True):
        x = x.repeat_interleave(f, dim=axis)
    return x


@pytest.mark.parametrize("preset,channels", [("small", [8, 8, 4, 4]), ("paper", [2, 2, 2, 1, 1, 1])])
@torch.no_grad()
def test_every_stage_output_shape(preset: str, channels: list[int]) -> None:
    g, d, stages = _nets(preset, channels)
    assert stages[0] == [4, 4, 4]
    b = 2 if preset == "small" else 1  # the paper's 64 x 128 x 128 stage is costly on a CPU
    z = torch.randn(b, *g.latent_shape)
    assert g.latent_shape == (4, 2, 2, 2)  # 2 x 2 x 2 noise input
    for s, res in enumerate(stages):
        x = g(z, s, 0.5)  # alpha in (0, 1) runs both the new block and the faded-out path
        assert x.shape == (b, 1, *res), s
        assert d(x, s, 0.5).shape == (b, 1)
    assert g(z, 0, 1.0).shape == (b, 1, 4, 4, 4)
    if preset == "paper":
        assert stages[-2:] == [[64, 64, 64], [64, 128, 128]]
    else:
        assert stages[-1] == [16, 32, 32]
    assert stage_factors(stages)[-1] == (1, 2, 2)  # anisotropic last step
    assert all(f == (2, 2, 2) for f in stage_factors(stages)[1:-1])


@torch.no_grad()
def test_generator_fade_in_endpoints() -> None:
    g, _, stages = _nets("small", [4, 4, 4, 4])
    z = torch.randn(2, *g.latent_shape)
    for s in range(1, len(stages)):
        previous = g(z, s - 1, 1.0)
        factor = tuple(b // a for a, b in zip(stages[s - 1], stages[s], strict=True))
        # alpha = 0: exactly the previous stage's output, up-sampled
        assert torch.equal(g(z, s, 0.0), _nearest_up(previous, factor))
        # alpha = 1: exactly the new block's toRGB output
        new = g.to_rgb[s](g.features(z, s)[s])
        assert torch.equal(g(z, s, 1.0), new)
        # in between: the linear blend
        torch.testing.assert_close(g(z, s, 0.25), 0.75 * _nearest_up(previous, factor) + 0.25 * new)
        assert not torch.allclose(new, _nearest_up(previous, factor))  # the blend is not trivial


@torch.no_grad()
def test_discriminator_fade_in_endpoints() -> None:
    _, d, stages = _nets("small", [4, 4, 4, 4])
    for s in range(1, len(stages)):
        x = torch.randn(2, 1, *stages[s])
        factor = tuple(b // a for a, b in zip(stages[s - 1], stages[s], strict=True))
        # alpha = 0: the previous stage's D on the average-pooled input
        assert torch.equal(d(x, s, 0.0), d(F.avg_pool3d(x, factor, factor), s - 1, 1.0))
        # alpha = 1: the old fromRGB no longer matters; at alpha = 0.5 it does
        before_full, before_half = d(x, s, 1.0), d(x, s, 0.5)
        d.from_rgb[s - 1].weight.add_(1.0)
        assert torch.equal(d(x, s, 1.0), before_full)
        assert not torch.allclose(d(x, s, 0.5), before_half)
        d.from_rgb[s - 1].weight.sub_(1.0)


def test_wrong_shapes_are_refused() -> None:
    g, d, _ = _nets("small", [8, 8, 4, 4])
    with pytest.raises(ValueError, match="stage 1 expects"):
        d(torch.zeros(2, 1, 4, 4, 4), 1)
    with pytest.raises(ValueError, match="noise shape"):
        g(torch.zeros(2, 4, 4, 4, 4), 0)
    with pytest.raises(ValueError, match="stage 9"):
        g(torch.zeros(2, *g.latent_shape), 9)


def test_pixel_norm_and_minibatch_std() -> None:
    x = torch.randn(4, 6, 2, 3, 3) * 5
    y = pixel_norm(x)
    torch.testing.assert_close(y.pow(2).mean(dim=1), torch.ones(4, 2, 3, 3), rtol=1e-4, atol=1e-4)
    out = minibatch_std(x, group_size=2)
    assert out.shape == (4, 7, 2, 3, 3)
    assert torch.equal(out[:, :6], x)
    # groups {0, 2} and {1, 3}: population std per feature and voxel, averaged to one value
    for members in ((0, 2), (1, 3)):
        expected = x[list(members)].std(dim=0, unbiased=False).mean()
        for i in members:
            expected_map = torch.full((2, 3, 3), expected.item())
            torch.testing.assert_close(out[i, 6], expected_map, rtol=1e-4, atol=1e-5)
    # a batch of 3 cannot be split in pairs: one group of 3 (largest divisor <= group size)
    assert torch.unique(minibatch_std(x[:3], 2)[:, 6]).numel() == 1


def test_equalized_learning_rate() -> None:
    conv = EqConv3d(8, 4, 3)
    assert conv.scale == pytest.approx(math.sqrt(2.0) / math.sqrt(8 * 27))
    w = conv.weight.detach()
    assert abs(w.std().item() - 1.0) < 0.15  # stored N(0, 1): the He constant is applied at run time
    x = torch.randn(1, 8, 5, 5, 5)
    expected = F.conv3d(x, w * conv.scale, conv.bias, padding=1)
    torch.testing.assert_close(conv(x), expected)


def test_config_validation_names_the_key() -> None:
    base = gan_preset("small")
    with pytest.raises(InputError, match="stages"):
        merge_gan_config(base, {"stages": [[4, 4, 4], [8, 8, 8], [16, 16, 16], [16, 48, 48]]})
    with pytest.raises(InputError, match="channels"):
        merge_gan_config(base, {"channels": [8, 8]})
    with pytest.raises(InputError, match="unknown GAN config key 'lr_g'"):
        merge_gan_config(base, {"lr_g": 1.0})
    with pytest.raises(InputError, match="unknown GAN preset"):
        gan_preset("huge")
    cfg = merge_gan_config(base, {"iterations_per_stage": 10, "fade_fraction": 0.5})
    assert [cfg.alpha(0, i) for i in (0, 9)] == [1.0, 1.0]  # nothing to fade at the first stage
    assert [cfg.alpha(2, i) for i in (0, 1, 5, 9)] == [0.0, 0.2, 1.0, 1.0]
    assert (cfg.lr, cfg.betas) == (1e-3, [0.0, 0.99])  # PGGAN's Adam


def test_per_stage_iterations() -> None:
    base = gan_preset("small")
    cfg = merge_gan_config(base, {"iterations_per_stage": [10, 20, 40, 8], "fade_fraction": 0.5})
    assert [cfg.iterations(s) for s in range(4)] == [10, 20, 40, 8] and cfg.total_iterations == 78
    assert [cfg.fade_iterations(s) for s in range(4)] == [0, 10, 20, 4]
    assert [cfg.alpha(2, i) for i in (0, 10, 20, 39)] == [0.0, 0.5, 1.0, 1.0]  # fades over 20 of 40
    assert merge_gan_config(base, {"iterations_per_stage": 7}).total_iterations == 28  # one value: all
    with pytest.raises(InputError, match="iterations_per_stage: expected one value or 4"):
        merge_gan_config(base, {"iterations_per_stage": [10, 20]})
    with pytest.raises(InputError, match="iterations_per_stage"):
        merge_gan_config(base, {"iterations_per_stage": [10, 0, 1, 1]})
    with pytest.raises(InputError, match="iterations_per_stage"):
        merge_gan_config(base, {"iterations_per_stage": "many"})


def test_cpu_preset_reaches_32x64x64_with_the_physical_aspect() -> None:
    cfg = gan_preset("cpu")
    assert cfg.target_shape == (32, 64, 64)
    # after the first stage every stage keeps the phantom's z : xy voxel ratio of 1 : 2
    assert all(2 * z == y == x for z, y, x in cfg.stages[1:])
    assert len(cfg.channels) == len(cfg.stages) == len(cfg.batch_sizes)
    # the cheap low-resolution stages train longer than the last one
    assert cfg.iterations(2) > cfg.iterations(len(cfg.stages) - 1)
    g = Generator(cfg.stages, cfg.channels, cfg.latent_channels)
    assert sum(p.numel() for p in g.parameters()) < 2_000_000  # CPU-sized
    # the GAN models the CT window the S-net sees (with [-1000, 1000] the samples had no prostate)
    assert cfg.hu_window == DataConfig().hu_window == [-250.0, 350.0]


@pytest.mark.slow
def test_cpu_preset_one_step_per_stage_trains() -> None:
    from advseg.synthesis.data import TrainingSet
    from advseg.synthesis.trainer import _Trainer

    cfg = merge_gan_config(gan_preset("cpu"), {"device": "cpu"})
    torch.manual_seed(0)
    volumes = torch.rand(8, 1, *cfg.target_shape) * 2 - 1
    tset = TrainingSet(volumes, [], {"affine": torch.eye(4).tolist(), "shape": list(cfg.target_shape)})
    trainer = _Trainer(cfg, tset, torch.device("cpu"))
    trainer.new_optimizers()
    for stage in range(len(cfg.stages)):
        before = [p.detach().clone() for p in trainer.G.to_rgb[stage].parameters()]
        losses = trainer.step(stage, 0.5)
        assert all(math.isfinite(v) for v in losses.values())
        assert any(not torch.equal(a, p) for a, p in zip(before, trainer.G.to_rgb[stage].parameters(),
                                                         strict=True))  # G's output layer learned
        with torch.no_grad():
            assert trainer.G(torch.zeros(1, *cfg.latent_shape), stage).shape[2:] == tuple(cfg.stages[stage])
