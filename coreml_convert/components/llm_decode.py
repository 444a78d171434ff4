"""llm_decode: Qwen2 with a stateful KV cache (iOS 18 ``ct.StateType``) for understanding.

One multifunction bundle, the two functions sharing every weight (``save_multifunction``)
and the same two states (each function's I/O, ``contract.llm_decode_io``, goes to the
manifest as the component's ``function_io``):

  key_cache, value_cache  (layers, kv_heads*head_dim, 1, T) float16   T = contract.context_length()

  "prefill"  input_ids (1, P) int32, image_embeds (1, hidden, 1, N) float16,
             image_offset (1,) int32, position (1,) int32
             -> hidden_states (1, hidden, 1, P) float16 (final norm; may be ignored)
             Writes the chunk's keys/values at cache slots position .. position+P-1.
             Image token i replaces chunk column image_offset + i (any offset <= -N or
             >= P places nothing), so a 256-token image may straddle chunks.
  "decode"   input_ids (1, 1) int32, position (1,) int32  ->  logits (1, vocab) float16
             Writes one token at slot ``position`` and returns its next-token logits.

Driving it (the app): expand the prompt's ``<image>`` to N columns; run "prefill" over
every prompt token but the last in chunks of P (pad the last chunk with any id: padding
writes slots that later tokens overwrite before they are ever attended to); then "decode"
the last prompt token at its position for the first logits, and each sampled token at the
next position.  Positions must stay below T.  Attention to slot j is allowed iff
j <= the query's position, so stale slots are never seen.

Cache writes are one-hot matrix products (no data-dependent slicing): static shapes, exact
in fp16, and runnable by the numpy MIL executor.  Reference (gate 1): transformers
``Qwen2ForCausalLM`` logits for the whole sequence.
"""

from __future__ import annotations

import copy
import shutil
import tempfile
import weakref
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from coreml_convert.ane_qwen2 import Qwen2ANE, RopeTable, causal_bias, place_image
from coreml_convert.contract import DECODE_FUNCTIONS as FUNCTIONS
from coreml_convert.contract import DECODE_INPUTS as ARGS  # also the traced argument order
from coreml_convert.contract import cache_shape, chunk_length, llm_decode_io
from coreml_convert.spec import ComponentSpec
from weights.configs import MobileOConfig


class CachedQwen2(nn.Module):
    """The decoder over a KV cache held in two buffers (the Core ML states).

    ``mode`` picks the function traced: "prefill" (a chunk, image placement, hidden states
    out) or "decode" (one token, logits out).  Both modes share ``core`` and the buffers.
    """

    def __init__(self, core: Qwen2ANE, cfg: MobileOConfig, mode: str = "decode"):
        super().__init__()
        self.core, self.cfg, self.mode = core, cfg, mode
        shape = cache_shape(cfg)
        self.register_buffer("key_cache", torch.zeros(shape))
        self.register_buffer("value_cache", torch.zeros(shape))
        self.register_buffer("slots", torch.arange(shape[-1], dtype=torch.int32), persistent=False)
        self.rope = RopeTable(core.config, shape[-1] + chunk_length(cfg))  # padding may run past T

    def with_mode(self, mode: str) -> "CachedQwen2":
        """The same module (same core, same buffers) in another mode."""
        other = copy.copy(self)  # shallow: shares the parameter / buffer / module dicts
        other.mode = mode
        return other

    def fresh(self) -> "CachedQwen2":
        """The same weights with a new, empty cache."""
        return CachedQwen2(self.core, self.cfg, self.mode).eval()

    def reset(self):
        self.key_cache.zero_()
        self.value_cache.zero_()

    def step(self, x: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        """Run embeddings x (1, C, 1, S) at positions position..position+S-1 through the cache;
        returns the final-norm hidden states (1, C, 1, S)."""
        s = x.shape[-1]  # static in each traced function
        positions = position.to(torch.int32) + torch.arange(s, dtype=torch.int32)
        cos, sin = self.rope(positions)
        scatter = (positions[:, None] == self.slots[None, :]).to(x.dtype)  # (S, T) one-hot rows
        bias = causal_bias(positions, self.slots)
        n = self.key_cache.shape[0]
        caches = [(self.key_cache[i:i + 1], self.value_cache[i:i + 1]) for i in range(n)]
        states, kvs = self.core.run(x, cos, sin, bias, caches, scatter)
        self.key_cache[:] = torch.cat([k for k, _ in kvs], dim=0)
        self.value_cache[:] = torch.cat([v for _, v in kvs], dim=0)
        return states[-1]

    def forward(self, input_ids, *args):
        if self.mode == "prefill":
            image_embeds, image_offset, position = args
            return self.step(self.core.embed_with_image(input_ids, image_embeds, image_offset), position)
        (position,) = args
        h = self.step(self.core.embed(input_ids), position)
        return self.core.logits(h)[:, :, 0, :].reshape(1, -1)


# ---------------------------------------------------------------------- the call sequence

Call = tuple[str, dict[str, np.ndarray]]  # (function, inputs)


def calls(cfg: MobileOConfig, ids, image_embeds: np.ndarray, image_offset: int, extra=()) -> list[Call]:
    """The app's call sequence for a prompt of ``ids`` (n tokens; image columns hold any id)
    with image token i at column ``image_offset + i``: "prefill" chunks over ids[:-1]
    (the last one padded with id 0), then "decode" of ids[-1] and of each ``extra`` token.
    Each "decode" returns the logits for the token after it."""
    ids = [int(t) for t in np.asarray(ids).reshape(-1)]
    p, n = chunk_length(cfg), len(ids)
    out: list[Call] = []
    for start in range(0, n - 1, p):
        chunk = ids[start:min(start + p, n - 1)]
        chunk = np.array([chunk + [0] * (p - len(chunk))], np.int32)
        out.append(("prefill", {"input_ids": chunk, "image_embeds": image_embeds,
                                "image_offset": np.array([image_offset - start], np.int32),
                                "position": np.array([start], np.int32)}))
    for i, t in enumerate([ids[-1], *extra]):
        out.append(("decode", {"input_ids": np.array([[t]], np.int32),
                               "position": np.array([n - 1 + i], np.int32)}))
    return out


def run_calls(module: "CachedQwen2", sequence: list[Call]) -> np.ndarray:
    """Our torch module through ``sequence`` from an empty cache, in place (the module's
    cache is left as the sequence leaves it): decode logits (steps, vocab)."""
    module.reset()
    out = []
    with torch.no_grad():
        for fn, inputs in sequence:
            y = module.with_mode(fn)(*(torch.from_numpy(np.asarray(inputs[k])) for k in ARGS[fn]))
            if fn == "decode":
                out.append(y[0].numpy())
    return np.stack(out)


def run_torch(module: "CachedQwen2", sequence: list[Call]) -> np.ndarray:
    """:func:`run_calls` on a fresh cache (``module``'s own cache is untouched)."""
    return run_calls(module.fresh(), sequence)


def run_program_calls(path, sequence: list[Call]) -> np.ndarray:
    """The saved bundle's MIL program through ``sequence`` (numpy executor, one shared state):
    decode logits (steps, vocab)."""
    from coreml_convert.mil_exec import load_program, make_states, run_program

    program = load_program(path)  # once, not per call
    states = make_states(program, FUNCTIONS[0])
    out = [run_program(program, inputs, function=fn, states=states) for fn, inputs in sequence]
    return np.stack([o["logits"][0] for (fn, _), o in zip(sequence, out) if fn == "decode"])


def reference_logits(model, ids, image_embeds: np.ndarray, image_offset: int, extra=()) -> np.ndarray:
    """transformers logits (steps, vocab) at the decode positions of :func:`calls`."""
    ids = np.concatenate([np.asarray(ids).reshape(-1), np.asarray(extra, np.int64)]).astype(np.int64)
    n = ids.size - len(extra)
    with torch.no_grad():
        tok = model.get_input_embeddings()(torch.from_numpy(ids)).numpy()
        embeds = place_image(tok, image_embeds[0, :, 0, :].T.astype(np.float32), image_offset)
        logits = model(inputs_embeds=torch.from_numpy(embeds)[None]).logits[0]
    return logits[n - 1:].numpy()


def example_prompt(cfg: MobileOConfig, rng: np.random.Generator) -> dict:
    """A prompt with the whole image from column 3, at least one prefill chunk long, and one
    text token after the image (the one decoded): the image never covers the decoded position,
    and at full size (256 image tokens) it straddles several prefill chunks."""
    hidden, n, offset = cfg.llm.hidden_size, cfg.vision.num_tokens, 3
    length = max(chunk_length(cfg), offset + n) + 1
    return {"ids": rng.integers(0, cfg.llm.vocab_size, length),
            "image_embeds": (rng.standard_normal((1, hidden, 1, n)) / np.sqrt(hidden)).astype(np.float32),
            "image_offset": offset}


# ---------------------------------------------------------------------- conversion


def convert_multifunction(module: CachedQwen2, cfg: MobileOConfig, sequence: list[Call], precision: str):
    """Trace and convert each function (examples: its first call in ``sequence``), then merge
    them into one bundle whose functions share every weight.  Leaves the cache zeroed."""
    import coremltools as ct

    from coreml_convert import convert as cv

    bundle = llm_decode_io(cfg)
    examples = {fn: inputs for fn, inputs in reversed(sequence)}
    tmp = Path(tempfile.mkdtemp(prefix="llm_decode."))
    try:
        desc = ct.utils.MultiFunctionDescriptor()
        for fn, io in bundle.function_io.items():
            one = replace(bundle, inputs=io["inputs"], outputs=io["outputs"], functions=("main",), function_io={})
            spec = ComponentSpec(module=module.with_mode(fn), example_inputs=examples[fn],
                                 reference=lambda _: {}, io=one)
            cv.save_atomic(cv.convert(spec, precision), tmp, f"{fn}.mlpackage")
            desc.add_function(str(tmp / f"{fn}.mlpackage"), src_function_name="main", target_function_name=fn)
        desc.default_function_name = FUNCTIONS[0]
        ct.utils.save_multifunction(desc, str(tmp / "llm_decode.mlpackage"))
        merged = ct.models.MLModel(str(tmp / "llm_decode.mlpackage"), skip_model_load=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        module.reset()  # tracing ran the functions on the buffers
    weakref.finalize(merged, shutil.rmtree, str(tmp), True)  # the package lives until saved
    return merged


# ---------------------------------------------------------------------- spec


def build_spec(ckpt, seed: int = 0) -> ComponentSpec:
    """Both gates run the example call sequence: "prefill" of a chunk holding an image, then
    "decode" of the prompt's last token.  ``module`` is the decode function with its cache
    primed by that sequence, so decoding ``example_inputs`` (the last call) again rewrites
    the same slot and gives the same logits; ``reference`` is transformers on the whole
    prompt, ``program_check`` replays the sequence on the saved program."""
    from weights import upstream

    cfg = ckpt.config
    module = CachedQwen2(Qwen2ANE.from_checkpoint(ckpt), cfg).eval()
    prompt = example_prompt(cfg, np.random.default_rng(seed))
    sequence = calls(cfg, prompt["ids"], prompt["image_embeds"], prompt["image_offset"])
    last = len(prompt["ids"]) - 1
    ref_model = upstream.build("llm", cfg, ckpt.load("llm"))

    def reference(inputs):
        if int(inputs["position"][0]) != last:
            raise ValueError(f"the llm_decode reference continues the example prompt at position {last}")
        ids = np.concatenate([prompt["ids"][:last], np.asarray(inputs["input_ids"]).reshape(-1)])
        return {"logits": reference_logits(ref_model, ids, prompt["image_embeds"], prompt["image_offset"])}

    def convert(precision):
        model = convert_multifunction(module, cfg, sequence, precision)
        run_calls(module, sequence)  # re-prime the cache for the gates
        return model

    run_calls(module, sequence)
    return ComponentSpec(
        module=module, example_inputs=sequence[-1][1], reference=reference, io=llm_decode_io(cfg),
        convert=convert, program_check=lambda path: {"logits": run_program_calls(path, sequence)[-1:]},
    )
