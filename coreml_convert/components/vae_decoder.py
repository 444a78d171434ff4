"""DC-AE decoder (diffusers ``AutoencoderDC.decode``) for the Neural Engine.

Bundle I/O:
  latent (1, C, h, w)   the sampler's (scaled) latent — divided by ``scaling_factor`` inside,
                        so the app never hard-codes 0.41407
  -> image (1, 3, H, W) in [0, 1]: (decode(latent / scaling_factor) / 2 + 0.5).clamp(0, 1),
                        as the pipeline maps it before * 255
The decoder is convolutional already (B, C, H, W); its Linear layers become 1x1 convs, its
RMSNorms run over the channel axis, and the multi-scale ReLU linear attention runs per head
(heads on their own axis) with fp16-safe scaling (up to 4096 positions per head at 512 px).
Built for the DC-AE variants ``VAEConfig.check_supported`` accepts (SANA's f32c32 and its
reduced relatives: nearest-interpolate upsampling, both shortcuts, RMSNorm); others raise a
ConfigError.  The I/O is ``contract.vae_decoder_io``; the GLUMBConv of the EfficientViT blocks
is shared with the DiT (``coreml_convert.ane``).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from weights.mapping import layout
from weights.core.configs import RES_BLOCK, VAEConfig, per_block
from weights.mapping.torch_map import load_torch

from coreml_convert import ane
from weights.bundles.contract import vae_decoder_io
from coreml_convert.spec import ComponentSpec, reference_first

ACTIVATIONS = {"silu": F.silu, "relu": F.relu, "relu6": F.relu6, "gelu": F.gelu}
assert tuple(ACTIVATIONS) == VAEConfig.ACTIVATIONS  # what check_supported lets through


class ResBlock(nn.Module):
    def __init__(self, channels: int, act: str):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.norm = ane.RMSNorm(channels, eps=VAEConfig.NORM_EPS, bias=True)
        self.act = act

    def forward(self, x):
        h = self.conv2(ACTIVATIONS[self.act](self.conv1(x)))
        return self.norm(h) + x


class MultiscaleProjection(nn.Module):
    def __init__(self, channels: int, heads: int, kernel_size: int):
        super().__init__()
        self.proj_in = nn.Conv2d(channels, channels, kernel_size, padding=kernel_size // 2,
                                 groups=channels, bias=False)
        self.proj_out = nn.Conv2d(channels, channels, 1, groups=3 * heads, bias=False)

    def forward(self, x):
        return self.proj_out(self.proj_in(x))


class MultiscaleLinearAttention(nn.Module):
    """diffusers SanaMultiscaleLinearAttention (+ SanaMultiscaleAttnProcessor2_0), per head.

    Like upstream, the concatenated [q, k, v, multiscale(q, k, v)...] channels are cut into
    consecutive groups of 3*head_dim, and each group is split into its own (q, k, v).
    """

    def __init__(self, channels: int, head_dim: int, kernel_sizes: tuple[int, ...]):
        super().__init__()
        heads = channels // head_dim
        inner = heads * head_dim
        self.head_dim = head_dim
        self.to_q = ane.Linear(channels, inner, bias=False)
        self.to_k = ane.Linear(channels, inner, bias=False)
        self.to_v = ane.Linear(channels, inner, bias=False)
        self.to_qkv_multiscale = nn.ModuleList(MultiscaleProjection(3 * inner, heads, k) for k in kernel_sizes)
        self.to_out = ane.Linear(inner * (1 + len(kernel_sizes)), channels, bias=False)
        self.norm_out = ane.RMSNorm(channels, eps=VAEConfig.NORM_EPS, bias=True)

    def forward(self, x):
        _, _, height, width = (int(d) for d in x.shape)
        qkv = torch.cat([self.to_q(x), self.to_k(x), self.to_v(x)], dim=1)
        qkv = torch.cat([qkv] + [m(qkv) for m in self.to_qkv_multiscale], dim=1)
        attend = ane.linear_attention if height * width > self.head_dim else ane.quadratic_relu_attention
        groups = ane.to_heads(ane.to_sequence(qkv), 3 * self.head_dim)  # (B, G, 3d, N)
        q, k, v = groups.split(self.head_dim, dim=2)
        out = ane.from_heads(attend(F.relu(q), F.relu(k), v))  # (B, G*d, 1, N)
        h = self.to_out(ane.to_spatial(out, height, width))
        return self.norm_out(h) + x


class EfficientViTBlock(nn.Module):
    def __init__(self, channels: int, head_dim: int, kernel_sizes: tuple[int, ...]):
        super().__init__()
        self.attn = MultiscaleLinearAttention(channels, head_dim, kernel_sizes)
        self.conv_out = ane.GLUMBConv(channels, channels, VAEConfig.GLU_EXPAND_RATIO, rms_norm=True, residual=True)

    def forward(self, x):
        return self.conv_out(self.attn(x))


def _repeat_channels(x: torch.Tensor, repeats: int) -> torch.Tensor:
    """torch.repeat_interleave(x, repeats, dim=1) with static shapes, every tensor rank 4 (the
    lint's rank rule) and no axis longer than the image's (batch and channels share axis 0
    while the copies take axis 1: flattening the pixels instead made a 65,536-long axis at
    512x512, over the Neural Engine's 16,384)."""
    b, c, h, w = (int(d) for d in x.shape)
    return x.reshape(b * c, 1, h, w).expand(b * c, repeats, h, w).reshape(b, c * repeats, h, w)


class UpBlock(nn.Module):
    """diffusers DCUpBlock2d with nearest-interpolate upsampling and the shortcut."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.repeats = out_channels * 4 // in_channels
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)

    def forward(self, x):
        h = self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))
        return h + F.pixel_shuffle(_repeat_channels(x, self.repeats), 2)


class Decoder(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        cfg.check_supported()  # ConfigError (one line + fix) for DC-AE variants not built here
        ch, layers = cfg.decoder_block_out_channels, cfg.decoder_layers_per_block
        n = len(ch)
        types = per_block(cfg.decoder_block_types, n)
        acts = per_block(cfg.decoder_act_fns, n)
        self.conv_in = nn.Conv2d(cfg.latent_channels, ch[-1], 3, padding=1)
        self.in_shortcut_repeats = ch[-1] // cfg.latent_channels
        blocks = []
        for i in range(n):
            seq = []
            if i < n - 1 and layers[i] > 0:
                seq.append(UpBlock(ch[i + 1], ch[i]))
            for _ in range(layers[i]):
                if types[i] == RES_BLOCK:
                    seq.append(ResBlock(ch[i], acts[i]))
                else:  # VIT_BLOCK (check_supported)
                    seq.append(EfficientViTBlock(ch[i], cfg.attention_head_dim, tuple(cfg.decoder_qkv_multiscales[i])))
            blocks.append(nn.Sequential(*seq))
        self.up_blocks = nn.ModuleList(blocks)
        self.norm_out = ane.RMSNorm(ch[0], eps=VAEConfig.NORM_EPS, bias=True)
        self.conv_act = cfg.decoder_conv_act_fn
        self.conv_out = nn.Conv2d(ch[0], cfg.in_channels, 3, padding=1)

    def forward(self, z):
        x = self.conv_in(z) + _repeat_channels(z, self.in_shortcut_repeats)
        for block in reversed(self.up_blocks):
            x = block(x)
        return self.conv_out(ACTIVATIONS[self.conv_act](self.norm_out(x)))


class VAEDecoder(nn.Module):
    """Scaled latent -> image in [0, 1].  Parameter names = AutoencoderDC's ``decoder.*``."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        self.decoder = Decoder(cfg)
        self.inv_scale = 1.0 / cfg.scaling_factor

    def forward(self, latent):
        x = self.decoder(latent * self.inv_scale)
        return (x * 0.5 + 0.5).clamp(0.0, 1.0)


# ------------------------------------------------------------------ spec


def reference_forward(model, scaling_factor: float, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """diffusers AutoencoderDC.decode(latent / scaling_factor), mapped to [0, 1] like the pipeline."""
    with torch.no_grad():
        x = model.decode(torch.from_numpy(inputs["latent"]).float() / scaling_factor, return_dict=False)[0]
    return {"image": (x / 2 + 0.5).clamp(0, 1).numpy()}


def build_spec(ckpt, seed: int = 0, latent_size: int | None = None) -> ComponentSpec:
    """``latent_size``: the latent's H = W (default: the DiT's sample_size, i.e. the real
    pipeline's; tests use smaller ones at full width)."""
    from weights.references import upstream

    config = ckpt.config
    cfg = config.vae
    io = vae_decoder_io(config, latent_size)
    with torch.device("meta"):
        VAEDecoder(cfg)  # checks the config before any tensor is read (nothing allocated)
    latent = np.random.default_rng(seed).standard_normal(io.inputs[0].shape).astype(np.float32)
    example = {"latent": latent}

    def build():
        ref = upstream.build("vae", config, ckpt.load("vae"))  # diffusers loads encoder and decoder
        ref.encoder = None  # only decode() is compared; drop the encoder's weights
        return ref

    # the reference runs first and is freed: it and our module are never in memory together
    reference = reference_first(build, lambda ref, x: reference_forward(ref, cfg.scaling_factor, x), example)
    module = VAEDecoder(cfg).eval()
    load_torch(module, ckpt, "vae", keys=ckpt.used_keys("vae", prefix=layout.VAE_DECODER))  # one tensor at a time
    return ComponentSpec(
        module=module,
        example_inputs=example,
        reference=reference,
        io=io,
    )
