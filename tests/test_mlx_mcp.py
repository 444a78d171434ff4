"""MLX MCP vs the torch MCP written from the facts formula (weights/references/mcp.py), fp32."""

import numpy as np
import pytest

import mlx.core as mx
import torch

from weights.references import mcp as mcp_reference  # noqa: E402
from weights.core.configs import MCPConfig  # noqa: E402
from weights.loading.synthetic import mcp_layout, random_tensors  # noqa: E402
from mlx_model.components.mcp import MCP  # noqa: E402
from metrics import rel_err  # noqa: E402

pytestmark = pytest.mark.torch


def compare(model, ref, cfg, batch=2, seq=37, seed=0, zero_first=False):
    rng = np.random.default_rng(seed)
    hs = [rng.standard_normal((batch, seq, cfg.in_dim)).astype(np.float32) * 3 for _ in range(cfg.num_layers)]
    if zero_first:  # the CFG batch: unconditional row = zeros
        for h in hs:
            h[0] = 0
    ours = np.array(model([mx.array(h) for h in hs]))
    with torch.no_grad():
        theirs = ref([torch.from_numpy(h) for h in hs]).numpy()
    assert ours.shape == theirs.shape == (batch, seq, cfg.out_dim)
    return rel_err(ours, theirs)


def test_layout_matches_reference_module():
    cfg = MCPConfig(in_dim=896, out_dim=2304)
    ref = mcp_reference.build(cfg)
    assert {k: tuple(v.shape) for k, v in ref.state_dict().items()} == mcp_layout(cfg)
    n = sum(int(np.prod(s)) for k, s in mcp_layout(cfg).items() if k != "temperature")
    assert n == 2_440_452  # facts: 2,440,452 params (0.5B)


def test_tiny_matches_reference(tiny_ckpt, parity):
    cfg = tiny_ckpt.config.mcp
    tensors = tiny_ckpt.load("mcp")
    err = compare(MCP.from_checkpoint(tiny_ckpt), mcp_reference.build(cfg, tensors), cfg)
    print(f"tiny MCP rel err {err:.2e}")
    parity("mcp tiny", "mlx fp32", "max_rel_err", err, at_most=1e-4)


def test_full_width_matches_reference(parity):
    cfg = MCPConfig(in_dim=896, out_dim=2304, temperature=2.0)
    tensors = random_tensors(mcp_layout(cfg), "mcp", seed=5)
    tensors["temperature"] = np.array(1.7, np.float32)  # the checkpoint's value is used
    model = MCP.from_checkpoint(None, tensors=tensors, config=cfg)
    err = compare(model, mcp_reference.build(cfg, tensors), cfg, zero_first=True)
    print(f"full-width MCP rel err {err:.2e}")
    parity("mcp 0.5B-width", "mlx fp32", "max_rel_err", err, at_most=1e-4)


def test_temperature_comes_from_checkpoint(tiny_ckpt):
    m = MCP.from_checkpoint(tiny_ckpt)
    assert float(m.temperature) == pytest.approx(float(tiny_ckpt.load("mcp")["temperature"]))
