"""The MCP reference itself, pinned against Mobile-O's source rather than against our ports.

Mobile-O's ``EfficientChannelAttention`` (mobileo/model/mobile_block.py) is
Linear(no bias) -> Hardswish -> Linear(no bias) -> Hardsigmoid on the sequence mean, and the
gate multiplies every position.  The case below is worked out by hand (identity Linears, a
sequence mean that crosses every linear piece of both activations) and the expected gate is
written as fractions, so a ReLU/sigmoid reading -- what this project shipped first -- cannot
pass it.  The same numbers are then required of the MLX and Neural-Engine modules, and the
whole reference MCP is checked against an independent numpy forward of the source's formula.
"""

import numpy as np
import pytest

import torch

from weights.references import mcp as mcp_reference  # noqa: E402
from weights.core.configs import MCPConfig  # noqa: E402
from weights.loading.synthetic import mcp_layout, random_tensors  # noqa: E402
from metrics import within

pytestmark = [pytest.mark.torch, pytest.mark.coreml]

# Sequence means per channel, chosen across the pieces of hardswish / hardsigmoid:
# below -3, in (-3, 0), 0, in (0, 3), above 3.
MEAN = np.array([-4.0, -2.0, -1.0, 0.0, 0.5, 1.0, 2.0, 4.0])
# hardswish(m) = m * relu6(m + 3) / 6  ->  [0, -1/3, -1/3, 0, 7/24, 2/3, 5/3, 4]
# gate = hardsigmoid(hardswish(m)) = relu6(. + 3) / 6:
GATE = np.array([1 / 2, 4 / 9, 4 / 9, 1 / 2, 79 / 144, 11 / 18, 7 / 9, 1.0])
# what ReLU / sigmoid would give (must differ clearly)
SE_GATE = 1 / (1 + np.exp(-np.maximum(MEAN, 0)))

CFG = MCPConfig(in_dim=8, out_dim=8, dim=8)  # attn_dim = max(8 // 4, 8) = 8


def hand_case():
    """x (1, L=2, C=8) with sequence mean MEAN; identity Linears; expected x * GATE."""
    x = np.stack([MEAN + 1.5, MEAN - 1.5])[None].astype(np.float32)
    return x, x * GATE


def test_hand_case_separates_the_readings():
    assert CFG.attn_dim == 8
    assert np.abs(GATE - SE_GATE).max() > 0.1  # vs 1e-6 tolerances below


def test_torch_reference_channel_attention_by_hand():
    x, want = hand_case()
    ca = mcp_reference.build(CFG).sequence_refiners[0].channel_attn
    with torch.no_grad():
        ca.fc[0].weight.copy_(torch.eye(8))
        ca.fc[2].weight.copy_(torch.eye(8))
        got = ca(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_mlx_channel_attention_by_hand():
    import mlx.core as mx
    from mlx_model.components.mcp import ChannelAttention

    x, want = hand_case()
    ca = ChannelAttention(CFG)
    ca.fc[0].weight = mx.eye(8)
    ca.fc[2].weight = mx.eye(8)
    np.testing.assert_allclose(np.array(ca(mx.array(x))), want, rtol=1e-6, atol=1e-6)


def test_neural_engine_channel_attention_by_hand():
    from coreml_convert.components.mcp import ChannelAttention

    x, want = hand_case()
    ca = ChannelAttention(CFG)
    ane_x = torch.from_numpy(x).permute(0, 2, 1)[:, :, None, :]  # (1, C, 1, L)
    mask = torch.ones(1, 1, 1, 2)
    with torch.no_grad():
        for i in (0, 2):
            ca.fc[i].weight.copy_(torch.eye(8).reshape(ca.fc[i].weight.shape))
        got = ca(ane_x, mask, mask.sum(dim=3, keepdim=True))[:, :, 0, :].permute(0, 2, 1).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------ whole MCP, numpy


def _hardswish(x):
    return x * np.clip(x + 3, 0, 6) / 6


def _hardsigmoid(x):
    return np.clip(x + 3, 0, 6) / 6


def _layer_norm(x, w, b, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def numpy_mcp(t, cfg, hidden):
    """LayerwiseMobileFusion.forward as the source writes it, in float64 numpy."""
    t = {k: np.asarray(v, np.float64) for k, v in t.items()}
    eps = cfg.norm_eps
    w = np.exp(t["layer_weights"] / t["temperature"])
    w = w / w.sum()
    h = sum(wi * hi for wi, hi in zip(w, hidden))
    x = h @ t["input_compress.0.weight"].T + t["input_compress.0.bias"]
    x = _hardswish(_layer_norm(x, t["input_compress.1.weight"], t["input_compress.1.bias"], eps))
    for r in range(cfg.num_refiners):
        p = f"sequence_refiners.{r}."
        dw = t[p + "conv.depthwise.weight"][:, 0, :]  # (C, k)
        k = dw.shape[1]
        xp = np.pad(x, ((0, 0), (k // 2, k // 2), (0, 0)))
        y = sum(xp[:, j:j + x.shape[1], :] * dw[:, j] for j in range(k))  # cross-correlation
        y = y @ t[p + "conv.pointwise.weight"][:, :, 0].T
        y = _hardswish(_layer_norm(y, t[p + "conv.norm.weight"], t[p + "conv.norm.bias"], eps))
        s = _hardswish(y.mean(1, keepdims=True) @ t[p + "channel_attn.fc.0.weight"].T)
        s = _hardsigmoid(s @ t[p + "channel_attn.fc.2.weight"].T)
        x = _layer_norm(y * s + x, t[p + "norm.weight"], t[p + "norm.bias"], eps)
    x = x @ t["output_proj.0.weight"].T + t["output_proj.0.bias"]
    return _layer_norm(x, t["output_proj.1.weight"], t["output_proj.1.bias"], eps)


@pytest.mark.parametrize("cfg", [MCPConfig(in_dim=64, out_dim=96, dim=32),
                                 MCPConfig(in_dim=896, out_dim=2304)], ids=["tiny", "0.5B-width"])
def test_reference_matches_numpy_formula(cfg):
    tensors = random_tensors(mcp_layout(cfg), "mcp", seed=3)
    tensors["temperature"] = np.array(1.7, np.float32)
    rng = np.random.default_rng(0)
    hidden = [3 * rng.standard_normal((2, 11, cfg.in_dim)).astype(np.float32) for _ in range(cfg.num_layers)]
    with torch.no_grad():
        got = mcp_reference.build(cfg, tensors)([torch.from_numpy(h) for h in hidden]).numpy()
    want = numpy_mcp(tensors, cfg, hidden)
    within(np.abs(got - want).max() / np.abs(want).max(), at_most=1e-5)
