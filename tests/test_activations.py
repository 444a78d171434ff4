"""The CPU form of SiLU (mlx_model.support.activations) against ``nn.silu`` and hand values."""

import math

import numpy as np
import pytest

import mlx.core as mx
import mlx.nn as nn

from metrics import within  # noqa: E402
from mlx_model.support import activations, platform  # noqa: E402


def test_silu_matches_hand_values_and_nn_silu_on_cpu(monkeypatch):
    monkeypatch.setattr(platform, "metal_available", lambda: False)
    hand = {0.0: 0.0, 1.0: 1 / (1 + math.exp(-1)), -1.0: -1 / (1 + math.exp(1)), 20.0: 20 / (1 + math.exp(-20)),
            -20.0: -20 / (1 + math.exp(20))}
    got = np.array(activations.silu(mx.array(list(hand), dtype=mx.float32)))
    np.testing.assert_allclose(got, list(hand.values()), rtol=1e-6, atol=0)
    x = mx.concatenate([mx.linspace(-90, 90, 20001), mx.random.normal((4, 300, 97), key=mx.random.key(0)).reshape(-1) * 6])
    ours, ref = np.array(activations.silu(x)), np.array(nn.silu(x))
    assert not np.array_equal(ours, ref)  # the compiled form ran, not nn.silu
    rel = np.abs(ours - ref) / np.maximum(np.abs(ref), 1e-30)
    within(float(rel[np.abs(x) < 80].max()), at_most=1e-6)  # measured 2.9e-7
    within(float(np.abs(ours - ref).max()), at_most=1e-5)  # tails: |x| large, values ~0 or ~x
    big = np.array(activations.silu(mx.array([-1e4, 1e4, float("inf")], dtype=mx.float32)))
    assert abs(big[0]) < 1e-30 and big[1] == 1e4 and big[2] == float("inf")


@pytest.mark.parametrize("metal, dtype", [(True, mx.float32), (False, mx.bfloat16)])
def test_silu_is_nn_silu_on_metal_and_for_low_precision(monkeypatch, metal, dtype):
    monkeypatch.setattr(platform, "metal_available", lambda: metal)
    x = (mx.random.normal((64, 33), key=mx.random.key(1)) * 5).astype(dtype)
    assert mx.array_equal(activations.silu(x), nn.silu(x)).item()
