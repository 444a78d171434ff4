"""LLaVA ``mlp2x_gelu`` projector in MLX: Linear, GELU (erf), Linear.

Parameter paths are the checkpoint's (``0.weight``, ``0.bias``, ``2.weight``, ``2.bias``;
index 1 is the GELU), so loading keeps keys.

    proj = Projector.from_checkpoint(ckpt)
    embeds = proj(image_tokens)          # [B, N, mm_hidden_size] -> [B, N, hidden_size]
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from weights.core.errors import ConfigError

SUPPORTED = ("mlp2x_gelu",)


class Projector(nn.Module):
    def __init__(self, in_dim: int, hidden: int):
        super().__init__()
        setattr(self, "0", nn.Linear(in_dim, hidden))
        setattr(self, "2", nn.Linear(hidden, hidden))

    def update(self, parameters, strict: bool = True):
        # tree_unflatten turns the keys "0.*", "2.*" into a list [{...}, {}, {...}]
        if isinstance(parameters, list):
            parameters = {str(i): p for i, p in enumerate(parameters) if p}
        return super().update(parameters, strict)

    @classmethod
    def from_checkpoint(cls, ckpt, tensors: dict | None = None) -> "Projector":
        from mlx_model.support.mlx_folder import load_part

        cfg = ckpt.config
        if cfg.projector_type not in SUPPORTED:
            raise ConfigError(f"mm_projector_type={cfg.projector_type!r} is not supported.",
                              fix=f"use a checkpoint with mm_projector_type one of {', '.join(SUPPORTED)}.")
        return load_part(cls(cfg.mm_hidden_size, cfg.llm.hidden_size), ckpt, "projector", tensors=tensors)

    def __call__(self, x: mx.array) -> mx.array:
        return self["2"](nn.gelu(self["0"](x)))
