"""Qwen2 through mlx-lm's own model (``mlx_lm.models.qwen2``), weights from :mod:`weights`.

Mobile-O conditions the DiT on the last ``vlm_num_layers`` hidden states of the LLM, in
transformers' ``output_hidden_states`` convention: entry 0 is the input embeddings, entry i
the output of layer i-1, and the LAST entry is the final-RMSNorm output of the last layer.
"""

from __future__ import annotations

import importlib.util
import sys
import types

import mlx.core as mx
import mlx.nn as nn


def _light_mlx_lm() -> None:
    """Let ``mlx_lm.models.*`` import without running ``mlx_lm/__init__.py``.

    That ``__init__`` imports mlx-lm's converter and loader, which import transformers (and
    with it torch, when installed): seconds of start-up and a torch import the MLX path must
    not have.  The model files themselves need only MLX.  The package is registered unexecuted
    and runs its real ``__init__`` the first time anyone reads an attribute from it
    (``mlx_lm.load`` etc. keep working).
    """
    if "mlx_lm" in sys.modules:
        return
    spec = importlib.util.find_spec("mlx_lm")
    if spec is None or spec.loader is None:
        return
    pkg = importlib.util.module_from_spec(spec)

    class _Deferred(types.ModuleType):
        def __getattr__(self, name):
            if name.startswith("__") and name not in ("__all__", "__version__"):
                raise AttributeError(name)  # import-machinery probes must not run __init__
            self.__class__ = types.ModuleType
            spec.loader.exec_module(self)
            return getattr(self, name)

    pkg.__class__ = _Deferred
    sys.modules["mlx_lm"] = pkg


_light_mlx_lm()

from mlx_lm.models.base import create_attention_mask  # noqa: E402
from mlx_lm.models.qwen2 import Model, ModelArgs  # noqa: E402


from mlx_model.support.quant import QUANT_GROUP_SIZE
from mlx_model.support.tokenizer import Tokenizer


class LanguageModel:
    def __init__(self, model: Model, tokenizer: Tokenizer | None, config):
        self.model = model
        self.tokenizer = tokenizer
        self.config = config
        self.eval_layers = getattr(model, "eval_blocks", False)  # set by load_part (quant.has_jit_layers)

    @classmethod
    def from_checkpoint(cls, ckpt, quantize: int = 0, group_size: int = QUANT_GROUP_SIZE,
                        dtype=mx.float32, dequantize: bool | None = None, tokenizer: Tokenizer | None = None,
                        embed_as_stored: bool = False) -> "LanguageModel":
        """``dequantize``: see :func:`mlx_model.support.quant.quantize_linears` (default: on CPU only);
        ``tokenizer``: one already read from ``ckpt`` (default: read it now);
        ``embed_as_stored``: keep the token-embedding table in bf16 when the source stores it so
        (an MLX folder's dtype; from a checkpoint, when bf16 holds it losslessly): half the fp32
        table's ~0.54 GB at full size; looked-up rows are cast to ``dtype`` (the same values).  For callers that only
        look rows up (generation); a tied LM head would then multiply by the bf16 table.
        Quantized (``quantize`` 4/8), the embedding table is quantized too, as mlx-lm's: a
        tied head multiplies by it through ``QuantizedEmbedding.as_linear``."""
        from mlx_model.support.mlx_folder import load_part

        cfg = ckpt.config.llm
        model = Model(ModelArgs.from_dict(cfg.to_hf_dict()))
        keep = ("model.embed_tokens.weight",) if embed_as_stored else ()  # an MLX folder's dtype
        load_part(model, ckpt, "llm", dtype=dtype, keys=model.sanitize, quantize=quantize,
                  group_size=group_size, dequantize=dequantize, keep_stored=keep, embeddings=True)
        emb = model.model.embed_tokens
        if embed_as_stored and emb.weight.dtype == mx.float32:  # bf16 when that is lossless (a bf16 source)
            low = emb.weight.astype(mx.bfloat16)
            if mx.array_equal(low.astype(mx.float32), emb.weight).item():
                emb.weight = low
                mx.eval(emb.weight)
        return cls(model, tokenizer if tokenizer is not None else Tokenizer.from_checkpoint(ckpt), cfg)

    @property
    def dtype(self):
        return self.model.model.norm.weight.dtype

    def embed(self, ids: mx.array) -> mx.array:
        """[B, L] token ids -> [B, L, D] input embeddings (in the model's dtype)."""
        out = self.model.model.embed_tokens(ids)
        return out if out.dtype == self.dtype else out.astype(self.dtype)

    def hidden_states(self, embeds: mx.array, num: int, mask=None) -> list[mx.array]:
        """The last ``num`` entries of transformers' ``output_hidden_states`` for ``embeds``."""
        inner = self.model.model
        n_layers = len(inner.layers)
        if not 1 <= num <= n_layers + 1:
            raise ValueError(f"num must be in 1..{n_layers + 1}, got {num}")
        if mask is None:
            mask = create_attention_mask(embeds, None)
        states = [embeds]
        h = embeds
        for layer in inner.layers:
            h = layer(h, mask, None)
            if self.eval_layers:  # JIT layers: one layer's dequantized weights alive at a time
                mx.eval(h)
            states.append(h)
        states[-1] = inner.norm(h)
        return states[-num:]

    def prefill(self, embeds: mx.array, cache) -> mx.array:
        """Logits [B, 1, V] of the last position after feeding ``embeds`` [B, L, D] into
        ``cache``, as mlx-lm's ``generate_step`` prefills: all but the last position run for
        their keys and values only (the cache states are evaluated, their logits never are),
        so the LM head multiplies one row -- no [L, V] logits and, on CPU, no dequantized head."""
        if embeds.shape[1] > 1 and self.eval_layers:  # JIT layers: layer by layer (quant.has_jit_layers)
            h, mask = embeds[:, :-1], create_attention_mask(embeds[:, :-1], cache[0])
            for layer, c in zip(self.model.model.layers, cache):
                h = layer(h, mask, c)
                mx.eval(h, c.state)
        elif embeds.shape[1] > 1:
            self.model(None, cache=cache, input_embeddings=embeds[:, :-1])
            mx.eval([c.state for c in cache])
        return self(embeds[:, -1:], cache=cache)

    def __call__(self, embeds: mx.array, cache=None) -> mx.array:
        """Logits [B, L, V]; ``cache`` from ``mlx_lm.models.cache.make_prompt_cache(self.model)``."""
        return self.model(None, cache=cache, input_embeddings=embeds)
