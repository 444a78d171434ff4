"""The CPU forms of the shared convolution layers (mlx_model.components.conv_layers) against
MLX's own ``nn.Conv2d`` (what Metal runs) and a hand-computed case."""

import numpy as np
import pytest

import mlx.core as mx
import mlx.nn as nn

from metrics import rel_err, within  # noqa: E402
from mlx_model.components.conv_layers import DepthwiseConv2d, TapConv2d  # noqa: E402
from mlx_model.support import platform  # noqa: E402


def test_tap_conv_hand_case(monkeypatch):
    monkeypatch.setattr(platform, "metal_available", lambda: False)
    conv = TapConv2d(1, 1, 3, bias=True)
    conv.weight = mx.arange(9, dtype=mx.float32).reshape(1, 3, 3, 1)  # w[i, j] = 3 i + j
    conv.bias = mx.array([0.5])
    x = mx.ones((1, 2, 2, 1))
    # each output pixel sees the four ones of the 2x2 input at the taps its position leaves inside:
    # (0,0): taps (1,1),(1,2),(2,1),(2,2) = 4+5+7+8; (0,1): (1,0),(1,1),(2,0),(2,1) = 3+4+6+7;
    # (1,0): (0,1),(0,2),(1,1),(1,2) = 1+2+4+5; (1,1): (0,0),(0,1),(1,0),(1,1) = 0+1+3+4
    want = np.array([[24, 20], [12, 8]], np.float32) + 0.5
    np.testing.assert_array_equal(np.array(conv(x))[0, :, :, 0], want)


@pytest.mark.parametrize("shape, cout, k, bias", [((1, 7, 9, 16), 24, 3, True), ((2, 5, 4, 8), 8, 3, False),
                                                  ((1, 6, 6, 12), 4, 5, True), ((1, 1, 1, 3), 5, 3, True)])
def test_tap_conv_is_nn_conv2d(monkeypatch, shape, cout, k, bias):
    monkeypatch.setattr(platform, "metal_available", lambda: False)
    conv = TapConv2d(shape[-1], cout, k, bias=bias)
    conv.weight = mx.random.normal(conv.weight.shape, key=mx.random.key(3)) * 0.2
    if bias:
        conv.bias = mx.random.normal((cout,), key=mx.random.key(2))
    x = mx.random.normal(shape, key=mx.random.key(1))
    ref = nn.Conv2d.__call__(conv, x)  # MLX's convolution, padding k // 2
    got = conv(x)
    assert got.shape == ref.shape == (*shape[:3], cout)
    assert not mx.array_equal(got, ref).item() or shape[1:3] == (1, 1)  # a different summation ran
    within(rel_err(np.array(got), np.array(ref)), at_most=1e-5)  # fp32 summation order (measured ~3e-7)
    held = conv.weight.astype(mx.bfloat16)  # weights held in bf16, activations fp32 (the VAE on a CPU)
    conv.weight = held
    within(rel_err(np.array(conv(x)), np.array(nn.Conv2d.__call__(conv, x))), at_most=1e-5)


@pytest.mark.parametrize("k, batch, bias", [(3, 2, True), (5, 1, False), (7, 1, True)])
def test_depthwise_conv_is_nn_conv2d(monkeypatch, k, batch, bias):
    monkeypatch.setattr(platform, "metal_available", lambda: False)
    c = 12
    conv = DepthwiseConv2d(c, c, k, padding=k // 2, groups=c, bias=bias)
    conv.weight = mx.random.normal(conv.weight.shape, key=mx.random.key(k))
    if bias:
        conv.bias = mx.random.normal((c,), key=mx.random.key(k + 1))
    x = mx.random.normal((batch, 9, 11, c), key=mx.random.key(0))
    for held in (False, True):  # weights fp32, then held in bf16 with fp32 activations
        if held:
            conv.weight = conv.weight.astype(mx.bfloat16)
        within(rel_err(np.array(conv(x)), np.array(nn.Conv2d.__call__(conv, x))), at_most=1e-5)


def test_cpu_forms_refuse_what_they_do_not_compute():
    with pytest.raises(ValueError, match="odd kernel"):
        TapConv2d(3, 4, 2)
    with pytest.raises(ValueError, match="stride 1"):
        DepthwiseConv2d(8, 8, 3, stride=2, padding=1, groups=8)
    with pytest.raises(ValueError, match="stride 1"):
        DepthwiseConv2d(8, 8, 3, padding=1, groups=4)
