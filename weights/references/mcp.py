"""The Mobile Conditioning Projector in plain PyTorch, following Mobile-O's own source
(github Amshaker/Mobile-O, ``mobileo/model/mobile_block.py``: ``LayerwiseMobileFusion`` and
the blocks it uses; docs/model-facts.md section 7) -- the reference for the MLX port and for
the Core ML gate.  Checked against a hand-computed numpy case in tests/test_mcp_reference.py.

    h = sum_i softmax(layer_weights / T)_i * hidden_i              # last num_layers LLM states
    x = Hardswish(LN(Linear(in_dim -> dim)(h)))                    # input_compress.{0,1,2}
    repeat num_refiners times (sequence_refiners.i):
        y = Hardswish(LN_conv(pointwise(depthwise(x))))            # Conv1d k=3 (pad 1) + 1x1, no bias
        s = Hardsigmoid(fc.2(Hardswish(fc.0(mean_seq(y)))))        # EfficientChannelAttention
        x = LN(y * s + x)                                          # residual, then norm
    out = LN(Linear(dim -> out_dim)(x))                            # output_proj.{0,1}

As in the source: the channel attention's Linears have no bias and its bottleneck is
max(dim // 4, 8); the attention averages over the whole sequence; Hardswish and Hardsigmoid
are PyTorch's (x * relu6(x + 3) / 6 and relu6(x + 3) / 6); every LayerNorm has weight and
bias, eps ``MCPConfig.norm_eps`` (PyTorch's default 1e-5); T is the checkpoint's
``temperature`` buffer.  Tensors are plain (B, L, C); hidden states go in as a list of
``num_layers`` such tensors.  Key names are those of ``weights.loading.synthetic.mcp_layout``.
Needs torch (not the MLX path).
"""

from __future__ import annotations

import numpy as np

from weights.core.configs import MCPConfig


def build(cfg: MCPConfig, tensors: dict[str, np.ndarray] | None = None):
    """An eval() ``MCP`` module, filled strictly from ``tensors`` when given."""
    from weights.references.upstream import load_state

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
            self.fc = nn.Sequential(nn.Linear(c.dim, c.attn_dim, bias=False), nn.Hardswish(),
                                    nn.Linear(c.attn_dim, c.dim, bias=False), nn.Hardsigmoid())

        def forward(self, x):  # (B, L, C): one weight per channel from the sequence mean
            return x * self.fc(x.mean(dim=1, keepdim=True))

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
