"""Mobile Conditioning Projector (weights/references/mcp.py) for the Neural Engine.

Bundle I/O (one sequence; for classifier-free guidance the app runs it a second time on
zeros — Mobile-O's unconditional branch is MCP(zeros_like(h)) at the same length):
  hidden_states  (K, D, 1, S)   the LLM's last K=4 hidden states as the llm bundle's hidden_states function lays them out
                                (oldest first; the last one after the final norm)
  attention_mask (1, S)         1 = real token, 0 = right padding
  -> conditioning (1, Cc, 1, S) the DiT's encoder_hidden_states; padded positions are 0
S is one of ``contract.sequence_lengths`` (enumerated shapes); the I/O is ``contract.mcp_io``.  On the real tokens the result equals
the reference MCP run on the unpadded sequence: padding is zeroed before every sequence
convolution (= the convolution's own zero padding) and the channel attention's sequence mean
is a masked mean.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from weights.core.configs import MCPConfig
from weights.mapping.torch_map import load_torch

from coreml_convert import ane
from weights.bundles.contract import mcp_io, sequence_lengths
from coreml_convert.spec import ComponentSpec


class DepthwiseSeparable(nn.Module):
    def __init__(self, c: MCPConfig):
        super().__init__()
        k = c.kernel_size
        self.depthwise = nn.Conv2d(c.dim, c.dim, (1, k), padding=(0, k // 2), groups=c.dim, bias=False)
        self.pointwise = nn.Conv2d(c.dim, c.dim, 1, bias=False)
        self.norm = ane.LayerNorm(c.dim, eps=c.norm_eps)

    def forward(self, x, mask):
        return F.hardswish(self.norm(self.pointwise(self.depthwise(x * mask))))


class ChannelAttention(nn.Module):
    def __init__(self, c: MCPConfig):
        super().__init__()
        self.fc = nn.ModuleList([ane.Linear(c.dim, c.attn_dim, bias=False), nn.Hardswish(),
                                 ane.Linear(c.attn_dim, c.dim, bias=False), nn.Hardsigmoid()])

    def forward(self, x, mask, count):
        mean = (x * mask).sum(dim=3, keepdim=True) / count  # masked mean over the sequence
        gate = mean
        for layer in self.fc:  # Mobile-O's EfficientChannelAttention: Hardswish, Hardsigmoid
            gate = layer(gate)
        return x * gate


class Refiner(nn.Module):
    def __init__(self, c: MCPConfig):
        super().__init__()
        self.conv = DepthwiseSeparable(c)
        self.channel_attn = ChannelAttention(c)
        self.norm = ane.LayerNorm(c.dim, eps=c.norm_eps)

    def forward(self, x, mask, count):
        return self.norm(self.channel_attn(self.conv(x, mask), mask, count) + x)


class MCP(nn.Module):
    """Parameter names = weights.loading.synthetic.mcp_layout keys."""

    def __init__(self, c: MCPConfig):
        super().__init__()
        self.cfg = c
        self.layer_weights = nn.Parameter(torch.zeros(c.num_layers))
        self.register_buffer("temperature", torch.tensor(float(c.temperature)))
        self.input_compress = nn.ModuleList([ane.Linear(c.in_dim, c.dim), ane.LayerNorm(c.dim, eps=c.norm_eps)])
        self.sequence_refiners = nn.ModuleList(Refiner(c) for _ in range(c.num_refiners))
        self.output_proj = nn.ModuleList([ane.Linear(c.dim, c.out_dim), ane.LayerNorm(c.out_dim, eps=c.norm_eps)])

    def forward(self, hidden_states, attention_mask):
        mask = attention_mask[:, None, None, :]  # (1, 1, 1, S)
        count = mask.sum(dim=3, keepdim=True)
        w = torch.softmax(self.layer_weights / self.temperature, dim=0)
        h = (hidden_states * w[:, None, None, None]).sum(dim=0, keepdim=True)  # (1, D, 1, S)
        x = F.hardswish(self.input_compress[1](self.input_compress[0](h)))
        for refiner in self.sequence_refiners:
            x = refiner(x, mask, count)
        return self.output_proj[1](self.output_proj[0](x)) * mask


# ------------------------------------------------------------------ spec


def reference_forward(model, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """weights.references.mcp on the unpadded tokens, zero-padded back to S, (1, Cc, 1, S)."""
    mask = inputs["attention_mask"][0]
    valid = int(mask.sum())
    if not np.all(mask[:valid] == 1) or np.any(mask[valid:] != 0):
        raise ValueError("the MCP's attention_mask must be right padding: ones, then zeros")
    hs = torch.from_numpy(inputs["hidden_states"][:, :, 0, :valid]).float().transpose(1, 2)  # (K, L, D)
    with torch.no_grad():
        y = model([hs[i:i + 1] for i in range(hs.shape[0])])  # (1, L, Cc)
    out = np.zeros((1, y.shape[-1], 1, mask.shape[0]), np.float32)
    out[0, :, 0, :valid] = y[0].T.numpy()
    return {"conditioning": out}


def example_inputs(cfg: MCPConfig, length: int, seed: int = 0, valid: int | None = None,
                   scale: float = 2.0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    valid = max(1, (3 * length) // 4) if valid is None else valid
    mask = np.zeros((1, length), np.float32)
    mask[:, :valid] = 1
    hs = (scale * rng.standard_normal((cfg.num_layers, cfg.in_dim, 1, length))).astype(np.float32)
    return {"hidden_states": hs, "attention_mask": mask}


def build_spec(ckpt, seed: int = 0, lengths: tuple[int, ...] | None = None) -> ComponentSpec:
    from weights.references import mcp as mcp_reference

    cfg = ckpt.config.mcp
    lengths = lengths or sequence_lengths(ckpt.config)
    tensors = ckpt.load("mcp")
    module = MCP(cfg).eval()
    load_torch(module, ckpt, "mcp", tensors=tensors)
    ref = mcp_reference.build(cfg, tensors)
    return ComponentSpec(
        module=module,
        example_inputs=example_inputs(cfg, lengths[0], seed),
        reference=lambda x: reference_forward(ref, x),
        io=mcp_io(ckpt.config, lengths),
    )
