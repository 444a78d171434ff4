"""SANA DiT (diffusers ``SanaTransformer2DModel``) in the Neural Engine's layout.

Bundle I/O (batch 2 = [unconditional, conditional] for classifier-free guidance):
  latent                 (2, C, H, W)     the sampler's latent
  timestep_features      (2, 256, 1, 1)   diffusers' sinusoid of the timestep (0..1000), computed on
                                          the host in fp32 (``contract.timestep_features``): the
                                          graph stays pure fp16
  encoder_hidden_states  (2, Cc, 1, S)    MCP output, channels-first (ANE layout), padded to S
  encoder_attention_mask (2, S)           1 = real token, 0 = padding (exactly diffusers'
                                          ``encoder_attention_mask``: bias (1 - m) * -1e4)
  -> velocity            (2, C, H, W)
S is one of ``contract.sequence_lengths`` (enumerated shapes; the app pads to the next size);
the I/O is ``contract.dit_io``.  The feed-forward's GLUMBConv is shared with the DC-AE
decoder (``coreml_convert.ane``).
Inside: tokens as (B, D, 1, N), 1x1 convs for every Linear, channel-axis norms, SANA's ReLU
linear self-attention and the softmax cross-attention per head (heads on their own axis,
(B, H, d, N): 36 + 16 heads x 28 blocks as separate einsums would be ~10k ops), the linear
attention with fp16-safe scaling.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from weights.core.configs import DiTConfig
from weights.mapping.torch_map import load_torch

from coreml_convert import ane
from weights.bundles.contract import CFG_BATCH, dit_io, sequence_lengths, timestep_features
from coreml_convert.spec import ComponentSpec, reference_first

TIME_CHANNELS = DiTConfig.TIMESTEP_CHANNELS


class TimestepEmbedder(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.linear_1 = ane.Linear(TIME_CHANNELS, dim)
        self.linear_2 = ane.Linear(dim, dim)

    def forward(self, x):
        return self.linear_2(F.silu(self.linear_1(x)))


class _Emb(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.timestep_embedder = TimestepEmbedder(dim)


class AdaLayerNormSingle(nn.Module):
    """timestep features (B, 256, 1, 1) -> (6D modulation, D embedded timestep), each (B, *, 1, 1).
    (diffusers' ``time_proj`` sinusoid runs on the host: ``contract.timestep_features``.)"""

    def __init__(self, dim: int):
        super().__init__()
        self.emb = _Emb(dim)
        self.linear = ane.Linear(dim, 6 * dim)

    def forward(self, features):
        emb = self.emb.timestep_embedder(features)
        return self.linear(F.silu(emb)), emb


class CaptionProjection(nn.Module):
    def __init__(self, in_features: int, hidden: int):
        super().__init__()
        self.linear_1 = ane.Linear(in_features, hidden)
        self.linear_2 = ane.Linear(hidden, hidden)

    def forward(self, x):
        return self.linear_2(ane.gelu_tanh(self.linear_1(x)))


class PatchEmbed(nn.Module):
    def __init__(self, in_channels: int, dim: int, patch: int):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=patch, stride=patch)

    def forward(self, x):
        return ane.to_sequence(self.proj(x))


class LinearSelfAttention(nn.Module):
    """SANA's ReLU linear attention (diffusers SanaLinearAttnProcessor2_0), per head."""

    def __init__(self, dim: int, heads: int, head_dim: int, bias: bool):
        super().__init__()
        inner = heads * head_dim
        self.head_dim = head_dim
        self.to_q = ane.Linear(dim, inner, bias=bias)
        self.to_k = ane.Linear(dim, inner, bias=bias)
        self.to_v = ane.Linear(dim, inner, bias=bias)
        self.to_out = nn.ModuleList([ane.Linear(inner, dim)])

    def forward(self, x):
        q, k, v = (ane.to_heads(t, self.head_dim) for t in (self.to_q(x), self.to_k(x), self.to_v(x)))
        return self.to_out[0](ane.from_heads(ane.linear_attention(F.relu(q), F.relu(k), v)))


class CrossAttention(nn.Module):
    def __init__(self, dim: int, context_dim: int, heads: int, head_dim: int):
        super().__init__()
        inner = heads * head_dim
        self.head_dim = head_dim
        self.to_q = ane.Linear(dim, inner)
        self.to_k = ane.Linear(context_dim, inner)
        self.to_v = ane.Linear(context_dim, inner)
        self.to_out = nn.ModuleList([ane.Linear(inner, dim)])

    def forward(self, x, context, bias):
        out = ane.attention(self.to_q(x), self.to_k(context), self.to_v(context), self.head_dim, bias,
                            split=False)
        return self.to_out[0](out)


class TransformerBlock(nn.Module):
    def __init__(self, cfg: DiTConfig):
        super().__init__()
        dim = cfg.inner_dim
        self.dim = dim
        self.norm1 = ane.LayerNorm(dim, eps=cfg.norm_eps, elementwise_affine=False)
        self.attn1 = LinearSelfAttention(dim, cfg.num_attention_heads, cfg.attention_head_dim,
                                         cfg.attention_bias)
        self.norm2 = ane.LayerNorm(dim, eps=cfg.norm_eps, elementwise_affine=cfg.norm_elementwise_affine)
        self.attn2 = CrossAttention(dim, cfg.cross_attention_dim, cfg.num_cross_attention_heads,
                                    cfg.cross_attention_head_dim)
        self.ff = ane.GLUMBConv(dim, dim, cfg.mlp_ratio)
        self.scale_shift_table = nn.Parameter(torch.zeros(6, dim))

    def forward(self, x, context, bias, t6, height: int, width: int):
        mod = self.scale_shift_table.reshape(1, 6 * self.dim, 1, 1) + t6
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mod.split(self.dim, dim=1)
        h = self.norm1(x) * (1 + scale_msa) + shift_msa
        x = x + gate_msa * self.attn1(h)
        x = x + self.attn2(x, context, bias)
        h = self.norm2(x) * (1 + scale_mlp) + shift_mlp
        h = ane.to_sequence(self.ff(ane.to_spatial(h, height, width)))
        return x + gate_mlp * h


class SanaDiT(nn.Module):
    """Parameter names = diffusers ``SanaTransformer2DModel`` state-dict keys."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        cfg.check_supported()  # ConfigError (one line + fix) for variants Mobile-O's SANA does not use
        dim = cfg.inner_dim
        self.cfg = cfg
        self.patch_embed = PatchEmbed(cfg.in_channels, dim, cfg.patch_size)
        self.time_embed = AdaLayerNormSingle(dim)
        self.caption_projection = CaptionProjection(cfg.caption_channels, dim)
        self.caption_norm = ane.RMSNorm(dim, eps=DiTConfig.CAPTION_NORM_EPS)
        self.transformer_blocks = nn.ModuleList(TransformerBlock(cfg) for _ in range(cfg.num_layers))
        self.scale_shift_table = nn.Parameter(torch.zeros(2, dim))
        self.norm_out = ane.LayerNorm(dim, eps=DiTConfig.NORM_OUT_EPS, elementwise_affine=False)
        self.proj_out = ane.Linear(dim, cfg.patch_size ** 2 * cfg.out_channels)

    def forward(self, latent, timestep_features, encoder_hidden_states, encoder_attention_mask):
        b, _, height, width = (int(d) for d in latent.shape)  # static: traced as constants
        p = self.cfg.patch_size
        h, w = height // p, width // p
        x = self.patch_embed(latent)
        t6, emb = self.time_embed(timestep_features)
        context = self.caption_norm(self.caption_projection(encoder_hidden_states))
        bias = ane.attention_mask_bias(encoder_attention_mask)
        for block in self.transformer_blocks:
            x = block(x, context, bias, t6, h, w)
        shift, scale = (self.scale_shift_table.reshape(1, -1, 1, 1) + emb.repeat(1, 2, 1, 1)).chunk(2, dim=1)
        x = self.proj_out(self.norm_out(x) * (1 + scale) + shift)  # (B, p*p*C, 1, h*w)
        if p == 1:
            return ane.to_spatial(x, h, w)
        # unpatchify like diffusers: channels ordered (p, p, C)
        x = x.reshape(b, p, p, -1, h, w).permute(0, 3, 4, 1, 5, 2)
        return x.reshape(b, -1, h * p, w * p)


# ------------------------------------------------------------------ spec


def reference_forward(model, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """diffusers on the bundle's inputs (conditioning moved to (B, S, Cc)); it takes the raw
    ``timestep`` (carried beside the features in the example inputs) and computes its own sinusoid."""
    with torch.no_grad():
        out = model(
            hidden_states=torch.from_numpy(inputs["latent"]).float(),
            encoder_hidden_states=torch.from_numpy(inputs["encoder_hidden_states"][:, :, 0, :]).float().transpose(1, 2),
            timestep=torch.from_numpy(inputs["timestep"]).float(),
            encoder_attention_mask=torch.from_numpy(inputs["encoder_attention_mask"]).float(),
            return_dict=False,
        )[0]
    return {"velocity": out.numpy()}


def example_inputs(cfg: DiTConfig, length: int, seed: int = 0, timestep: float = 817.0,
                   valid: int | None = None) -> dict[str, np.ndarray]:
    """Random inputs shaped like the sampler's: unit latents, LayerNorm-scale conditioning,
    the first ``valid`` tokens real (default: about 3/4 of the length) and the rest padding."""
    rng = np.random.default_rng(seed)
    valid = max(1, (3 * length) // 4) if valid is None else valid
    mask = np.zeros((CFG_BATCH, length), np.float32)
    mask[:, :valid] = 1
    cond = rng.standard_normal((CFG_BATCH, cfg.caption_channels, 1, length)).astype(np.float32)
    cond[0] *= 0.5  # the unconditional half differs from the conditional one
    t = np.full((CFG_BATCH,), timestep, np.float32)
    return {
        "latent": rng.standard_normal((CFG_BATCH, cfg.in_channels, cfg.sample_size, cfg.sample_size)).astype(np.float32),
        "timestep_features": timestep_features(t),  # what the app computes (gate 2 rounds it to fp16)
        "timestep": t,  # for the diffusers reference only (not a bundle input)
        "encoder_hidden_states": cond,
        "encoder_attention_mask": mask,
    }


def build_spec(ckpt, seed: int = 0, lengths: tuple[int, ...] | None = None, layers: int | None = None) -> ComponentSpec:
    """``layers``: keep only the first N transformer blocks (tests of a layer-reduced full width)."""
    from weights.references import upstream

    cfg = ckpt.config.dit
    if layers is not None:
        cfg = cfg.replace(num_layers=layers)
    with torch.device("meta"):
        SanaDiT(cfg)  # checks the config before any tensor is read (nothing allocated)
    keys = [k for k in ckpt.keys("dit")
            if layers is None or not k.startswith("transformer_blocks.") or int(k.split(".")[1]) < layers]
    lengths = lengths or sequence_lengths(ckpt.config)
    example = example_inputs(cfg, lengths[0], seed)
    # the reference runs first and is freed: it and our module are never in memory together
    reference = reference_first(lambda: upstream.build("dit", replace(ckpt.config, dit=cfg), ckpt.load("dit", keys)),
                                reference_forward, example)
    module = SanaDiT(cfg).eval()
    load_torch(module, ckpt, "dit", keys=keys)  # one tensor at a time
    return ComponentSpec(
        module=module,
        example_inputs=example,
        reference=reference,
        io=dit_io(ckpt.config, lengths),
    )
