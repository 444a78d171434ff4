"""The Qwen2 decoder in Neural-Engine layout, shared by ``llm_prefill`` and ``llm_decode``.

Activations are (B, C, 1, S); every Linear is a 1x1 ``Conv2d`` (weights reshaped by
``weights.torch_map``); RMSNorm runs over the channel axis; attention is computed per head
with additive -1e4 masks.  Parameter names are the checkpoint's llm keys (the transformers
names: ``model.layers.0.self_attn.q_proj.weight``, ``lm_head.weight``), so the checkpoint
loads strictly with no second key table.

Positions come in explicitly: RoPE cos/sin are gathered from a table computed exactly as
transformers computes them (fp32), and the causal mask is built from positions, so the same
layers serve a whole prompt (llm_prefill) and a chunk or one token against a KV cache
(llm_decode).  ``place_image`` is the numpy form of ``Qwen2ANE.embed_with_image`` that both
components' references use.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from coreml_convert import ane
from weights.configs import LLMConfig

LM_HEAD_CHUNK = 16384  # output channels per lm_head convolution (Neural Engine tensor-size limit)


def rope_table(cfg: LLMConfig, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [length, head_dim] for positions 0..length-1, computed as transformers'
    ``Qwen2RotaryEmbedding`` does (fp32 inv_freq, fp32 angles, halves concatenated)."""
    d = cfg.head_dim
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, d, 2, dtype=torch.int64).float() / d))
    freqs = torch.arange(length, dtype=torch.int64).float()[:, None] * inv_freq[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


class RopeTable(nn.Module):
    """cos/sin for ``length`` positions as constant tables, gathered by position."""

    def __init__(self, cfg: LLMConfig, length: int):
        super().__init__()
        cos, sin = rope_table(cfg, length)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def forward(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(S,) int positions -> cos, sin (D, S)."""
        return self.cos[positions].transpose(0, 1), self.sin[positions].transpose(0, 1)


def causal_bias(query_pos: torch.Tensor, key_pos: torch.Tensor,
                key_valid: torch.Tensor | None = None) -> torch.Tensor:
    """Additive attention bias (1, K, 1, Q) for :func:`ane.attention`: 0 where the key's
    position <= the query's (and the key is a real token when ``key_valid`` [K] (1 = real)
    is given), else -1e4."""
    allowed = (key_pos[:, None] <= query_pos[None, :]).float()  # (K, Q)
    if key_valid is not None:
        allowed = allowed * key_valid[:, None]
    return ((1.0 - allowed) * ane.MASK_MIN)[None, :, None, :]


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, heads: int, head_dim: int) -> torch.Tensor:
    """Rotary embedding of (1, heads*D, 1, S) per head; cos/sin (D, S).  Reshapes use
    constant sizes (-1 for S) so a flexible S converts without shape arithmetic."""
    h = x.reshape(1, heads, head_dim, -1)
    half = head_dim // 2
    rot = torch.cat((-h[:, :, half:], h[:, :, :half]), dim=2)
    return (h * cos + rot * sin).reshape(1, heads * head_dim, 1, -1)


class Attention(nn.Module):
    def __init__(self, cfg: LLMConfig):
        super().__init__()
        c, d = cfg.hidden_size, cfg.head_dim
        self.heads, self.kv_heads, self.head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, d
        self.q_proj = ane.Linear(c, self.heads * d, bias=True)
        self.k_proj = ane.Linear(c, self.kv_heads * d, bias=True)
        self.v_proj = ane.Linear(c, self.kv_heads * d, bias=True)
        self.o_proj = ane.Linear(self.heads * d, c, bias=False)

    def _repeat(self, x: torch.Tensor) -> torch.Tensor:
        """GQA: (1, kv_heads*D, 1, T) -> (1, heads*D, 1, T), kv head g serving q heads
        g*rep .. (g+1)*rep-1 (transformers' repeat_kv)."""
        rep = self.heads // self.kv_heads
        if rep == 1:
            return x
        x = x.reshape(1, self.kv_heads, 1, self.head_dim, -1)
        return torch.cat([x] * rep, dim=2).reshape(1, self.heads * self.head_dim, 1, -1)

    def forward(self, x, cos, sin, bias, cache=None, scatter=None):
        """x (1, C, 1, S); cos/sin (D, S); bias (1, K, 1, S).

        Without a cache the keys are this chunk's (K = S).  With ``cache`` = (k, v), each
        (1, kv_heads*D, 1, T), and ``scatter`` (S, T) one-hot rows (chunk token -> cache
        slot), the chunk's keys/values are written into their slots and attention runs over
        all T slots (K = T).  Returns the output and the (new) (k, v)."""
        q = rope(self.q_proj(x), cos, sin, self.heads, self.head_dim)
        k = rope(self.k_proj(x), cos, sin, self.kv_heads, self.head_dim)
        v = self.v_proj(x)
        if cache is not None:
            keep = 1.0 - scatter.sum(dim=0)  # (T,): slots this chunk does not write
            k = cache[0] * keep + torch.matmul(k, scatter)
            v = cache[1] * keep + torch.matmul(v, scatter)
        o = ane.attention(q, self._repeat(k), self._repeat(v), self.head_dim, bias)
        return self.o_proj(o), (k, v)


class MLP(nn.Module):
    def __init__(self, cfg: LLMConfig):
        super().__init__()
        c, i = cfg.hidden_size, cfg.intermediate_size
        self.gate_proj = ane.Linear(c, i, bias=False)
        self.up_proj = ane.Linear(c, i, bias=False)
        self.down_proj = ane.Linear(i, c, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: LLMConfig):
        super().__init__()
        self.self_attn = Attention(cfg)
        self.mlp = MLP(cfg)
        self.input_layernorm = ane.RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = ane.RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, x, cos, sin, bias, cache=None, scatter=None):
        a, kv = self.self_attn(self.input_layernorm(x), cos, sin, bias, cache, scatter)
        x = x + a
        x = x + self.mlp(self.post_attention_layernorm(x))
        return x, kv


class Body(nn.Module):
    def __init__(self, cfg: LLMConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = ane.RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class Qwen2ANE(nn.Module):
    """Qwen2ForCausalLM weights, Neural-Engine layout.  Build with :meth:`from_checkpoint`."""

    def __init__(self, cfg: LLMConfig):
        super().__init__()
        cfg.check_supported()  # ConfigError: heads that do not split the width / share KV groups
        self.config = cfg
        self.model = Body(cfg)
        if not cfg.tie_word_embeddings:
            self.lm_head = ane.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)

    @classmethod
    def from_checkpoint(cls, ckpt, tensors: dict | None = None) -> "Qwen2ANE":
        from weights.torch_map import load_torch

        module = cls(ckpt.config.llm)
        load_torch(module, ckpt, "llm", tensors=tensors)
        return module.eval()

    # ------------------------------------------------------------------ pieces
    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(1, L) int ids -> (1, C, 1, L)."""
        return self.model.embed_tokens(input_ids).transpose(1, 2).unsqueeze(2)

    def embed_with_image(self, input_ids, image_embeds, image_offset) -> torch.Tensor:
        """Token embeddings with image features placed at chunk columns
        ``image_offset + i`` (i = 0..N-1); columns outside 0..L-1 are dropped, so an offset
        <= -N or >= L means "no image in this chunk".

        input_ids (1, L) int; image_embeds (1, C, 1, N); image_offset (1,) int."""
        x = self.embed(input_ids)
        cols = torch.cumsum(torch.ones_like(input_ids[0]), 0) - 1  # 0..L-1, shape-agnostic
        rows = torch.arange(image_embeds.shape[-1], dtype=cols.dtype)
        place = (cols[None, :] == (rows[:, None] + image_offset.to(cols.dtype))).to(x.dtype)  # (N, L)
        taken = place.sum(dim=0)  # (L,) 1 where an image feature goes
        img = torch.matmul(image_embeds[0, :, 0, :], place)  # (C, L)
        return x * (1.0 - taken) + img[None, :, None, :]

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """(1, C, 1, S) final-norm hidden states -> (1, V, 1, S), lm_head in chunks."""
        w = (self.model.embed_tokens.weight[:, :, None, None] if self.config.tie_word_embeddings
             else self.lm_head.weight)
        parts = [w[i:i + LM_HEAD_CHUNK] for i in range(0, w.shape[0], LM_HEAD_CHUNK)]
        return torch.cat([F.conv2d(h, part) for part in parts], dim=1)

    def run(self, x, cos, sin, bias, caches=None, scatter=None):
        """All hidden states as transformers' ``output_hidden_states`` (embeddings, each layer's
        output, the last one after the final norm) and the per-layer (k, v)."""
        states, kvs = [x], []
        for i, layer in enumerate(self.model.layers):
            x, kv = layer(x, cos, sin, bias, None if caches is None else caches[i], scatter)
            states.append(x)
            kvs.append(kv)
        states[-1] = self.model.norm(x)
        return states, kvs


def place_image(embeds: np.ndarray, image: np.ndarray, offset: int) -> np.ndarray:
    """(L, C) token embeddings with image rows (N, C) written at rows offset + i (clipped):
    what :meth:`Qwen2ANE.embed_with_image` computes, for the references."""
    out = embeds.copy()
    for i in range(image.shape[0]):
        if 0 <= offset + i < out.shape[0]:
            out[offset + i] = image[i]
    return out
