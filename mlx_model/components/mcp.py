"""The Mobile Conditioning Projector in MLX: last LLM hidden states -> DiT caption features.

Mobile-O's ``LayerwiseMobileFusion`` as ``weights/references/mcp.py`` writes it (see its
docstring and docs/model-facts.md section 7); parameter
paths are the checkpoint's ``model.diffusion_connector.fusion.*`` names.  Tensors (B, L, C).
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from weights.core.configs import MCPConfig



class DepthwiseSeparable(nn.Module):
    def __init__(self, c: MCPConfig):
        super().__init__()
        self.depthwise = nn.Conv1d(c.dim, c.dim, c.kernel_size, padding=c.kernel_size // 2,
                                   groups=c.dim, bias=False)
        self.pointwise = nn.Conv1d(c.dim, c.dim, 1, bias=False)
        self.norm = nn.LayerNorm(c.dim, eps=c.norm_eps)

    def __call__(self, x):
        return nn.hardswish(self.norm(self.pointwise(self.depthwise(x))))


class Hardsigmoid(nn.Module):
    """PyTorch's Hardsigmoid, relu6(x + 3) / 6 (MLX has no such layer)."""

    def __call__(self, x):
        return mx.clip(x + 3, 0, 6) / 6


class ChannelAttention(nn.Module):
    """Mobile-O's EfficientChannelAttention: a weight per channel from the sequence mean."""

    def __init__(self, c: MCPConfig):
        super().__init__()
        self.fc = [nn.Linear(c.dim, c.attn_dim, bias=False), nn.Hardswish(),
                   nn.Linear(c.attn_dim, c.dim, bias=False), Hardsigmoid()]

    def __call__(self, x):
        s = x.mean(axis=1, keepdims=True)
        for layer in self.fc:
            s = layer(s)
        return x * s


class Refiner(nn.Module):
    def __init__(self, c: MCPConfig):
        super().__init__()
        self.conv = DepthwiseSeparable(c)
        self.channel_attn = ChannelAttention(c)
        self.norm = nn.LayerNorm(c.dim, eps=c.norm_eps)

    def __call__(self, x):
        return self.norm(self.channel_attn(self.conv(x)) + x)


class MCP(nn.Module):
    def __init__(self, config: MCPConfig):
        super().__init__()
        c = self.config = config
        self.layer_weights = mx.zeros((c.num_layers,))
        self.temperature = mx.array(float(c.temperature))
        self.input_compress = [nn.Linear(c.in_dim, c.dim), nn.LayerNorm(c.dim, eps=c.norm_eps)]
        self.sequence_refiners = [Refiner(c) for _ in range(c.num_refiners)]
        self.output_proj = [nn.Linear(c.dim, c.out_dim), nn.LayerNorm(c.out_dim, eps=c.norm_eps)]

    @classmethod
    def from_checkpoint(cls, ckpt, dtype=mx.float32, tensors=None, config: MCPConfig | None = None):
        from mlx_model.support.mlx_folder import load_part

        return load_part(cls(config or ckpt.config.mcp), ckpt, "mcp", dtype=dtype, tensors=tensors)

    def __call__(self, hidden_states: list[mx.array]) -> mx.array:
        """``num_layers`` tensors [B, L, in_dim] -> [B, L, out_dim]."""
        if len(hidden_states) != self.config.num_layers:
            raise ValueError(f"the MCP fuses {self.config.num_layers} hidden states, got {len(hidden_states)}")
        w = mx.softmax(self.layer_weights / self.temperature, axis=0)
        h = w[0] * hidden_states[0]
        for i in range(1, len(hidden_states)):
            h = h + w[i] * hidden_states[i]
        x = nn.hardswish(self.input_compress[1](self.input_compress[0](h)))
        for r in self.sequence_refiners:
            x = r(x)
        return self.output_proj[1](self.output_proj[0](x))
