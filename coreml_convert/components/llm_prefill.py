"""llm_prefill: a whole prompt through Qwen2 -> the hidden states the MCP fuses
(image generation and editing).

Inputs (one right-padded prompt of L tokens, L one of ``contract.sequence_lengths``;
the I/O is ``contract.llm_prefill_io``):
  input_ids      (1, L) int32    token ids; the N image columns may hold any id (replaced)
  attention_mask (1, L) float16  1 = real token, 0 = padding (combined with causal, -1e4)
  image_embeds   (1, hidden, 1, N) float16   vision_encoder output; zeros when no image
  image_offset   (1,) int32      column of the first image token: image token i replaces
                                 column image_offset + i.  No image: pass -N (any offset
                                 <= -N or >= L places nothing).
Output:
  hidden_states  (K, hidden, 1, L) float16   transformers' output_hidden_states[-K:] with
                                 K = vlm_num_layers (the last one after the final norm);
                                 columns of padding tokens are not meaningful.

This mirrors Mobile-O's prompt handling (the ``<image>`` placeholder expands to the N
projected image features).  Reference (gate 1): transformers ``Qwen2ForCausalLM`` on the
same embeddings and attention mask with ``output_hidden_states=True``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from coreml_convert.ane_qwen2 import Qwen2ANE, RopeTable, causal_bias, place_image
from coreml_convert.contract import llm_prefill_io, sequence_lengths
from coreml_convert.spec import ComponentSpec


class Prefill(nn.Module):
    def __init__(self, core: Qwen2ANE, num_states: int, max_length: int):
        super().__init__()
        self.core = core
        self.num_states = num_states
        self.rope = RopeTable(core.config, max_length)

    def forward(self, input_ids, attention_mask, image_embeds, image_offset):
        x = self.core.embed_with_image(input_ids, image_embeds, image_offset)
        positions = torch.cumsum(torch.ones_like(input_ids[0]), 0) - 1  # 0..L-1 for any L
        cos, sin = self.rope(positions)
        bias = causal_bias(positions, positions, attention_mask[0].to(x.dtype))
        states, _ = self.core.run(x, cos, sin, bias)
        return torch.cat(states[-self.num_states:], dim=0)


# ---------------------------------------------------------------------- reference


def reference(ckpt, num_states: int):
    from weights import upstream

    model = upstream.build("llm", ckpt.config, ckpt.load("llm"))

    def run(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with torch.no_grad():
            ids = torch.from_numpy(inputs["input_ids"].astype(np.int64))
            tok = model.get_input_embeddings()(ids)[0].numpy()
            image = inputs["image_embeds"][0, :, 0, :].T.astype(np.float32)
            embeds = place_image(tok, image, int(inputs["image_offset"][0]))
            out = model(inputs_embeds=torch.from_numpy(embeds)[None],
                        attention_mask=torch.from_numpy(inputs["attention_mask"].astype(np.int64)),
                        output_hidden_states=True)
        states = [h[0].T[:, None, :].numpy() for h in out.hidden_states[-num_states:]]
        return {"hidden_states": np.stack(states)}

    return run


# ---------------------------------------------------------------------- spec


def example_inputs(cfg, length: int, rng: np.random.Generator, image: bool = True) -> dict[str, np.ndarray]:
    """A right-padded prompt (4 padding tokens) with an image at column 3 (clipped to L)."""
    hidden, n = cfg.llm.hidden_size, cfg.vision.num_tokens
    real = length - 4
    ids = rng.integers(0, cfg.llm.vocab_size, (1, length)).astype(np.int32)
    mask = (np.arange(length) < real).astype(np.float32)[None]
    embeds = (rng.standard_normal((1, hidden, 1, n)) / np.sqrt(hidden)).astype(np.float32)
    offset = np.array([3 if image else -n], np.int32)
    return {"input_ids": ids, "attention_mask": mask, "image_embeds": embeds, "image_offset": offset}


def build_spec(ckpt, seed: int = 0) -> ComponentSpec:
    cfg = ckpt.config
    lengths = sequence_lengths(cfg)
    k = cfg.mcp.num_layers
    module = Prefill(Qwen2ANE.from_checkpoint(ckpt), k, lengths[-1]).eval()
    return ComponentSpec(
        module=module,
        example_inputs=example_inputs(cfg, lengths[0], np.random.default_rng(seed)),
        reference=reference(ckpt, k),
        io=llm_prefill_io(cfg),
    )
