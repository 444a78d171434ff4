"""SANA DiT (diffusers ``SanaTransformer2DModel``) in MLX.

Parameter paths are the diffusers checkpoint names, so :func:`weights.mapping.mlx_map.load_component`
loads the ``dit`` component strictly.  The feed-forward's 1x1 convolutions are ``nn.Linear``
(see ``weights.mapping.mlx_map.DIT_LINEAR_CONVS``) so they quantize.  Latents in and velocity out are
NCHW like diffusers; inside, tokens are (B, N, C) and the Mix-FFN works on NHWC.
"""

from __future__ import annotations

import math

import mlx.core as mx
import mlx.nn as nn

from weights.core.configs import DiTConfig

from mlx_model.components.conv_layers import DepthwiseConv2d
from mlx_model.support.activations import silu
from mlx_model.support.quant import QUANT_GROUP_SIZE

TIMESTEP_CHANNELS = DiTConfig.TIMESTEP_CHANNELS
LINEAR_ATTN_EPS = DiTConfig.LINEAR_ATTN_EPS


def timestep_embedding(t: mx.array, dim: int = TIMESTEP_CHANNELS, max_period: float = DiTConfig.TIMESTEP_MAX_PERIOD) -> mx.array:
    """[cos, sin] sinusoidal features of float timesteps [B] -> [B, dim]."""
    half = dim // 2
    freqs = mx.exp(-math.log(max_period) * mx.arange(half, dtype=mx.float32) / half)
    args = t.astype(mx.float32)[:, None] * freqs[None]
    return mx.concatenate([mx.cos(args), mx.sin(args)], axis=-1)


class TimestepEmbedder(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(TIMESTEP_CHANNELS, dim)
        self.linear_2 = nn.Linear(dim, dim)

    def __call__(self, x):
        return self.linear_2(silu(self.linear_1(x)))


class _TimeEmb(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.timestep_embedder = TimestepEmbedder(dim)


class AdaLayerNormSingle(nn.Module):
    """timestep -> (6*D modulation, D embedded timestep)."""

    def __init__(self, dim: int):
        super().__init__()
        self.emb = _TimeEmb(dim)
        self.linear = nn.Linear(dim, 6 * dim)

    def __call__(self, t: mx.array, dtype):
        emb = self.emb.timestep_embedder(timestep_embedding(t).astype(dtype))
        return self.linear(silu(emb)), emb


class CaptionProjection(nn.Module):
    """Linear - GELU(tanh) - Linear."""

    def __init__(self, in_features: int, hidden: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_features, hidden)
        self.linear_2 = nn.Linear(hidden, hidden)

    def __call__(self, x):
        return self.linear_2(nn.gelu_approx(self.linear_1(x)))


class PatchEmbed(nn.Module):
    def __init__(self, in_channels: int, dim: int, patch_size: int):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, patch_size, stride=patch_size)

    def __call__(self, x_nhwc):
        y = self.proj(x_nhwc)
        return y.reshape(y.shape[0], -1, y.shape[-1])


def _heads(x, n):
    b, l, _ = x.shape
    return x.reshape(b, l, n, -1).transpose(0, 2, 1, 3)


class LinearAttention(nn.Module):
    """Self-attention with ReLU feature maps: out = (q k^T v) / (q k^T 1), in fp32."""

    def __init__(self, dim: int, heads: int, head_dim: int, bias: bool):
        super().__init__()
        self.heads = heads
        inner = heads * head_dim
        self.to_q = nn.Linear(dim, inner, bias=bias)
        self.to_k = nn.Linear(dim, inner, bias=bias)
        self.to_v = nn.Linear(dim, inner, bias=bias)
        self.to_out = [nn.Linear(inner, dim)]

    def __call__(self, x):
        dtype = x.dtype
        q = nn.relu(_heads(self.to_q(x), self.heads)).astype(mx.float32)
        k = nn.relu(_heads(self.to_k(x), self.heads)).astype(mx.float32)
        v = _heads(self.to_v(x), self.heads).astype(mx.float32)
        kv = k.transpose(0, 1, 3, 2) @ v  # [B, H, d, d]
        num = q @ kv
        den = q @ k.sum(axis=2, keepdims=True).transpose(0, 1, 3, 2)  # [B, H, N, 1]
        out = num / (den + LINEAR_ATTN_EPS)
        b, h, n, d = out.shape
        out = out.transpose(0, 2, 1, 3).reshape(b, n, h * d).astype(dtype)
        return self.to_out[0](out)


class CrossAttention(nn.Module):
    def __init__(self, dim: int, context_dim: int, heads: int, head_dim: int):
        super().__init__()
        self.heads = heads
        self.scale = head_dim ** -0.5
        inner = heads * head_dim
        self.to_q = nn.Linear(dim, inner)
        self.to_k = nn.Linear(context_dim, inner)
        self.to_v = nn.Linear(context_dim, inner)
        self.to_out = [nn.Linear(inner, dim)]

    def __call__(self, x, context, mask=None):
        q, k, v = (_heads(p(s), self.heads) for p, s in
                   ((self.to_q, x), (self.to_k, context), (self.to_v, context)))
        out = mx.fast.scaled_dot_product_attention(q, k, v, scale=self.scale, mask=mask)
        b, h, n, d = out.shape
        return self.to_out[0](out.transpose(0, 2, 1, 3).reshape(b, n, h * d))


class GLUMBConv(nn.Module):
    """Mix-FFN: 1x1 expand, SiLU, depthwise 3x3, gated SiLU, 1x1 project (NHWC)."""

    def __init__(self, dim: int, mlp_ratio: float):
        super().__init__()
        hidden = int(mlp_ratio * dim)
        self.conv_inverted = nn.Linear(dim, 2 * hidden)
        # MLX's grouped convolution on CPU runs one small product per channel: the shifted sum
        # (same parameters and result) instead, as the vision tower and DC-AE do
        self.conv_depth = DepthwiseConv2d(2 * hidden, 2 * hidden, 3, padding=1, groups=2 * hidden)
        self.conv_point = nn.Linear(hidden, dim, bias=False)

    def __call__(self, x):
        x = self.conv_depth(silu(self.conv_inverted(x)))
        x, gate = mx.split(x, 2, axis=-1)
        return self.conv_point(x * silu(gate))


def _layer_norm(x, eps):
    return mx.fast.layer_norm(x, None, None, eps)


class SanaBlock(nn.Module):
    def __init__(self, c: DiTConfig):
        super().__init__()
        d = c.inner_dim
        self.eps = c.norm_eps
        self.attn1 = LinearAttention(d, c.num_attention_heads, c.attention_head_dim, c.attention_bias)
        self.attn2 = CrossAttention(d, c.cross_attention_dim, c.num_cross_attention_heads,
                                    c.cross_attention_head_dim)
        self.ff = GLUMBConv(d, c.mlp_ratio)
        self.scale_shift_table = mx.zeros((6, d))

    def __call__(self, x, context, t6, mask, hw):
        b, n, d = x.shape
        mod = self.scale_shift_table[None] + t6.reshape(b, 6, d)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mx.split(mod, 6, axis=1)
        h = _layer_norm(x, self.eps) * (1 + scale_msa) + shift_msa
        x = x + gate_msa * self.attn1(h)
        x = x + self.attn2(x, context, mask)
        h = _layer_norm(x, self.eps) * (1 + scale_mlp) + shift_mlp
        ff = self.ff(h.reshape(b, *hw, d)).reshape(b, n, d)
        return x + gate_mlp * ff


class SanaTransformer(nn.Module):
    def __init__(self, config: DiTConfig):
        super().__init__()
        c = self.config = config
        c.check_supported()
        d = c.inner_dim
        self.patch_embed = PatchEmbed(c.in_channels, d, c.patch_size)
        self.time_embed = AdaLayerNormSingle(d)
        self.caption_projection = CaptionProjection(c.caption_channels, d)
        self.caption_norm = nn.RMSNorm(d, eps=DiTConfig.CAPTION_NORM_EPS)
        self.transformer_blocks = [SanaBlock(c) for _ in range(c.num_layers)]
        self.scale_shift_table = mx.zeros((2, d))
        self.proj_out = nn.Linear(d, c.patch_size * c.patch_size * c.out_channels)
        self.eval_blocks = False  # evaluate block by block (quant.has_jit_layers; set at load)

    @classmethod
    def from_checkpoint(cls, ckpt, quantize: int = 0, group_size: int = QUANT_GROUP_SIZE,
                        dtype=mx.float32, tensors=None, config: DiTConfig | None = None,
                        dequantize: bool | None = None):
        """Build from ``ckpt`` (or from ``tensors`` with ``config`` when ``ckpt`` is None);
        ``dequantize``: see :func:`mlx_model.support.quant.quantize_linears`."""
        from mlx_model.support.mlx_folder import load_part

        return load_part(cls(config or ckpt.config.dit), ckpt, "dit", dtype=dtype, tensors=tensors,
                         quantize=quantize, group_size=group_size, dequantize=dequantize)

    def __call__(self, latents: mx.array, context: mx.array, timestep: mx.array,
                 context_mask: mx.array | None = None) -> mx.array:
        """latents [B, C, H, W], context [B, L, caption_channels], timestep [B] (or scalar),
        optional context_mask [B, L] of 0/1 -> velocity [B, C_out, H, W]."""
        c, p = self.config, self.config.patch_size
        b, _, hgt, wid = latents.shape
        dtype = self.caption_norm.weight.dtype
        x = self.patch_embed(latents.transpose(0, 2, 3, 1).astype(dtype))
        hw = (hgt // p, wid // p)
        t = mx.broadcast_to(mx.array(timestep).reshape(-1), (b,))
        t6, emb = self.time_embed(t, dtype)
        ctx = self.caption_norm(self.caption_projection(context.astype(dtype)))
        mask = None
        if context_mask is not None:
            mask = ((1 - context_mask.astype(dtype)) * DiTConfig.MASK_BIAS)[:, None, None, :]
        for block in self.transformer_blocks:
            x = block(x, ctx, t6, mask, hw)
            if self.eval_blocks:  # JIT layers: one block's dequantized weights alive at a time
                mx.eval(x)
        shift, scale = mx.split(self.scale_shift_table[None] + emb[:, None], 2, axis=1)
        x = _layer_norm(x, DiTConfig.NORM_OUT_EPS) * (1 + scale) + shift
        x = self.proj_out(x)
        x = x.reshape(b, *hw, p, p, c.out_channels).transpose(0, 5, 1, 3, 2, 4)
        return x.reshape(b, c.out_channels, hw[0] * p, hw[1] * p)
