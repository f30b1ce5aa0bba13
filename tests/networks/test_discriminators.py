import dataclasses

import numpy as np
import pytest
import torch

from advseg.config import AdversarialConfig
from advseg.networks.discriminators import (
    DCGANDiscriminator,
    FCDiscriminator,
    FusionDiscriminator,
    ImageLevelDiscriminator,
    build_discriminator_input,
    concat_input,
    discriminator_in_channels,
    discriminator_input,
    make_discriminator,
    onehot,
    onehot_straight_through,
    set_requires_grad,
)

SMALL = (4, 8, 8, 8)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# ------------------------------------------------------------------------------------------- FCDiscriminator
@pytest.mark.parametrize(
    "spatial, norm",
    [((16, 32, 32), None), ((16, 32, 32), "instance"), ((5, 7, 9), None), ((16, 16, 16), "instance"),
     ((1, 3, 2), "batch")],
)
def test_fc_discriminator_3d_shape_and_range(spatial, norm):
    d = FCDiscriminator(3, 6, SMALL, norm=norm)
    x = torch.randn(2, 6, *spatial)
    out = d(x)
    assert out.shape == (2, 1, *spatial)
    conf = torch.sigmoid(out)
    assert torch.all((conf > 0) & (conf < 1))
    assert torch.isfinite(out).all()


def test_fc_discriminator_2d_and_default_four_stages():
    d = FCDiscriminator(2, 6)
    assert len(d.stages) == 4
    x = torch.randn(1, 6, 33, 20)
    assert d(x).shape == (1, 1, 33, 20)


def test_fc_discriminator_16_slices_reach_one_and_output_varies_per_voxel():
    d = FCDiscriminator(3, 2, SMALL)
    x = torch.randn(1, 2, 16, 32, 32)
    assert d.stages(x).shape == (1, 8, 1, 2, 2)  # four stride-2 stages: 16 -> 1, 32 -> 2
    out = d(x)
    assert out.std() > 0  # interpolated map, not one constant


def test_fc_discriminator_is_differentiable_wrt_input():
    d = FCDiscriminator(3, 6, SMALL, norm="instance")
    x = torch.randn(1, 6, 8, 16, 16, requires_grad=True)
    d(x).mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_fc_discriminator_rejects_wrong_channels():
    d = FCDiscriminator(3, 6, SMALL)
    with pytest.raises(ValueError, match="expects"):
        d(torch.randn(1, 5, 8, 8, 8))
    with pytest.raises(ValueError, match="norm"):
        FCDiscriminator(3, 6, SMALL, norm="group")


# ------------------------------------------------------------------------------------------- other papers' D
@pytest.mark.parametrize("spatial", [(16, 32, 32), (3, 5, 7)])
def test_image_level_discriminator_one_logit_per_sample(spatial):
    d = ImageLevelDiscriminator(3, 1 + 6, SMALL)
    out = d(torch.randn(3, 7, *spatial))
    assert out.shape == (3, 1)
    assert torch.all((torch.sigmoid(out) > 0) & (torch.sigmoid(out) < 1))


def test_image_level_discriminator_uses_instance_norm():
    d = ImageLevelDiscriminator(2, 7, (4, 8))
    assert any(isinstance(m, torch.nn.InstanceNorm2d) for m in d.modules())
    assert d(torch.randn(2, 7, 16, 16)).shape == (2, 1)


@pytest.mark.parametrize("spatial", [(128, 128), (32, 32), (17, 9), (1, 1)])
def test_dcgan_discriminator_2d_confidence_map(spatial):
    d = DCGANDiscriminator(2, 6, (4, 4, 8, 8, 8))
    assert len(d.convs) == 6
    assert all(c.kernel_size == (4, 4) and c.stride == (2, 2) for c in d.convs)
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in d.modules())
    out = d(torch.randn(2, 6, *spatial))
    assert out.shape == (2, 1, *spatial)
    assert torch.all((torch.sigmoid(out) > 0) & (torch.sigmoid(out) < 1))


def test_dcgan_discriminator_3d():
    d = DCGANDiscriminator(3, 6, (4, 4, 4, 4, 4))
    assert d(torch.randn(1, 6, 16, 32, 32)).shape == (1, 1, 16, 32, 32)


def test_dcgan_default_has_six_convs():
    d = DCGANDiscriminator(2, 6)
    assert [c.out_channels for c in d.convs] == [64, 128, 256, 512, 512, 1]


def test_fusion_discriminator_is_antisymmetric():
    d = FusionDiscriminator(3, 1 + 6, SMALL)
    image = torch.randn(2, 1, 8, 16, 16)
    a = torch.softmax(torch.randn(2, 6, 8, 16, 16), dim=1)
    b = torch.softmax(torch.randn(2, 6, 8, 16, 16), dim=1)
    ab, ba = d(image, a, b), d(image, b, a)
    assert ab.shape == (2, 1)
    torch.testing.assert_close(ab, -ba)
    torch.testing.assert_close(d(image, a, a), torch.zeros(2, 1))
    # batching both fusions in one pass scores them as separate passes would
    torch.testing.assert_close(ab, d.score(image, a) - d.score(image, b), rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------- inputs
def test_discriminator_input_hand_example():
    image = torch.tensor([[[1.0, -2.0, 3.0]]])  # (B=1, Ci=1, 3 voxels)
    y = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]]])  # (1, C=2, 3)
    out = discriminator_input(image, y)
    expected = torch.tensor([[[1.0, 0.0, 0.0], [0.0, -2.0, 3.0]]])
    torch.testing.assert_close(out, expected)


def test_discriminator_input_channel_order_with_two_image_channels():
    image = torch.tensor([[[2.0], [3.0]]])  # (1, Ci=2, 1 voxel)
    probs = torch.tensor([[[0.25], [0.75]]])  # (1, C=2, 1)
    out = discriminator_input(image, probs)
    # channel c * Ci + i = probs_c * image_i
    torch.testing.assert_close(out, torch.tensor([[[0.5], [0.75], [1.5], [2.25]]]))
    assert discriminator_in_channels("product", 2, 2) == 4


def test_discriminator_input_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="share"):
        discriminator_input(torch.zeros(1, 1, 4, 4), torch.zeros(1, 2, 4, 5))


def test_concat_and_build_input():
    image, y = torch.randn(1, 1, 2, 3), torch.rand(1, 3, 2, 3)
    cat = concat_input(image, y)
    assert cat.shape == (1, 4, 2, 3)
    torch.testing.assert_close(cat[:, 0], image[:, 0])
    torch.testing.assert_close(build_discriminator_input("label", image, y), y)
    torch.testing.assert_close(build_discriminator_input("concat", image, y), cat)
    with pytest.raises(ValueError, match="unknown"):
        build_discriminator_input("sum", image, y)


def test_onehot():
    t = torch.tensor([[0, 2, 1]])
    out = onehot(t, 3)
    assert out.shape == (1, 3, 3)
    torch.testing.assert_close(out, torch.tensor([[[1.0, 0, 0], [0, 0, 1.0], [0, 1.0, 0]]]))
    with pytest.raises(ValueError, match="0, 3"):
        onehot(torch.tensor([[0, 3]]), 3)
    with pytest.raises(ValueError, match="integer"):
        onehot(torch.tensor([[0.0, 1.0]]), 3)


def test_straight_through_forward_is_exact_onehot():
    logits = torch.randn(2, 6, 4, 5, 3)
    probs = torch.softmax(logits, dim=1)
    st = onehot_straight_through(probs)
    assert torch.equal(st, onehot(probs.argmax(1), 6))


def test_straight_through_gradient_equals_soft_path_gradient():
    logits = torch.randn(2, 4, 3, 5)
    w = torch.randn(2, 4, 3, 5)  # linear downstream: identical gradient for both paths
    z_st = logits.clone().requires_grad_(True)
    (w * onehot_straight_through(torch.softmax(z_st, 1))).sum().backward()
    z_soft = logits.clone().requires_grad_(True)
    (w * torch.softmax(z_soft, 1)).sum().backward()
    assert z_st.grad.abs().sum() > 0
    torch.testing.assert_close(z_st.grad, z_soft.grad)


def test_straight_through_gradient_is_downstream_gradient_at_the_onehot_point():
    probs = torch.softmax(torch.randn(1, 3, 4), 1).requires_grad_(True)
    (onehot_straight_through(probs) ** 2).sum().backward()
    # d/dq sum q^2 = 2q, evaluated at the one-hot q, passed through unchanged to probs
    torch.testing.assert_close(probs.grad, 2 * onehot(probs.detach().argmax(1), 3))


def test_gradient_reaches_s_through_fc_discriminator_with_onehot_input():
    s_logits = torch.randn(1, 3, 4, 8, 8, requires_grad=True)
    image = torch.randn(1, 1, 4, 8, 8)
    d = FCDiscriminator(3, 3, SMALL)
    set_requires_grad(d, False)
    d(discriminator_input(image, onehot_straight_through(torch.softmax(s_logits, 1)))).mean().backward()
    assert s_logits.grad.abs().sum() > 0
    assert all(p.grad is None for p in d.parameters())


# ------------------------------------------------------------------------------------------- factory
@pytest.mark.parametrize(
    "name, cls, cin", [("fcn", FCDiscriminator, 6), ("image", ImageLevelDiscriminator, 7),
                       ("dcgan2d", DCGANDiscriminator, 6), ("fusion", FusionDiscriminator, 7)],
)
def test_make_discriminator(name, cls, cin):
    channels = [4, 4, 4, 4, 4] if name == "dcgan2d" else [4, 4, 4, 4]
    cfg = dataclasses.replace(AdversarialConfig(), discriminator=name, d_channels=channels)
    d = make_discriminator(cfg, 2, image_channels=1, num_classes=6)
    assert isinstance(d, cls)
    net = d.scorer if name == "fusion" else d
    assert net.in_channels == cin


def test_make_discriminator_norm_and_input_options():
    cfg = dataclasses.replace(AdversarialConfig(), d_norm="instance", d_input="label", d_channels=[4, 4])
    d = make_discriminator(cfg, 3, 1, 6)
    assert d.in_channels == 6
    assert any(isinstance(m, torch.nn.InstanceNorm3d) for m in d.modules())
    with pytest.raises(ValueError, match="d_norm"):
        make_discriminator(dataclasses.replace(cfg, d_norm="layer"), 3, 1, 6)
    with pytest.raises(ValueError, match="concat"):
        make_discriminator(dataclasses.replace(cfg, discriminator="fusion"), 3, 1, 6)


def test_fcn_decoder_gives_a_full_resolution_map_that_places_errors_locally() -> None:
    from advseg.networks.discriminators import FCDiscriminator

    torch.manual_seed(0)
    plain = FCDiscriminator(3, 2, (4, 8, 8))
    dec = FCDiscriminator(3, 2, (4, 8, 8), decoder=True)
    x = torch.randn(1, 2, 16, 24, 16)
    assert dec(x).shape == plain(x).shape == (1, 1, 16, 24, 16)
    # change one input voxel: the decoder's map changes most at that voxel; the up-sampled coarse map
    # spreads the change over its whole cell
    y = x.clone()
    y[0, :, 8, 12, 8] += 5.0
    locality = {}
    for name, net in (("decoder", dec), ("plain", plain)):
        with torch.no_grad():
            diff = (net(y) - net(x)).abs()[0, 0]
        locality[name] = float(diff[8, 12, 8] / diff.mean())
        if name == "decoder":  # peak at the voxel or a neighbour (the full-resolution 3x3x3 convolution)
            peak = np.unravel_index(int(diff.argmax()), diff.shape)
            assert max(abs(int(a) - b) for a, b in zip(peak, (8, 12, 8), strict=True)) <= 1
    assert locality["decoder"] > 3 * locality["plain"]


def test_spectral_norm_and_decoder_options_of_make_discriminator() -> None:
    from dataclasses import replace

    from advseg.config import AdversarialConfig
    from advseg.networks.discriminators import make_discriminator

    cfg = replace(AdversarialConfig(), d_channels=[4, 8], d_spectral_norm=True, d_decoder=True)
    net = make_discriminator(cfg, 3, 1, 3)
    keys = list(net.state_dict())
    assert any("parametrizations.weight.original" in k for k in keys)
    assert net(torch.randn(1, 3, 8, 8, 8)).shape == (1, 1, 8, 8, 8)
    with pytest.raises(ValueError, match="d_decoder is an option of the fcn"):
        make_discriminator(replace(cfg, discriminator="image"), 3, 1, 3)


def test_downsampled_input_d_sees_a_pooled_input_and_answers_at_full_size() -> None:
    from dataclasses import replace

    from advseg.config import AdversarialConfig
    from advseg.networks.discriminators import DownsampledInput, make_discriminator

    cfg = replace(AdversarialConfig(), d_channels=[4, 8], d_downsample=2)
    net = make_discriminator(cfg, 3, 1, 3)
    assert isinstance(net, DownsampledInput)
    seen = {}
    def record(module, args):
        seen.setdefault("shape", tuple(args[0].shape))  # returns None: the input is left as it is

    net.net.register_forward_pre_hook(record)
    x = torch.randn(2, 3, 16, 24, 15)
    assert net(x).shape == (2, 1, 16, 24, 15)
    assert seen["shape"] == (2, 3, 8, 12, 8)  # ceil(15 / 2) = 8
    # pooling averages: a constant input reaches the inner D as the same constant on the coarse grid
    c = torch.full((1, 3, 8, 8, 8), 0.5)
    coarse = net.net(torch.full((1, 3, 4, 4, 4), 0.5))
    expected = torch.nn.functional.interpolate(coarse, size=(8, 8, 8), mode="trilinear", align_corners=False)
    assert torch.allclose(net(c), expected, atol=1e-6)
    with pytest.raises(ValueError, match="d_downsample is an option of the per-voxel"):
        make_discriminator(replace(cfg, discriminator="image"), 3, 1, 3)
