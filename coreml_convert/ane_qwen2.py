"""The Qwen2 decoder in Neural-Engine layout: the three functions of the ``llm`` bundle.

Activations are (B, C, 1, S); every Linear is a 1x1 ``Conv2d`` (weights reshaped by
``weights.mapping.torch_map``); RMSNorm runs over the channel axis; attention uses additive -1e4
masks.  Parameter names are the checkpoint's llm keys (``model.layers.0.self_attn.q_proj.weight``,
``lm_head.weight``), so the checkpoint loads strictly with no second key table.

The graph is pure fp16 arithmetic (docs/deployment-notes.md section 2, "what falls off the
Neural Engine"): the token embeddings, RoPE cos/sin and the causal mask are inputs computed
on the host (``weights.bundles.contract``: ``embed_prompt``, ``rope``, ``causal_bias``) -- no
gather, cumsum, integer compare or cast.  GQA groups the query heads of each KV head (heads
as a batch axis, rank <= 4) instead of materialising repeated keys/values.  Keys and values
are (1, kv_heads, S, D): the cache's layout, head dim last.  A cache write is an in-place
``slice_update`` of this call's S slots at the ``position`` input (the caller's ``cache``
callable, ``components/llm.py``), as Anemll's ``qwen_model.py`` writes
``kv_cache[..., pos:pos+1, :]``: one slot per decoded token, never the whole state.  The
logits come out in slices of at most ``contract.MAX_DIMENSION``.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from coreml_convert import ane
from weights.bundles.contract import logits_widths
from weights.core.configs import LLMConfig


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, heads: int, head_dim: int) -> torch.Tensor:
    """Rotary embedding of (1, heads*D, 1, S) per head; cos/sin (1, D, 1, S).  Reshapes use
    constant sizes (-1 for S) so a flexible S converts without shape arithmetic."""
    h = x.reshape(1, heads, head_dim, -1)
    half = head_dim // 2
    rot = torch.cat((-h[:, :, half:], h[:, :, :half]), dim=2)
    c, s = cos.reshape(1, 1, head_dim, -1), sin.reshape(1, 1, head_dim, -1)
    return (h * c + rot * s).reshape(1, heads * head_dim, 1, -1)


def grouped_attention(q, k, v, bias, heads: int, kv_heads: int, head_dim: int) -> torch.Tensor:
    """GQA without repeating K/V.  q (1, H*D, 1, S); k, v (1, G, T, D) (the cache layout);
    bias (1, T, 1, S).  The R = H/G query heads of KV head g (transformers' repeat_kv order:
    q head g*R + r) are laid side by side, so each group is one (T x D) @ (D x R*S) product
    with G as the batch axis.  Returns (1, H*D, 1, S)."""
    g, r, d = kv_heads, heads // kv_heads, head_dim
    qh = (q * d ** -0.5).reshape(g, r, d, -1).permute(0, 2, 1, 3).reshape(g, d, -1)  # (G, D, R*S)
    kh = k.reshape(g, -1, d)  # (G, T, D)
    vh = v.reshape(g, -1, d)
    w = torch.matmul(kh, qh)  # (G, T, R*S)
    b = bias[:, :, 0, :]  # (1, T, S): a slice, no reshape (T and S may both be flexible)
    w = (w + torch.cat([b] * r, dim=-1)).softmax(dim=1)  # one bias per query head of the group
    o = torch.matmul(vh.transpose(1, 2), w)  # (G, D, R*S)
    return o.reshape(g, d, r, -1).permute(0, 2, 1, 3).reshape(1, heads * d, 1, -1)


def heads_last(x: torch.Tensor, heads: int, head_dim: int) -> torch.Tensor:
    """(1, heads*D, 1, S) -> (1, heads, S, D): the cache's layout."""
    return x.reshape(1, heads, head_dim, -1).permute(0, 1, 3, 2)


class Attention(nn.Module):
    def __init__(self, cfg: LLMConfig):
        super().__init__()
        c, d = cfg.hidden_size, cfg.head_dim
        self.heads, self.kv_heads, self.head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, d
        self.q_proj = ane.Linear(c, self.heads * d, bias=True)
        self.k_proj = ane.Linear(c, self.kv_heads * d, bias=True)
        self.v_proj = ane.Linear(c, self.kv_heads * d, bias=True)
        self.o_proj = ane.Linear(self.heads * d, c, bias=False)

    def forward(self, x, cos, sin, bias, cache=None):
        """x (1, C, 1, S); cos/sin (1, D, 1, S); bias (1, K, 1, S).

        Without a cache the keys are this call's (K = S).  With ``cache``, a callable
        (k, v) -> (keys, values) that writes this call's (1, kv_heads, S, D) keys/values into
        their S slots and returns the layer's whole cache (1, kv_heads, T, D), attention runs
        over all T slots (K = T).  Returns the output and the (k, v) attended to."""
        q = rope(self.q_proj(x), cos, sin, self.heads, self.head_dim)
        k = heads_last(rope(self.k_proj(x), cos, sin, self.kv_heads, self.head_dim), self.kv_heads, self.head_dim)
        v = heads_last(self.v_proj(x), self.kv_heads, self.head_dim)
        if cache is not None:
            k, v = cache(k, v)
        o = grouped_attention(q, k, v, bias, self.heads, self.kv_heads, self.head_dim)
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

    def forward(self, x, cos, sin, bias, cache=None):
        a, kv = self.self_attn(self.input_layernorm(x), cos, sin, bias, cache)
        x = x + a
        x = x + self.mlp(self.post_attention_layernorm(x))
        return x, kv


class Body(nn.Module):
    def __init__(self, cfg: LLMConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)  # the host's table; never traced
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
        from weights.mapping.torch_map import load_torch

        module = cls(ckpt.config.llm)
        load_torch(module, ckpt, "llm", tensors=tensors)
        return module.eval()

    def embedding_table(self):
        """The (V, C) token-embedding table the host reads rows from (numpy float32)."""
        return self.model.embed_tokens.weight.detach().float().numpy()

    def logits(self, h: torch.Tensor) -> list[torch.Tensor]:
        """(1, C, 1, 1) final-norm hidden state -> logits as slices (1, w), w <= MAX_DIMENSION."""
        w = (self.model.embed_tokens.weight[:, :, None, None] if self.config.tie_word_embeddings
             else self.lm_head.weight)
        out, start = [], 0
        for width in logits_widths(int(w.shape[0])):
            out.append(F.conv2d(h, w[start:start + width]).reshape(1, width))
            start += width
        return out

    def run(self, x, cos, sin, bias, caches=None):
        """All hidden states as transformers' ``output_hidden_states`` (embeddings, each layer's
        output, the last one after the final norm) and the per-layer (k, v).  ``caches``: one
        writer per layer (see :meth:`Attention.forward`)."""
        states, kvs = [x], []
        for i, layer in enumerate(self.model.layers):
            x, kv = layer(x, cos, sin, bias, None if caches is None else caches[i])
            states.append(x)
            kvs.append(kv)
        states[-1] = self.model.norm(x)
        return states, kvs
