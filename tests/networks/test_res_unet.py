"""ResUNet: shapes in 2D/3D for every option, the forward contract, the aux fusion, multi-scale pooling."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from advseg.errors import InputError
from advseg.networks import MultiScalePool, ResidualBlock, ResUNet, count_parameters
from advseg.networks.blocks import avg_pool3_stride2
from advseg.networks.factory import channels_last_input, to_channels_last

TINY = (4, 8, 16)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.mark.parametrize("spatial_dims,shape", [(3, (2, 1, 16, 32, 32)), (2, (2, 1, 32, 32))])
@pytest.mark.parametrize("pooling", ["max", "multiscale"])
@pytest.mark.parametrize("aux", [False, True])
def test_output_shapes_and_forward_contract(spatial_dims: int, shape: tuple, pooling: str, aux: bool) -> None:
    net = ResUNet(spatial_dims, 1, 6, TINY, pooling=pooling, aux=aux)
    x = torch.randn(shape)
    out_shape = (shape[0], 6, *shape[2:])
    assert net.deep_supervision is aux

    net.train()
    out = net(x)
    if aux:
        assert isinstance(out, tuple) and len(out) == 3
        assert all(o.shape == out_shape for o in out)
    else:
        assert isinstance(out, torch.Tensor) and out.shape == out_shape

    net.eval()
    with torch.no_grad():
        out = net(x)
    assert isinstance(out, torch.Tensor) and out.shape == out_shape


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(norm="instance", act="leakyrelu"),
        dict(res_blocks=2, dropout=0.2),
        dict(channels=(4, 8, 16, 32), aux=True),  # 4 levels: bottleneck at 1/8
        dict(channels=(4, 8), aux=True, aux_weights=(0.5,)),
    ],
)
def test_other_options_3d(kwargs: dict) -> None:
    args = dict(channels=TINY) | kwargs
    net = ResUNet(3, 2, 3, **args).eval()
    with torch.no_grad():
        y = net(torch.randn(1, 2, 16, 16, 16))
    assert y.shape == (1, 3, 16, 16, 16)


def test_fused_is_main_plus_weighted_upsampled_aux() -> None:
    """Capture the raw heads with hooks and rebuild the fused output independently."""
    net = ResUNet(3, 1, 6, TINY, pooling="multiscale", aux=True, aux_weights=(0.5, 0.25)).eval()
    raw: dict[str, torch.Tensor] = {}
    net.head.register_forward_hook(lambda m, i, o: raw.__setitem__("main", o))
    net.aux_heads[0].register_forward_hook(lambda m, i, o: raw.__setitem__("half", o))
    net.aux_heads[1].register_forward_hook(lambda m, i, o: raw.__setitem__("quarter", o))
    x = torch.randn(1, 1, 16, 32, 32)
    with torch.no_grad():
        fused = net(x)
    assert raw["half"].shape == (1, 6, 8, 16, 16)
    assert raw["quarter"].shape == (1, 6, 4, 8, 8)

    def up(t: torch.Tensor) -> torch.Tensor:
        return F.interpolate(t, size=(16, 32, 32), mode="trilinear", align_corners=False)

    expected = raw["main"] + 0.5 * up(raw["half"]) + 0.25 * up(raw["quarter"])
    torch.testing.assert_close(fused, expected, rtol=1e-5, atol=1e-6)
    # the aux terms are not negligible, so the check above can fail
    assert (fused - raw["main"]).abs().max() > 1e-3

    with torch.no_grad():
        heads = net.forward_heads(x)
    torch.testing.assert_close(heads["main"], raw["main"])
    torch.testing.assert_close(heads["aux"][0], up(raw["half"]))


def test_train_mode_tuple_matches_heads() -> None:
    net = ResUNet(3, 1, 6, TINY, aux=True).train()
    x = torch.randn(2, 1, 16, 16, 16)
    fused, half, quarter = net(x)
    heads = net.forward_heads(x)  # train-mode BN uses batch statistics: same input, same output
    torch.testing.assert_close(fused, heads["fused"])
    torch.testing.assert_close(half, heads["aux"][0])
    torch.testing.assert_close(quarter, heads["aux"][1])


def test_without_aux_fused_is_main() -> None:
    net = ResUNet(2, 1, 4, TINY).eval()
    with torch.no_grad():
        heads = net.forward_heads(torch.randn(1, 1, 16, 16))
    assert heads["aux"] == [] and heads["fused"] is heads["main"]


@pytest.mark.parametrize("spatial_dims,size", [(3, (16, 32, 6)), (2, (32, 10))])
def test_multiscale_pool_halves_each_dim(spatial_dims: int, size: tuple) -> None:
    pool = MultiScalePool(spatial_dims, 5)
    y = pool(torch.randn(2, 5, *size))
    assert y.shape == (2, 5, *(s // 2 for s in size))
    assert (y >= 0).all()  # fused by conv-norm-relu: a post-activation feature map


@pytest.mark.parametrize("size", [(16, 32, 6), (7, 9, 5), (3, 4, 3)])
def test_channels_last_avg_pool_matches_torch(size: tuple) -> None:
    x = torch.randn(2, 3, *size, requires_grad=True)
    ref = F.avg_pool3d(x, 3, 2, 1, count_include_pad=False)
    y = avg_pool3_stride2(x.to(memory_format=torch.channels_last_3d))
    torch.testing.assert_close(y, ref)
    assert y.is_contiguous(memory_format=torch.channels_last_3d) and not y.is_contiguous()
    y.sum().backward()  # gradients flow through the in-place sums
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_bad_input_size_gives_clear_error() -> None:
    net = ResUNet(3, 1, 6, TINY)
    with pytest.raises(InputError, match=r"\(16, 30, 32\) must be divisible by 4"):
        net(torch.randn(1, 1, 16, 30, 32))
    with pytest.raises(InputError, match="must be"):
        net(torch.randn(1, 16, 32, 32))


@pytest.mark.parametrize("bad", [dict(pooling="avg"), dict(norm="group"), dict(act="gelu"),
                                 dict(channels=(8,)), dict(aux=True, aux_weights=(0.5, 0.25, 0.1)),
                                 dict(dropout=1.0)])
def test_bad_arguments(bad: dict) -> None:
    args = dict(channels=TINY) | bad
    with pytest.raises(ValueError):
        ResUNet(3, 1, 6, **args)


def test_backward_reaches_every_parameter() -> None:
    net = ResUNet(3, 1, 3, TINY, pooling="multiscale", aux=True).train()
    outs = net(torch.randn(2, 1, 8, 16, 16))
    sum(o.square().mean() for o in outs).backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert missing == []


def test_residual_block_parameter_count_by_hand() -> None:
    # conv1 27*1*4 + bn 2*4 + conv2 27*4*4 + bn 2*4 + 1x1 projection 1*4 + bn 2*4
    assert count_parameters(ResidualBlock(3, 1, 4)) == 108 + 8 + 432 + 8 + 4 + 8
    # identity shortcut: no projection
    assert count_parameters(ResidualBlock(2, 4, 4)) == 9 * 16 + 8 + 9 * 16 + 8


def test_channels_last_3d_gives_same_output() -> None:
    net = ResUNet(3, 1, 6, TINY, pooling="multiscale", aux=True).eval()
    x = torch.randn(1, 1, 16, 32, 32)
    with torch.inference_mode():
        ref = net(x)
        net = to_channels_last(net)
        y = net(channels_last_input(x))
    torch.testing.assert_close(y, ref, rtol=1e-4, atol=1e-5)


def test_to_channels_last_converts_only_5d_tensors() -> None:
    mixed = torch.nn.Sequential(torch.nn.Conv3d(2, 4, 3), torch.nn.Conv2d(4, 4, 3), torch.nn.BatchNorm3d(4))
    to_channels_last(mixed)
    w3, w2 = mixed[0].weight, mixed[1].weight
    assert w3.is_contiguous(memory_format=torch.channels_last_3d) and not w3.is_contiguous()
    assert w2.is_contiguous()  # 2-D weights keep their layout (Module.to(channels_last_3d) raises)
    assert isinstance(w3, torch.nn.Parameter)  # same Parameter objects, so optimizers stay attached
    labels = torch.zeros(1, 4, 4, 4, dtype=torch.long)
    assert channels_last_input(labels) is labels



def test_strided_first_stage_keeps_full_resolution_output() -> None:
    net = ResUNet(3, 1, 4, channels=TINY, aux=True, stem_stride=2)
    assert net.size_divisor == 8
    x = torch.randn(1, 1, 8, 16, 32)
    outs = net(x)
    assert all(o.shape == (1, 4, 8, 16, 32) for o in outs)
    # the first convolution strides in-plane only: 8 slices stay 8
    assert net.stem(x).shape == (1, 4, 8, 8, 16)
    with pytest.raises(InputError, match="divisible by 8"):
        net(torch.randn(1, 1, 8, 16, 20))
    with pytest.raises(ValueError, match="stem_stride"):
        ResUNet(3, 1, 4, channels=(4, 8), stem_stride=3)
