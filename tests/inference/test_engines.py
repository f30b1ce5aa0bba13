"""Inference engines and the inference-only rewrites: folded batch norm, bf16, ONNX Runtime, OpenVINO."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from runtime_marks import needs_bf16, needs_ort, needs_ov

from advseg.config import apply_overrides, load_preset
from advseg.errors import InputError
from advseg.inference import engines
from advseg.inference.engines import TorchEngine, build_engine, resolve_precision
from advseg.inference.fuse import fold_batchnorm
from advseg.networks.factory import build_network
from advseg.networks.res_unet import ResUNet


def _trained_like_net(seed: int = 0) -> torch.nn.Module:
    """A tiny S-net with non-trivial batch-norm statistics (as after training), eval mode."""
    torch.manual_seed(seed)
    net = build_network(apply_overrides(load_preset("res_unet_aux+tiny"), []).network)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm3d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return net.eval()


def _same(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.argmax(1) == b.argmax(1)).float().mean())


def test_fold_batchnorm_matches_and_removes_every_norm() -> None:
    net = _trained_like_net()
    n_bn = sum(isinstance(m, torch.nn.BatchNorm3d) for m in net.modules())
    folded, count = fold_batchnorm(net)
    assert count == n_bn > 0
    assert not any(isinstance(m, torch.nn.BatchNorm3d) for m in folded.modules())
    assert any(isinstance(m, torch.nn.BatchNorm3d) for m in net.modules())  # original untouched
    x = torch.randn(2, 1, 16, 32, 32)
    with torch.inference_mode():
        torch.testing.assert_close(folded(x), net(x), rtol=1e-4, atol=1e-4)


def test_instance_norm_is_left_alone() -> None:
    net = ResUNet(3, 1, 3, channels=(4, 8), norm="instance").eval()
    folded, count = fold_batchnorm(net)
    assert count == 0
    x = torch.randn(1, 1, 8, 16, 16)
    with torch.inference_mode():
        torch.testing.assert_close(folded(x), net(x))


def test_torch_engine_fp32_equals_network_and_returns_float32() -> None:
    net = _trained_like_net()
    engine = TorchEngine(net, "cpu", "fp32")
    x = torch.randn(2, 1, 16, 32, 32)
    with torch.inference_mode():
        out = engine(x)
        torch.testing.assert_close(out, net(x), rtol=1e-4, atol=1e-4)
    assert out.dtype == torch.float32 and engine.size_divisor == net.size_divisor


@needs_bf16
def test_torch_engine_bf16_keeps_heads_float32_and_close_labels() -> None:
    net = _trained_like_net()
    engine = TorchEngine(net, "cpu", "bf16")
    assert engine.net.head.weight.dtype == torch.float32
    assert engine.net.encoder[0][0].conv1.weight.dtype == torch.bfloat16
    x = torch.randn(2, 1, 16, 32, 32)
    with torch.inference_mode():
        out, ref = engine(x), net(x)
    assert out.dtype == torch.float32
    # random weights: near-tie logits everywhere, so this bound is loose; trained models are measured in
    # benchmarks/inference_accuracy.py (>= 99.9 % identical voxels)
    assert _same(out, ref) > 0.95
    assert float((out - ref).abs().mean()) < 0.05 * float(ref.abs().mean()) + 1e-3


def test_bf16_on_a_cpu_without_native_bf16_is_an_input_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engines, "cpu_has_bf16", lambda: False)
    with pytest.raises(InputError, match="native bfloat16"):
        TorchEngine(_trained_like_net(), "cpu", "bf16")
    assert TorchEngine(_trained_like_net(), "cpu", "fp32").precision == "fp32"
    assert resolve_precision("auto", torch.device("cpu")) == "fp32"


def test_precision_auto_and_bad_values() -> None:
    assert resolve_precision("fp32", torch.device("cpu")) == "fp32"
    assert resolve_precision("auto", torch.device("cpu")) in ("fp32", "bf16")
    assert resolve_precision("auto", torch.device("cuda")) == "fp32"
    assert resolve_precision("auto", torch.device("cpu"), "monai:UNet") == "fp32"  # not validated in bf16
    assert resolve_precision("bf16", torch.device("cpu"), "monai:UNet") == "bf16"
    with pytest.raises(InputError, match="precision"):
        resolve_precision("fp8", torch.device("cpu"))
    with pytest.raises(InputError, match="engine"):
        build_engine(_trained_like_net(), "tensorrt")




@pytest.fixture(scope="module")
def phantom_slabs() -> torch.Tensor:
    """Two 16 x 32 x 32 slabs of a preprocessed phantom CT, ``(2, 1, 16, 32, 32)``."""
    from advseg.data.phantom import generate_case

    image, _, _ = generate_case(0, (32, 32, 32))
    x = np.clip((image.astype(np.float32) - 50) / 300, -1, 1)
    return torch.from_numpy(x).view(2, 1, 16, 32, 32)


@pytest.mark.parametrize("engine", [pytest.param("onnxruntime", marks=needs_ort),
                                    pytest.param("openvino", marks=needs_ov)])
def test_runtime_engines_match_torch_on_the_phantom(engine: str, phantom_slabs: torch.Tensor,
                                                    tmp_path) -> None:
    net = _trained_like_net()
    runner = build_engine(net, engine, "cpu", "fp32", threads=1, workdir=tmp_path)
    with torch.inference_mode():
        ref = net(phantom_slabs)
        out = runner(phantom_slabs)
        other = runner(torch.zeros(1, 1, 8, 16, 24))  # dynamic batch and spatial sizes
    assert out.shape == ref.shape and out.dtype == torch.float32
    assert _same(out, ref) >= 0.999
    torch.testing.assert_close(out, ref, rtol=1e-3, atol=1e-3)
    assert other.shape == (1, 6, 8, 16, 24)
    assert runner.size_divisor == net.size_divisor
