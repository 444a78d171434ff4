"""Neural-Engine building blocks, shared by every Core ML component: primitives (1x1-conv
Linear, channel norms, attention, layout helpers) and the blocks more than one component
uses (``GLUMBConv``: the DiT and the DC-AE decoder).  The Qwen2 decoder of the ``llm``
bundle lives in ``ane_qwen2``.  Components import these, never each other.

The Neural Engine wants (github apple/ml-ane-transformers, docs/deployment-notes.md section 1):
  * activations as rank-4 (B, C, 1, S) — channels on axis 1, the sequence on the last axis;
  * ``nn.Conv2d`` 1x1 instead of ``nn.Linear`` (weights reshaped at load by weights/mapping/torch_map.py);
  * norms over the channel axis, written so coremltools fuses them into one ``layer_norm``
    op (pass ``fuse_layernorm_or_instancenorm``, rank 4, axes [1]) that stays accurate in fp16;
  * attention split per head, einsum with the softmax over one axis;
  * additive masks of -1e4 (never -inf: fp16 softmax of -inf rows gives NaN).

Module parameter names equal the checkpoint's component-local names (``weight``/``bias``
with the upstream shapes for norms), so ``load_state_dict(strict=True)`` loads them as they are.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from weights.core.configs import DiTConfig

MASK_MIN = DiTConfig.MASK_BIAS  # additive bias for masked keys: -1e4, as diffusers' encoder_attention_mask
# Denominator floor of ReLU linear attention (a clamp, not an added term): the smallest normal
# fp16 number, so an all-zero (ReLU'd) query gives 0 instead of 0/0 on fp16 hardware while any
# larger denominator is used exactly (upstream adds 1e-15 in fp32).
LINEAR_ATTN_EPS = 2.0 ** -14


def Linear(in_features: int, out_features: int, bias: bool = True) -> nn.Conv2d:
    """A Linear layer as a 1x1 Conv2d over (B, C, 1, S); load [O, I] weights as [O, I, 1, 1]."""
    return nn.Conv2d(in_features, out_features, kernel_size=1, bias=bias)


def _channel_view(p: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return p.view(1, -1, *([1] * (x.dim() - 2)))


class LayerNorm(nn.Module):
    """LayerNorm over axis 1 of a rank-4 (B, C, H, W) / (B, C, 1, S) tensor.

    Written as mean / subtract / square / mean / rsqrt so coremltools fuses it into one
    ``layer_norm(axes=[1])``: no x**2 overflow in fp16 on the Neural Engine.
    """

    def __init__(self, channels: int, eps: float = 1e-5, elementwise_affine: bool = True,
                 bias: bool = True):
        super().__init__()
        self.channels, self.eps = channels, eps
        self.weight = nn.Parameter(torch.ones(channels)) if elementwise_affine else None
        self.bias = nn.Parameter(torch.zeros(channels)) if elementwise_affine and bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        zero_mean = x - x.mean(dim=1, keepdim=True)
        var = (zero_mean * zero_mean).mean(dim=1, keepdim=True)
        out = zero_mean * torch.rsqrt(var + self.eps)
        if self.weight is not None:
            out = out * _channel_view(self.weight, x)
        if self.bias is not None:
            out = out + _channel_view(self.bias, x)
        return out


class RMSNorm(nn.Module):
    """RMSNorm over axis 1 (x * rsqrt(mean(x^2) + eps) * weight [+ bias]).

    fp16-safe without doubling the channels: x is first divided by m, its largest |value| over
    the channels plus MIN_SCALE, so y = x / m lies in (-1, 1) and y^2 cannot
    overflow fp16 (x^2 does past |x| = 256); then x / rms(x) = y * rsqrt(mean(y^2) + eps / m^2),
    exactly.  (Anemll's LayerNorm of concat([x, -x]) is also overflow-safe but runs on twice
    the channels -- at the VAE's full resolution, twice the activation memory.)
    """

    MIN_SCALE = 1e-3  # keeps m > 0 and sqrt(eps) / m small (1e-3 / 1e-3 = 1 for eps 1e-6)

    def __init__(self, channels: int, eps: float = 1e-6, elementwise_affine: bool = True,
                 bias: bool = False):
        super().__init__()
        self.channels, self.eps = channels, eps
        self.weight = nn.Parameter(torch.ones(channels)) if elementwise_affine else None
        self.bias = nn.Parameter(torch.zeros(channels)) if elementwise_affine and bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = x.abs().amax(dim=1, keepdim=True) + self.MIN_SCALE  # > 0; any positive m is exact
        y = x / m
        # (sqrt(eps) / m)^2 = eps / m^2 without an fp16 overflow on the way; a tensor numerator
        # and sqrt + divide keep the program free of fp32 epsilon constants (inverse / rsqrt)
        e = torch.full((1,), math.sqrt(self.eps), dtype=x.dtype) / m
        out = y / torch.sqrt((y * y).mean(dim=1, keepdim=True) + e * e)
        if self.weight is not None:
            out = out * _channel_view(self.weight, x)
        if self.bias is not None:
            out = out + _channel_view(self.bias, x)
        return out


def split_heads(x: torch.Tensor, head_dim: int) -> tuple[torch.Tensor, ...]:
    """(B, H*d, 1, S) -> H tensors (B, d, 1, S): head h holds channels [h*d, (h+1)*d).

    Static channel slices rather than ``Tensor.split``: coremltools cannot convert a split
    whose input has a flexible (enumerated) sequence length (non-const split_sizes)."""
    return tuple(x[:, i:i + head_dim] for i in range(0, x.shape[1], head_dim))


def attention_mask_bias(mask: torch.Tensor) -> torch.Tensor:
    """0/1 key mask (B, S) -> additive bias (B, S, 1, 1) for :func:`attention` (1 = attend)."""
    return ((1.0 - mask) * MASK_MIN)[:, :, None, None]


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, head_dim: int,
              bias: torch.Tensor | None = None, scale: float | None = None,
              split: bool = True) -> torch.Tensor:
    """Softmax attention per head.

    q: (B, H*d, 1, Sq); k, v: (B, H*d, 1, Sk); bias: (B, Sk, 1, Sq) or (B, Sk, 1, 1) additive.
    Returns (B, H*d, 1, Sq).
    split=True: one einsum pair per head (ml-ane-transformers' split einsum), scores per head
      (B, Sk, 1, Sq) with the softmax over axis 1;
    split=False: heads as a batch axis, scores (B, H, Sk, Sq), softmax over axis 2 — the same
      numbers in ~10 ops instead of ~5 per head (what deep, many-headed models convert with).
    """
    scale = head_dim ** -0.5 if scale is None else scale
    if not split:
        qh, kh, vh = (to_heads(t, head_dim) for t in (q * scale, k, v))  # (B, H, d, S)
        w = torch.einsum("bhdq,bhdk->bhkq", qh, kh)
        if bias is not None:
            w = w + bias.transpose(1, 2)  # (B, 1, Sk, Sq | 1)
        w = w.softmax(dim=2)
        return from_heads(torch.einsum("bhkq,bhdk->bhdq", w, vh))
    out = []
    for qh, kh, vh in zip(split_heads(q * scale, head_dim), split_heads(k, head_dim),
                          split_heads(v, head_dim)):
        w = torch.einsum("bchq,bkhc->bkhq", qh, kh.transpose(1, 3))
        if bias is not None:
            w = w + bias
        w = w.softmax(dim=1)
        out.append(torch.einsum("bkhq,bchk->bchq", w, vh))
    return torch.cat(out, dim=1)


def to_heads(x: torch.Tensor, head_dim: int) -> torch.Tensor:
    """(B, H*d, 1, S) -> (B, H, d, S); S stays dynamic (enumerated sequence lengths)."""
    b, c = int(x.shape[0]), int(x.shape[1])
    return x.reshape(b, c // head_dim, head_dim, -1)


def from_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, H, d, S) -> (B, H*d, 1, S)."""
    b, h, d = (int(n) for n in x.shape[:3])
    return x.reshape(b, h * d, 1, -1)


def linear_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                     eps: float = LINEAR_ATTN_EPS) -> torch.Tensor:
    """SANA's ReLU-kernel linear attention, heads as a batch axis:
    out_m = sum_n v_n (k_n . q_m) / sum_n (k_n . q_m).

    q, k: (B, H, d, N), already non-negative; v: (B, H, dv, N).  Returns (B, H, dv, N).
    Upstream computes this in fp32 with sums over all N positions; here k and v are each
    scaled by N^-1/2 (and the denominator uses mean(k)), which cancels in the ratio and keeps
    every intermediate O(|v| |k|) — representable in fp16 at N = 4096.
    """
    s = 1.0 / math.sqrt(int(q.shape[-1]))  # N is static (traced as a constant)
    kv = torch.einsum("bhcn,bhdn->bhcd", v * s, k * s)  # (B, H, dv, d) = mean_n v_n k_n^T
    num = torch.einsum("bhcd,bhdn->bhcn", kv, q)  # (B, H, dv, N)
    den = (k.mean(dim=3, keepdim=True) * q).sum(dim=2, keepdim=True)  # (B, H, 1, N)
    return num / _floor(den, eps)


def _floor(x: torch.Tensor, eps: float) -> torch.Tensor:
    """max(x, eps) as one ``maximum`` op (``clamp(min=)`` becomes a clip whose +inf upper
    bound overflows the fp16 cast)."""
    return torch.maximum(x, torch.full((1,) * x.dim(), eps, dtype=x.dtype))


def quadratic_relu_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                             eps: float = LINEAR_ATTN_EPS) -> torch.Tensor:
    """The same ReLU kernel evaluated quadratically (DC-AE uses it when N <= head_dim):
    scores (B, H, Nk, Nq) = k . q normalized over the keys; out = v @ scores.  (B, H, d, N)."""
    w = torch.einsum("bhdk,bhdq->bhkq", k, q)
    w = w / _floor(w.sum(dim=2, keepdim=True), eps)
    return torch.einsum("bhck,bhkq->bhcq", v, w)


def to_sequence(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, 1, H*W), row-major like torch's flatten(2) (static shapes)."""
    b, c, h, w = (int(d) for d in x.shape)
    return x.reshape(b, c, 1, h * w)


def to_spatial(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(B, C, 1, H*W) -> (B, C, H, W)."""
    return x.reshape(int(x.shape[0]), int(x.shape[1]), int(height), int(width))


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


# ------------------------------------------------------------------ blocks shared by components


class GLUMBConv(nn.Module):
    """diffusers' GLUMBConv, used by the DiT's feed-forward and the DC-AE decoder's
    EfficientViT blocks: inverted 1x1 conv, SiLU, depthwise 3x3, gated SiLU, pointwise 1x1
    (on (B, C, H, W)); optionally a channel RMSNorm and a residual."""

    def __init__(self, in_channels: int, out_channels: int, expand_ratio: float, rms_norm: bool = False,
                 residual: bool = False):
        super().__init__()
        hidden = int(expand_ratio * in_channels)
        self.conv_inverted = nn.Conv2d(in_channels, hidden * 2, 1)
        self.conv_depth = nn.Conv2d(hidden * 2, hidden * 2, 3, padding=1, groups=hidden * 2)
        self.conv_point = nn.Conv2d(hidden, out_channels, 1, bias=False)
        self.norm = RMSNorm(out_channels, eps=DiTConfig.GLUMB_NORM_EPS, bias=True) if rms_norm else None
        self.residual = residual

    def forward(self, x):
        h = self.conv_depth(F.silu(self.conv_inverted(x)))
        h, gate = h.chunk(2, dim=1)
        h = self.conv_point(h * F.silu(gate))
        if self.norm is not None:
            h = self.norm(h)
        return h + x if self.residual else h
