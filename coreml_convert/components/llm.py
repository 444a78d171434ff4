"""llm: Qwen2 as one multifunction bundle over one weight set (iOS 18 ``ct.StateType`` KV cache).

Functions (``contract.LLM_FUNCTIONS``; each function's I/O is ``contract.llm_io`` and goes to
the manifest as the component's ``function_io``), every input fp16 and computed on the host
(``weights.bundles.contract``: ``embed_prompt`` from the embedding table written beside the
bundle as ``contract.EMBEDDINGS_FILE``, ``rope``, ``causal_bias``, ``cache_position``):

  "decode"         (default) one token at cache slot p: embeds (1, C, 1, 1), cos / sin
                   (1, D, 1, 1), attention_bias (1, T, 1, 1) (slots <= p), position (1,)
                   int32 = p  ->  logits_0 .. logits_n (1, <= 16384) each
  "prefill"        a chunk of P tokens at slots s .. s+P-1: embeds (1, C, 1, P), cos / sin
                   (1, D, 1, P), attention_bias (1, T, 1, P), position (1,) int32 = s
                   ->  hidden_states (1, C, 1, P)
  "hidden_states"  a whole right-padded prompt of L tokens (L enumerated), no cache: embeds,
                   cos, sin (L columns), attention_bias (1, L, 1, L) causal and padding-masked
                   ->  hidden_states (K, C, 1, L): transformers' output_hidden_states[-K:]
                   (K = vlm_num_layers; the last after the final norm) for the MCP.

"decode" and "prefill" share the states key_cache / value_cache (layers, kv_heads, T, D),
written in place at ``position`` (one ``slice_update`` of S slots per layer and state: 12 KB
per decoded token at full size, not the whole cache; ``lint.state_traffic`` measures it).
Driving it (the app, Swift ``CoreMLLanguageModel``): expand ``<image>`` to N columns; run
"prefill" over every prompt token but the last in chunks of P (the last chunk padded: its
padding slots are overwritten before any query can see them); "decode" the last prompt token
for the first logits, then each sampled token at the next slot.

Conversion: each function is traced and converted on its own, compressed with the same
deterministic recipe, then merged by ``save_multifunction``, which keeps one copy of every
weight the functions share.  Reference (gate 1): transformers ``Qwen2ForCausalLM`` on the
same embeddings -- the decode logits after a prompt with an image straddling two chunks, and
the hidden states of a padded prompt.
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

from weights.bundles import contract
from coreml_convert.ane_qwen2 import Qwen2ANE
from weights.bundles.contract import LLM_FUNCTIONS as FUNCTIONS
from weights.bundles.contract import LLM_INPUTS, cache_shape, chunk_length, llm_io
from coreml_convert import memory
from coreml_convert.spec import ComponentSpec, reference_first
from weights.core.configs import MobileOConfig


class LLM(nn.Module):
    """The decoder in one of the bundle's modes, over a KV cache held in two buffers (the
    Core ML states).  Every mode shares ``core`` and the buffers."""

    def __init__(self, core: Qwen2ANE, cfg: MobileOConfig, mode: str = "decode"):
        super().__init__()
        self.core, self.cfg, self.mode = core, cfg, mode
        self.num_states = cfg.mcp.num_layers
        shape = cache_shape(cfg)
        self.register_buffer("key_cache", torch.zeros(shape))
        self.register_buffer("value_cache", torch.zeros(shape))

    def with_mode(self, mode: str) -> "LLM":
        """The same module (same core, same buffers) in another mode."""
        other = copy.copy(self)  # shallow: shares the parameter / buffer / module dicts
        other.mode = mode
        return other

    def fresh(self) -> "LLM":
        """The same weights with a new, empty cache."""
        return LLM(self.core, self.cfg, self.mode).eval()

    def reset(self):
        self.key_cache.zero_()
        self.value_cache.zero_()

    def writer(self, layer: int, position):
        """The layer's cache writer: this call's (1, G, S, D) keys/values into slots
        position .. position+S-1 of the states (in place: a ``slice_update`` at a runtime
        index once converted), then the layer's whole (1, G, T, D) cache to attend over."""
        def write(k, v):
            start = position[0]
            end = start + k.shape[2]
            self.key_cache[layer:layer + 1, :, start:end, :] = k
            self.value_cache[layer:layer + 1, :, start:end, :] = v
            return self.key_cache[layer:layer + 1], self.value_cache[layer:layer + 1]
        return write

    def forward(self, embeds, cos, sin, attention_bias, position=None):
        if self.mode == "hidden_states":
            states, _ = self.core.run(embeds, cos, sin, attention_bias)
            return torch.cat(states[-self.num_states:], dim=0)
        caches = [self.writer(i, position) for i in range(self.key_cache.shape[0])]
        states, _ = self.core.run(embeds, cos, sin, attention_bias, caches)
        if self.mode == "prefill":
            return states[-1]
        return tuple(self.core.logits(states[-1]))


def fp16_exact(a: np.ndarray) -> np.ndarray:
    """Round to fp16-representable float32 (the bundle's inputs are fp16)."""
    return np.asarray(a, np.float32).astype(np.float16).astype(np.float32)


def torch_input(a) -> torch.Tensor:
    """A host input as torch: floats as float32, the int32 ``position`` as int32."""
    a = np.asarray(a)
    return torch.from_numpy(a.astype(np.float32) if a.dtype.kind == "f" else a.astype(np.int32))


def args(fn: str) -> tuple[str, ...]:
    return LLM_INPUTS if fn != "hidden_states" else LLM_INPUTS[:-1]


# ---------------------------------------------------------------------- host inputs

Call = tuple[str, dict[str, np.ndarray]]  # (function, inputs)


def step_inputs(cfg: MobileOConfig, embeds: np.ndarray, position: int) -> dict[str, np.ndarray]:
    """A "prefill" (S = P) or "decode" (S = 1) call's inputs for embeds (1, C, 1, S) at slots
    position .. position+S-1."""
    s, t = embeds.shape[-1], contract.context_length(cfg)
    pos = np.arange(position, position + s)
    cos, sin = contract.rope(cfg.llm, pos)
    return {"embeds": fp16_exact(embeds), "cos": cos, "sin": sin,
            "attention_bias": contract.causal_bias(pos, np.arange(t)),
            "position": contract.cache_position(position, s, t)}


def hidden_inputs(cfg: MobileOConfig, embeds: np.ndarray, valid: int) -> dict[str, np.ndarray]:
    """The "hidden_states" call for a right-padded prompt embeds (1, C, 1, L), ``valid`` real tokens."""
    length = embeds.shape[-1]
    pos = np.arange(length)
    cos, sin = contract.rope(cfg.llm, pos)
    return {"embeds": fp16_exact(embeds), "cos": cos, "sin": sin,
            "attention_bias": contract.causal_bias(pos, pos, (pos < valid).astype(np.float32))}


def calls(cfg: MobileOConfig, table: np.ndarray, ids, image_embeds: np.ndarray | None, image_offset: int,
          extra=()) -> list[Call]:
    """The app's call sequence for a prompt of ``ids`` (n tokens; image columns hold any id)
    with image token i at column ``image_offset + i`` (image_embeds (1, C, 1, N)): "prefill"
    chunks over ids[:-1] (the last padded with id 0), then "decode" of ids[-1] and of each
    ``extra`` token.  Each "decode" returns the logits for the token after it."""
    ids = [int(t) for t in np.asarray(ids).reshape(-1)]
    p, n = chunk_length(cfg), len(ids)
    image = None if image_embeds is None else image_embeds[0, :, 0, :].T
    full = contract.embed_prompt(table, ids, image, image_offset)  # (1, C, 1, n)
    out: list[Call] = []
    for start in range(0, n - 1, p):
        chunk = full[..., start:min(start + p, n - 1)]
        pad = contract.embed_prompt(table, [0] * (p - chunk.shape[-1]))
        out.append(("prefill", step_inputs(cfg, np.concatenate([chunk, pad], axis=-1), start)))
    out.append(("decode", step_inputs(cfg, full[..., n - 1:], n - 1)))
    for i, t in enumerate(extra):
        out.append(("decode", step_inputs(cfg, contract.embed_prompt(table, [t]), n + i)))
    return out


def logits_of(outputs, widths=None) -> np.ndarray:
    """The logits slices (a tuple of tensors or a dict logits_i -> array) concatenated: (V,)."""
    if isinstance(outputs, dict):
        parts = [outputs[f"logits_{i}"] for i in range(len([k for k in outputs if k.startswith("logits_")]))]
    else:
        parts = [o.numpy() if hasattr(o, "numpy") else o for o in outputs]
    return np.concatenate([np.asarray(p, np.float32).reshape(-1) for p in parts])


def run_calls(module: LLM, sequence: list[Call]) -> np.ndarray:
    """Our torch module through ``sequence`` from an empty cache, in place (the module's cache
    is left as the sequence leaves it): decode logits (steps, vocab)."""
    module.reset()
    out = []
    with torch.no_grad():
        for fn, inputs in sequence:
            y = module.with_mode(fn)(*(torch_input(inputs[k]) for k in args(fn)))
            if fn == "decode":
                out.append(logits_of(y))
    return np.stack(out)


def run_torch(module: LLM, sequence: list[Call]) -> np.ndarray:
    """:func:`run_calls` on a fresh cache (``module``'s own cache is untouched)."""
    return run_calls(module.fresh(), sequence)


def run_program_calls(path, sequence: list[Call]) -> np.ndarray:
    """The saved bundle's MIL program through ``sequence`` (numpy executor, one shared state):
    decode logits (steps, vocab).  Each run of calls to one function loads that function
    alone (the functions share one weight set on disk, but each loaded function holds its own
    copy), then the next; the states carry over."""
    from coreml_convert.mil_exec import load_program, make_states, run_program

    states, program, loaded, logits = None, None, None, []
    for fn, inputs in sequence:
        if fn != loaded:
            program = None
            program, loaded = load_program(path, functions=[fn]), fn
            states = make_states(program, fn) if states is None else states
        out = run_program(program, inputs, function=fn, states=states)
        if fn == "decode":
            logits.append(logits_of(out))
    return np.stack(logits)


def reference_logits(model, embeds: np.ndarray, steps: int) -> np.ndarray:
    """transformers logits (steps, vocab) at the last ``steps`` positions of embeds (1, C, 1, n)."""
    with torch.no_grad():
        logits = model(inputs_embeds=torch.from_numpy(embeds[0, :, 0, :].T.copy())[None]).logits[0]
    return logits[-steps:].numpy()


def reference_hidden(model, embeds: np.ndarray, valid: int, num_states: int) -> np.ndarray:
    """transformers' output_hidden_states[-K:] (K, C, 1, L) for a right-padded prompt."""
    length = embeds.shape[-1]
    mask = (np.arange(length) < valid).astype(np.int64)[None]
    with torch.no_grad():
        out = model(inputs_embeds=torch.from_numpy(embeds[0, :, 0, :].T.copy())[None],
                    attention_mask=torch.from_numpy(mask), output_hidden_states=True)
    return np.stack([h[0].T[:, None, :].numpy() for h in out.hidden_states[-num_states:]])


def example_prompt(cfg: MobileOConfig, rng: np.random.Generator) -> dict:
    """A prompt with the whole image from column 3, at least one prefill chunk long, and one
    text token after the image (the one decoded): the image never covers the decoded position,
    and at full size (256 image tokens) it straddles several prefill chunks."""
    hidden, n, offset = cfg.llm.hidden_size, cfg.vision.num_tokens, 3
    length = max(chunk_length(cfg), offset + n) + 1
    return {"ids": rng.integers(0, cfg.llm.vocab_size, length),
            "image_embeds": fp16_exact(rng.standard_normal((1, hidden, 1, n)) / np.sqrt(hidden)),
            "image_offset": offset}


def example_hidden(cfg: MobileOConfig, table: np.ndarray, length: int, rng: np.random.Generator,
                   image: bool = True) -> tuple[dict[str, np.ndarray], int]:
    """A right-padded prompt of ``length`` columns (4 padding tokens) with an image at column 3
    (clipped): the "hidden_states" inputs and the count of real tokens."""
    hidden, n = cfg.llm.hidden_size, cfg.vision.num_tokens
    valid = length - 4
    ids = rng.integers(0, cfg.llm.vocab_size, length)
    img = fp16_exact(rng.standard_normal((n, hidden)) / np.sqrt(hidden)) if image else None
    return hidden_inputs(cfg, contract.embed_prompt(table, ids, img, 3), valid), valid


# ---------------------------------------------------------------------- conversion


def convert_multifunction(module: LLM, cfg: MobileOConfig, examples: dict[str, dict], precision: str,
                          compression: dict | None = None, keep_plain: bool = False, release=None):
    """Trace, convert and compress each function on its own (coremltools cannot compress a
    multifunction model; the recipe is deterministic, so shared weights compress identically),
    then merge them: ``save_multifunction`` keeps one copy of identical weights.  Leaves the
    cache zeroed.  ``keep_plain``: -> (uncompressed merged model, compressed merged model or
    None), each function traced and converted once.

    In three passes, each holding one thing at a time: every function is traced, converted and
    saved (uncompressed) to a temp folder while the torch module is alive; then ``release()``
    (when given) lets the caller free the module, and each function is compressed from its
    saved package, one at a time; then the merges read the saved packages.  (The mixed
    recipe's plan is measured on each converted program before it is saved.)"""
    from coreml_convert import convert as cv

    compressing = bool(compression) and compression.get("weights") not in (None, "fp16", "fp32")
    tmp = Path(tempfile.mkdtemp(prefix="llm."))
    try:
        try:
            plans = _convert_functions(module, cfg, examples, precision, compression if compressing else None,
                                       tmp / "plain")
        finally:
            module.reset()  # tracing ran the functions on the buffers
        if release is not None:
            del module
            release()  # the caller drops the torch module: what follows reads the saved packages
        kinds = ("plain", "compressed") if keep_plain and compressing else ("compressed",)
        if compressing:
            for fn in FUNCTIONS:
                memory.mark(f"compress {fn}")
                plain = cv.load_saved(tmp / "plain" / f"{fn}.mlpackage", llm_io(cfg).compute_units)
                cv.save_atomic(cv.compress(plain, compression, plans[fn]), tmp / "compressed", f"{fn}.mlpackage")
                del plain
        else:  # "compressed" is the plain functions
            (tmp / "plain").rename(tmp / "compressed")
        merged = _merge(tmp, kinds)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    holder = _TempOwner(tmp)  # the packages live until saved: the folder goes with the last model
    for model in merged.values():
        model._mobileo_tmp = holder
    if not keep_plain:
        return merged["compressed"]
    return (merged["plain"], merged["compressed"]) if compressing else (merged["compressed"], None)


def _convert_functions(module: LLM, cfg: MobileOConfig, examples: dict[str, dict], precision: str,
                       compression: dict | None, folder: Path) -> dict[str, dict | None]:
    """Trace and convert each function, save it uncompressed as ``folder/<fn>.mlpackage``
    and free it: -> each function's compression plan (``convert.compression_plan``, measured
    on the converted program while it is in memory)."""
    from coreml_convert import convert as cv

    bundle = llm_io(cfg)
    plans = {}
    for fn in FUNCTIONS:
        io = bundle.function_io[fn]
        one = replace(bundle, inputs=io["inputs"], outputs=io["outputs"], functions=("main",), function_io={},
                      states=bundle.states if fn in contract.LLM_STATE_FUNCTIONS else ())
        spec = ComponentSpec(module=module.with_mode(fn), example_inputs=examples[fn],
                             reference=lambda _: {}, io=one)
        memory.mark(f"convert {fn}")
        model = cv.convert(spec, precision)
        del spec
        module.reset()
        plans[fn] = cv.compression_plan(model, compression)
        cv.release_program(model)  # the saved package is what the next passes read
        cv.save_atomic(model, folder, f"{fn}.mlpackage")
        del model
    return plans


def _merge(tmp: Path, kinds: tuple[str, ...]) -> dict:
    """``save_multifunction`` of ``tmp/<kind>/<fn>.mlpackage`` (every function) into
    ``tmp/llm.<kind>.mlpackage`` per kind, "decode" the default: -> {kind: MLModel}."""
    import coremltools as ct

    memory.mark("merge")
    merged = {}
    for kind in kinds:
        desc = ct.utils.MultiFunctionDescriptor()
        for fn in FUNCTIONS:
            desc.add_function(str(tmp / kind / f"{fn}.mlpackage"), src_function_name="main", target_function_name=fn)
        desc.default_function_name = FUNCTIONS[0]
        ct.utils.save_multifunction(desc, str(tmp / f"llm.{kind}.mlpackage"))
        merged[kind] = ct.models.MLModel(str(tmp / f"llm.{kind}.mlpackage"), skip_model_load=True)
    return merged


class _TempOwner:
    """Removes the temp folder when the last model referring to it is gone."""

    def __init__(self, path: Path):
        weakref.finalize(self, shutil.rmtree, str(path), True)


# ---------------------------------------------------------------------- spec


def gate_outputs(module: LLM, sequence: list[Call], hidden: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """What the gates compare (as ``program_check`` returns it), from the torch module: the
    decode logits after ``sequence`` in slices, and "hidden_states" on ``hidden``."""
    logits = run_calls(module, sequence)[-1]
    widths = contract.logits_widths(module.cfg.llm.vocab_size)
    out = {f"logits_{i}": part[None] for i, part in enumerate(np.split(logits, np.cumsum(widths)[:-1]))}
    with torch.no_grad():
        out["hidden_states"] = module.with_mode("hidden_states")(
            *(torch.from_numpy(hidden[k]) for k in args("hidden_states"))).numpy()
    return out


def drift_plan(module: LLM, sequence: list[Call], hidden: dict[str, np.ndarray], recipe: dict) -> dict:
    """The output-drift pre-analysis (``coreml_convert.sensitivity``) of a recipe with
    ``select: "output_drift"``, on the torch module before it is traced, over the gates' own
    inputs; a group is a decoder layer's seven weights, or the lm_head (compressed as its logits
    slices).  -> the plan, to add to the recipe (and to the manifest's ``compression``):
    ``default_bits``, ``weight_bits`` (the promoted weights), ``unnamed_bits`` (the lm_head
    slices' consts carry no parameter name), ``drift_analysis`` (what was measured).  Leaves
    the cache primed by ``sequence``."""
    from coreml_convert import sensitivity
    from coreml_convert.convert import MIN_WEIGHT_ELEMENTS

    cfg, core = module.cfg, module.core
    weights = {n: p for n, p in core.named_parameters() if p.dim() == 4 and p.numel() >= MIN_WEIGHT_ELEMENTS}
    groups = {"lm_head": [n for n in weights if n.startswith("lm_head.")]}
    for i in range(cfg.llm.num_hidden_layers):
        groups[f"layer {i}"] = [n for n in weights if n.startswith(f"model.layers.{i}.")]
    groups = {g: names for g, names in groups.items() if names}
    splits = {n: list(contract.logits_widths(cfg.llm.vocab_size)) for n in groups.get("lm_head", [])}
    bits = sorted(int(b) for b in recipe.get("bits", (4, 6)))
    memory.mark("drift plan")
    probe = sensitivity.DriftProbe(weights, lambda: gate_outputs(module, sequence, hidden),
                                   int(recipe.get("group_size", 16)), recipe.get("palette", "lloyd"), splits)
    assign, record = sensitivity.plan_bits(probe, groups, bits, float(recipe.get("target_db", 16.0)))
    del probe
    run_calls(module, sequence)
    return {"default_bits": bits[0], "weight_bits": {n: b for n, b in sorted(assign.items()) if b != bits[0]},
            "unnamed_bits": max((assign[n] for n in groups.get("lm_head", [])), default=bits[0]),
            "drift_analysis": record}


class GateModule(nn.Module):
    """What the gates compare, as one module taking the "decode" inputs: the decode logits
    (cache primed by the example sequence) and the "hidden_states" function's output on its
    example prompt."""

    def __init__(self, llm: LLM, hidden_example: dict[str, np.ndarray]):
        super().__init__()
        self.llm, self.hidden_example = llm, hidden_example

    def forward(self, *decode_inputs):
        out = self.llm.with_mode("decode")(*decode_inputs)
        d = {f"logits_{i}": o for i, o in enumerate(out)}
        ex = [torch.from_numpy(self.hidden_example[k]) for k in args("hidden_states")]
        d["hidden_states"] = self.llm.with_mode("hidden_states")(*ex)
        return d


def embedding_table(ckpt) -> np.ndarray:
    """The (V, C) token-embedding table (float32) read alone from the checkpoint: the
    module's ``embed_tokens`` weight (``Qwen2ANE.embedding_table``), without building it."""
    return ckpt.load("llm", ["model.embed_tokens.weight"])["model.embed_tokens.weight"]


def build_spec(ckpt, seed: int = 0) -> ComponentSpec:
    """Both gates cover "decode" after the example sequence ("prefill" chunks holding an image,
    then "decode" of the prompt's last token) and "hidden_states" on a padded prompt.  The
    decode module's cache is primed by that sequence, so decoding ``example_inputs`` (the last
    call) again rewrites the same slot and gives the same logits."""
    from weights.references import upstream

    cfg = ckpt.config
    packed = contract.quantize_rows(embedding_table(ckpt))  # the table the app reads (int4 rows + scales)
    table = fp16_exact(contract.dequantize_rows(packed))  # what it feeds the bundle
    rng = np.random.default_rng(seed)
    prompt = example_prompt(cfg, rng)
    sequence = calls(cfg, table, prompt["ids"], prompt["image_embeds"], prompt["image_offset"])
    hidden, valid = example_hidden(cfg, table, contract.sequence_lengths(cfg)[0], rng)
    full = contract.embed_prompt(table, prompt["ids"], prompt["image_embeds"][0, :, 0, :].T, prompt["image_offset"])
    del table  # 4 bytes per weight of the (V, C) table: not needed again
    widths = contract.logits_widths(cfg.llm.vocab_size)
    last = sequence[-1][1]

    def forward(ref_model, inputs):
        if not np.array_equal(inputs["position"], last["position"]):
            raise ValueError("the llm reference continues the example prompt at its last position")
        embeds = np.concatenate([full[..., :-1], np.asarray(inputs["embeds"], np.float32)], axis=-1)
        logits = reference_logits(ref_model, embeds, 1)[0]
        out = {f"logits_{i}": part[None] for i, part in enumerate(np.split(logits, np.cumsum(widths)[:-1]))}
        out["hidden_states"] = reference_hidden(ref_model, hidden["embeds"], valid, cfg.mcp.num_layers)
        return out

    # the reference runs first and is freed: it and our module are never in memory together
    reference = reference_first(lambda: upstream.build("llm", cfg, ckpt.load("llm")), forward, last)
    llm = LLM(Qwen2ANE.from_checkpoint(ckpt), cfg).eval()

    def program_check(path):
        from coreml_convert.mil_exec import load_program, run_program

        logits = run_program_calls(path, sequence)[-1]
        out = {f"logits_{i}": part[None] for i, part in enumerate(np.split(logits, np.cumsum(widths)[:-1]))}
        program = load_program(path, functions=["hidden_states"])
        out["hidden_states"] = run_program(program, hidden, function="hidden_states")["hidden_states"]
        return out

    box = {"llm": llm}  # the only reference the conversion holds: ``release`` empties it
    facts = {}  # the output-drift plan of the last conversion (ComponentSpec.compression_facts)

    def convert(precision, compression=None, keep_plain=False, release=None):
        """``release``: called once every function is converted, to free the torch module
        (``spec.module``) before compression and the merge; the cache is then not re-primed."""
        examples = {fn: inputs for fn, inputs in reversed(sequence)}
        examples["hidden_states"] = hidden
        if compression and compression.get("select") == "output_drift":  # before tracing
            facts.clear()
            facts.update(drift_plan(box["llm"], sequence, hidden, compression))
            compression = {**compression, **facts}

        def drop():
            box.clear()
            release()

        model = convert_multifunction(box["llm"], cfg, examples, precision, compression, keep_plain,
                                      release=None if release is None else drop)
        if box:
            run_calls(box["llm"], sequence)  # re-prime the cache for the gates
        return model

    run_calls(llm, sequence)
    return ComponentSpec(
        module=GateModule(llm, hidden), example_inputs=last, reference=reference, io=llm_io(cfg),
        convert=convert, program_check=program_check,
        files={contract.EMBEDDINGS_FILE: packed}, compression_facts=facts,
    )
