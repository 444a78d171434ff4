"""The Mobile Conditioning Projector in plain PyTorch, written from the facts file formula
(mobile-o.md section 7) -- the reference for the MLX port and for the Core ML gate.

    h = sum_i softmax(layer_weights / T)_i * hidden_i              # last num_layers LLM states
    x = Hardswish(LN(Linear(in_dim -> dim)(h)))                    # input_compress.{0,1}
    repeat num_refiners times (sequence_refiners.i):
        y = Hardswish(LN_conv(pointwise(depthwise(x))))            # Conv1d k=3 (pad 1) + 1x1, no bias
        y = y * sigmoid(fc.2(ReLU(fc.0(mean_seq(y)))))             # channel attention, Linears without bias
        x = LN(y + x)                                              # residual, then norm
    out = LN(Linear(dim -> out_dim)(x))                            # output_proj.{0,1}

Choices where the facts leave room (the standard reading, shared by the MLX port):
- channel attention is squeeze-and-excitation: mean over the sequence, Linear(dim, attn_dim,
  no bias), ReLU, Linear(attn_dim, dim, no bias), sigmoid, multiplied into ``y``;
- Hardswish sits after each LayerNorm of the input projection and of the conv block, not after
  the refiner's closing LayerNorm nor the output projection;
- T is the checkpoint's ``temperature`` buffer, used as softmax(layer_weights / T);
- the depthwise convolution pads (kernel_size - 1) / 2 on both sides ("same" length);
- every LayerNorm has weight and bias, eps ``MCPConfig.norm_eps`` (1e-5).
Tensors are plain (B, L, C); hidden states go in as a list of ``num_layers`` such tensors.
Key names are those of ``weights.synthetic.mcp_layout``.  Needs torch (not the MLX path).
"""

from __future__ import annotations

import numpy as np

from .configs import MCPConfig


def build(cfg: MCPConfig, tensors: dict[str, np.ndarray] | None = None):
    """An eval() ``MCP`` module, filled strictly from ``tensors`` when given."""
    from .upstream import load_state

    module = _module_class()(cfg).eval()
    if tensors is not None:
        load_state(module, tensors)
    return module


def _module_class():
    import torch
    import torch.nn as nn

    class DepthwiseSeparable(nn.Module):
        def __init__(self, c: MCPConfig):
            super().__init__()
            self.depthwise = nn.Conv1d(c.dim, c.dim, c.kernel_size, padding=c.kernel_size // 2,
                                       groups=c.dim, bias=False)
            self.pointwise = nn.Conv1d(c.dim, c.dim, 1, bias=False)
            self.norm = nn.LayerNorm(c.dim, eps=c.norm_eps)

        def forward(self, x):  # (B, L, C)
            y = self.pointwise(self.depthwise(x.transpose(1, 2))).transpose(1, 2)
            return nn.functional.hardswish(self.norm(y))

    class ChannelAttention(nn.Module):
        def __init__(self, c: MCPConfig):
            super().__init__()
            self.fc = nn.Sequential(nn.Linear(c.dim, c.attn_dim, bias=False), nn.ReLU(),
                                    nn.Linear(c.attn_dim, c.dim, bias=False))

        def forward(self, x):
            return x * torch.sigmoid(self.fc(x.mean(dim=1, keepdim=True)))

    class Refiner(nn.Module):
        def __init__(self, c: MCPConfig):
            super().__init__()
            self.conv = DepthwiseSeparable(c)
            self.channel_attn = ChannelAttention(c)
            self.norm = nn.LayerNorm(c.dim, eps=c.norm_eps)

        def forward(self, x):
            return self.norm(self.channel_attn(self.conv(x)) + x)

    class MCP(nn.Module):
        def __init__(self, c: MCPConfig):
            super().__init__()
            self.layer_weights = nn.Parameter(torch.zeros(c.num_layers))
            self.register_buffer("temperature", torch.tensor(float(c.temperature)))
            self.input_compress = nn.Sequential(nn.Linear(c.in_dim, c.dim),
                                                nn.LayerNorm(c.dim, eps=c.norm_eps))
            self.sequence_refiners = nn.ModuleList([Refiner(c) for _ in range(c.num_refiners)])
            self.output_proj = nn.Sequential(nn.Linear(c.dim, c.out_dim),
                                             nn.LayerNorm(c.out_dim, eps=c.norm_eps))

        def forward(self, hidden_states):
            w = torch.softmax(self.layer_weights / self.temperature, dim=0)
            h = sum(w[i] * hs for i, hs in enumerate(hidden_states))
            x = nn.functional.hardswish(self.input_compress(h))
            for r in self.sequence_refiners:
                x = r(x)
            return self.output_proj(x)

    return MCP
