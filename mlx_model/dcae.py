"""DC-AE (diffusers ``AutoencoderDC``) in MLX: encoder and decoder.

Parameter paths are the diffusers names (``decoder.up_blocks.5.0.attn.to_qkv_multiscale.0
.proj_in.weight``...), convolutions OHWI (``weights.mlx_map``).  Public methods take and
return NCHW arrays like diffusers; inside, everything runs NHWC.
Supported (``VAEConfig.check_supported``): the SANA configuration (docs/model-facts.md
section 2) -- ResBlock / EfficientViTBlock,
RMSNorm, "conv" downsampling, "interpolate" (nearest) upsampling, in/out shortcuts.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from weights.configs import RES_BLOCK, VIT_BLOCK, VAEConfig, per_block
from weights.layout import VAE_DECODER

from .quant import cast

NORM_EPS = VAEConfig.NORM_EPS
ATTN_EPS = VAEConfig.LINEAR_ATTN_EPS
ACTIVATIONS = {"silu": nn.silu, "relu": nn.relu, "relu6": nn.relu6, "gelu": nn.gelu}  # VAEConfig.ACTIVATIONS


class RMSNorm(nn.Module):
    """RMSNorm over the channel (last) axis with weight and bias (diffusers RMSNorm(bias=True))."""

    def __init__(self, dims: int, eps: float = NORM_EPS):
        super().__init__()
        self.eps = eps
        self.weight = mx.ones((dims,))
        self.bias = mx.zeros((dims,))

    def __call__(self, x):
        return mx.fast.rms_norm(x, self.weight, self.eps) + self.bias


class ResBlock(nn.Module):
    def __init__(self, channels: int, act: str):
        super().__init__()
        self.act = ACTIVATIONS[act]
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.norm = RMSNorm(channels)

    def __call__(self, x):
        return self.norm(self.conv2(self.act(self.conv1(x)))) + x


class MultiscaleProjection(nn.Module):
    def __init__(self, channels: int, heads: int, kernel_size: int):
        super().__init__()
        self.proj_in = nn.Conv2d(channels, channels, kernel_size, padding=kernel_size // 2,
                                 groups=channels, bias=False)
        self.proj_out = nn.Conv2d(channels, channels, 1, groups=3 * heads, bias=False)

    def __call__(self, x):
        return self.proj_out(self.proj_in(x))


class MultiscaleLinearAttention(nn.Module):
    """ReLU linear attention over q/k/v and their multi-scale (depthwise-conv) aggregates."""

    def __init__(self, channels: int, head_dim: int, scales: tuple[int, ...]):
        super().__init__()
        self.head_dim = head_dim
        heads = channels // head_dim
        inner = heads * head_dim
        self.to_q = nn.Linear(channels, inner, bias=False)
        self.to_k = nn.Linear(channels, inner, bias=False)
        self.to_v = nn.Linear(channels, inner, bias=False)
        self.to_qkv_multiscale = [MultiscaleProjection(3 * inner, heads, k) for k in scales]
        self.to_out = nn.Linear(inner * (1 + len(scales)), channels, bias=False)
        self.norm_out = RMSNorm(channels)

    def __call__(self, x):
        b, h, w, _ = x.shape
        n, d = h * w, self.head_dim
        qkv = mx.concatenate([self.to_q(x), self.to_k(x), self.to_v(x)], axis=-1)
        qkv = mx.concatenate([qkv] + [m(qkv) for m in self.to_qkv_multiscale], axis=-1)
        dtype = x.dtype
        # channel c of the concatenation belongs to head c // (3d), row c % (3d): [q | k | v]
        qkv = qkv.reshape(b, n, -1, 3 * d).transpose(0, 2, 1, 3)  # [B, H, N, 3d]
        linear = n > d
        if linear:
            qkv = qkv.astype(mx.float32)
        q, k, v = mx.split(qkv, 3, axis=-1)
        q, k = nn.relu(q), nn.relu(k)
        if linear:
            num = q @ (k.transpose(0, 1, 3, 2) @ v)  # [B, H, N, d]
            den = q @ k.sum(axis=2, keepdims=True).transpose(0, 1, 3, 2)  # [B, H, N, 1]
            out = (num / (den + ATTN_EPS)).astype(dtype)
        else:  # quadratic, as diffusers for maps with at most head_dim pixels
            scores = (q @ k.transpose(0, 1, 3, 2)).astype(mx.float32)  # [B, H, Nq, Nk]
            scores = scores / (scores.sum(axis=-1, keepdims=True) + ATTN_EPS)
            out = scores.astype(v.dtype) @ v
        out = out.transpose(0, 2, 1, 3).reshape(b, h, w, -1)
        return self.norm_out(self.to_out(out)) + x


class GLUMBConv(nn.Module):
    """1x1 expand, SiLU, depthwise 3x3, gated SiLU, 1x1, RMSNorm, residual."""

    def __init__(self, channels: int):
        super().__init__()
        hidden = VAEConfig.GLU_EXPAND_RATIO * channels
        self.conv_inverted = nn.Conv2d(channels, 2 * hidden, 1)
        self.conv_depth = nn.Conv2d(2 * hidden, 2 * hidden, 3, padding=1, groups=2 * hidden)
        self.conv_point = nn.Conv2d(hidden, channels, 1, bias=False)
        self.norm = RMSNorm(channels)

    def __call__(self, x):
        y = self.conv_depth(nn.silu(self.conv_inverted(x)))
        y, gate = mx.split(y, 2, axis=-1)
        return self.norm(self.conv_point(y * nn.silu(gate))) + x


class EfficientViTBlock(nn.Module):
    def __init__(self, channels: int, head_dim: int, scales: tuple[int, ...]):
        super().__init__()
        self.attn = MultiscaleLinearAttention(channels, head_dim, scales)
        self.conv_out = GLUMBConv(channels)

    def __call__(self, x):
        return self.conv_out(self.attn(x))


def _block(kind: str, channels: int, head_dim: int, act: str, scales):
    """``kind`` is RES_BLOCK or VIT_BLOCK (VAEConfig.check_supported)."""
    if kind == RES_BLOCK:
        return ResBlock(channels, act)
    return EfficientViTBlock(channels, head_dim, tuple(scales))


def pixel_unshuffle(x, f: int = 2):
    """NHWC version of torch pixel_unshuffle: channel c*f*f + i*f + j."""
    b, h, w, c = x.shape
    x = x.reshape(b, h // f, f, w // f, f, c).transpose(0, 1, 3, 5, 2, 4)
    return x.reshape(b, h // f, w // f, c * f * f)


def pixel_shuffle(x, f: int = 2):
    b, h, w, c = x.shape
    x = x.reshape(b, h, w, c // (f * f), f, f).transpose(0, 1, 4, 2, 5, 3)
    return x.reshape(b, h * f, w * f, c // (f * f))


def group_mean(x, group: int):
    """Mean over consecutive channel groups (torch ``unflatten(1, (-1, g)).mean(2)``)."""
    *lead, c = x.shape
    return x.reshape(*lead, c // group, group).mean(axis=-1)


class DownBlock(nn.Module):
    """Stride-2 3x3 conv plus the space-to-channel averaging shortcut."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.group = cin * 4 // cout
        self.conv = nn.Conv2d(cin, cout, 3, stride=2, padding=1)

    def __call__(self, x):
        return self.conv(x) + group_mean(pixel_unshuffle(x), self.group)


class UpBlock(nn.Module):
    """Nearest x2 upsampling + 3x3 conv plus the channel-to-space repeating shortcut."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.repeats = cout * 4 // cin
        self.conv = nn.Conv2d(cin, cout, 3, padding=1)

    def __call__(self, x):
        up = mx.repeat(mx.repeat(x, 2, axis=1), 2, axis=2)
        return self.conv(up) + pixel_shuffle(mx.repeat(x, self.repeats, axis=-1))


def _apply(seq, x):
    for m in seq:
        x = m(x)
    return x


class Encoder(nn.Module):
    def __init__(self, c: VAEConfig):
        super().__init__()
        ch = c.encoder_block_out_channels
        self.conv_in = nn.Conv2d(c.in_channels, ch[0], 3, padding=1)
        self.down_blocks = []
        for i, (cout, n) in enumerate(zip(ch, c.encoder_layers_per_block)):
            blocks = [_block(c.encoder_block_types[i], cout, c.attention_head_dim, "silu",
                             c.encoder_qkv_multiscales[i]) for _ in range(n)]
            if i < len(ch) - 1 and n > 0:
                blocks.append(DownBlock(cout, ch[i + 1]))
            self.down_blocks.append(blocks)
        self.conv_out = nn.Conv2d(ch[-1], c.latent_channels, 3, padding=1)
        self.out_group = ch[-1] // c.latent_channels

    def __call__(self, x):
        x = self.conv_in(x)
        for blocks in self.down_blocks:
            x = _apply(blocks, x)
        return self.conv_out(x) + group_mean(x, self.out_group)


class Decoder(nn.Module):
    def __init__(self, c: VAEConfig):
        super().__init__()
        ch = c.decoder_block_out_channels
        nblocks = len(ch)
        acts = per_block(c.decoder_act_fns, nblocks)
        self.conv_in = nn.Conv2d(c.latent_channels, ch[-1], 3, padding=1)
        self.in_repeats = ch[-1] // c.latent_channels
        self.up_blocks = []
        for i, (cout, n) in enumerate(zip(ch, c.decoder_layers_per_block)):
            blocks = [UpBlock(ch[i + 1], cout)] if i < nblocks - 1 and n > 0 else []
            blocks += [_block(c.decoder_block_types[i], cout, c.attention_head_dim, acts[i],
                              c.decoder_qkv_multiscales[i]) for _ in range(n)]
            self.up_blocks.append(blocks)
        self.norm_out = RMSNorm(ch[0])
        self.conv_act = ACTIVATIONS[c.decoder_conv_act_fn]
        self.conv_out = nn.Conv2d(ch[0], c.in_channels, 3, padding=1)

    def __call__(self, z):
        x = self.conv_in(z) + mx.repeat(z, self.in_repeats, axis=-1)
        for blocks in reversed(self.up_blocks):
            x = _apply(blocks, x)
        return self.conv_out(self.conv_act(self.norm_out(x)))


class AutoencoderDC(nn.Module):
    def __init__(self, config: VAEConfig, encoder: bool = True):
        super().__init__()
        config.check_supported()
        self.config = config
        if encoder:
            self.encoder = Encoder(config)
        self.decoder = Decoder(config)

    @classmethod
    def from_checkpoint(cls, ckpt, dtype=mx.float32, encoder: bool = True, tensors=None,
                        config: VAEConfig | None = None):
        """``encoder=False`` loads only the decoder (generation does not need the encoder)."""
        from weights.mlx_map import load_component

        model = cls(config or ckpt.config.vae, encoder=encoder)
        if tensors is None:  # only what this module holds (shapes are checked on those)
            tensors = ckpt.load_used("vae", "" if encoder else VAE_DECODER)
        load_component(model, ckpt, "vae", tensors=tensors)
        cast(model, dtype)
        model.eval()
        mx.eval(model.parameters())
        return model

    @property
    def dtype(self):
        return self.decoder.conv_in.weight.dtype

    def encode(self, images: mx.array) -> mx.array:
        """[B, 3, H, W] in [-1, 1] -> unscaled latents [B, C, H/f, W/f]."""
        z = self.encoder(images.transpose(0, 2, 3, 1).astype(self.dtype))
        return z.transpose(0, 3, 1, 2)

    def decode(self, latents: mx.array) -> mx.array:
        """Unscaled latents [B, C, h, w] -> images [B, 3, h*f, w*f] (about [-1, 1])."""
        x = self.decoder(latents.transpose(0, 2, 3, 1).astype(self.dtype))
        return x.transpose(0, 3, 1, 2)

