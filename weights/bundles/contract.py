"""The bundle contract, defined once: what each Core ML bundle takes and gives the app.

For every component: its tensors (name, default shape, dtype, axis layout, enumerated
sizes) for inputs, outputs and states -- and, for the multifunction ``llm``, each
function's -- plus the compute units it is meant for and the minimum OS.  Also the shared
size facts behind those shapes: the enumerated sequence lengths of the conditioning path
(64, 128, 256, 512), the ``llm`` chunk (prefill) length (64 tokens), its KV-cache
length and the classifier-free-guidance batch of the DiT.  Everything is a function of the
checkpoint's config (``weights.core.configs.MobileOConfig``).

The host side of the pure-fp16 graphs is defined here too, once, in numpy (Swift re-implements
it and the goldens check it): token embeddings read from a table beside the bundles
(:data:`EMBEDDINGS_FILE`), RoPE cos/sin (:func:`rope`), additive causal masks
(:func:`causal_bias`), the KV-cache write position (:func:`cache_position`), the DiT's timestep
features (:func:`timestep_features`) and the split of the logits (:func:`logits_widths`).
The graphs then hold no dynamic gather and no dimension over :data:`MAX_DIMENSION`
(docs/deployment-notes.md section 2); their only integer ops build the begin/end of the
``llm`` cache's ``slice_update`` from the ``position`` input (a runtime index, as Anemll's
``qwen_model.py`` writes ``kv_cache[..., pos:pos+1, :]``).

    io = dit_io(ckpt.config)          # -> BundleIO: inputs, outputs, states, functions, ...
    io = bundle_io("dit", ckpt.config)

Read by the converter (each ``components/<name>.py`` builds its torch module to match and
puts the BundleIO in its ComponentSpec; ``convert.py`` types the Core ML inputs from it;
``cli.py`` records it), by the manifest writer (``ios_bridge.manifest``) and by the golden
generator (``tests/tools/golden.py``).  Plain Python and numpy: importing this module pulls
neither torch nor coremltools, so ``ios_bridge`` may import it.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from weights.core.components import BUNDLES, COMPONENTS, DEFAULT_TARGET, TARGETS
from weights.core.prompts import MAX_PROMPT_TOKENS

DTYPES = ("float16", "float32", "int32")
COMPONENT_NAMES = BUNDLES  # pipeline order (weights.core.components)
COMPUTE_UNITS = ("all", "cpuOnly", "cpuAndGPU", "cpuAndNeuralEngine")  # Core ML's MLComputeUnits
# the compute units each bundle is converted and meant to run with (weights.core.components):
# every module is written in the Neural Engine's layout (docs/deployment-notes.md section 1;
# Mobile-O's own app runs its fp32 DiT and VAE on cpuAndGPU instead, section 8)
COMPONENT_COMPUTE_UNITS = {name: COMPONENTS[name].compute_units for name in COMPONENT_NAMES}
MINIMUM_OS = {"iOS": "18.0", "macOS": "15.0"}  # ML program with states / multifunction: iOS 18

LENGTH_STEP = 64  # enumerated sequence lengths: LENGTH_STEP * 2**i up to the prompt maximum
STATE_ALIGN = 32  # KV-cache length multiple (Neural Engine state dims; docs/deployment-notes.md section 2)
MAX_DIMENSION = 16384  # largest tensor dimension on the Neural Engine (deployment-notes section 2)
CFG_BATCH = 2  # DiT batch: [unconditional, conditional] for classifier-free guidance
# the llm bundle's functions over one weight set; the first is the default.  "decode": one token
# against the KV cache -> logits; "prefill": a chunk of chunk_length() tokens into the cache
# (understanding); "hidden_states": a whole prompt, no cache -> the MCP's hidden states (generation)
LLM_FUNCTIONS = ("decode", "prefill", "hidden_states")
LLM_STATE_FUNCTIONS = ("decode", "prefill")  # the functions that read/write key_cache, value_cache
LLM_INPUTS = ("embeds", "cos", "sin", "attention_bias", "position")  # traced argument order
# the token-embedding table (V, C) beside the llm bundle: int4 rows (two values a byte, low
# nibble first), each followed by its little-endian fp16 scale (EMBEDDINGS_DTYPE, issue 22:
# 68 MB at full size; quantize_rows / dequantize_rows; Swift EmbeddingTable, which still reads
# the int8 rows of schema 3 exports, TABLE_DTYPES)
EMBEDDINGS_FILE = "llm_embeddings.q4"


def lint_report_name(component: str) -> str:
    """The lint report beside a bundle (``coreml_convert.lint`` writes it, the manifest records
    its summary, ``mobileo-validate`` compares the two)."""
    return f"{component}.lint.json"


EMBEDDINGS_DTYPE = "int4_row_scale"
TABLE_DTYPES = ("float16", "int8_row_scale", "int4_row_scale")  # formats of a table beside a bundle
ROW_SCALE_BYTES = 2  # the fp16 scale after each quantized row


# ------------------------------------------------------------------ tensors


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]  # default shape
    dtype: str  # "float16" | "float32" | "int32"
    layout: str  # axis names, e.g. "B,C,1,S" or "B,3,H,W"
    enumerated: dict[int, tuple[int, ...]] | None = None  # axis -> allowed sizes (flexible dims)

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise ValueError(f"TensorSpec {self.name}: dtype {self.dtype!r} not in {DTYPES}")
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        if len(self.layout.split(",")) != len(self.shape):
            raise ValueError(f"TensorSpec {self.name}: layout {self.layout!r} does not name "
                             f"{len(self.shape)} axes")
        if self.enumerated is not None:
            enum = {int(a): tuple(int(s) for s in sizes) for a, sizes in self.enumerated.items()}
            for axis, sizes in enum.items():
                if not 0 <= axis < len(self.shape) or self.shape[axis] not in sizes:
                    raise ValueError(f"TensorSpec {self.name}: default size of axis {axis} must be "
                                     f"one of its enumerated sizes {sizes}")
            object.__setattr__(self, "enumerated", enum)

    @property
    def np_dtype(self) -> np.dtype:
        return np.dtype(self.dtype)

    def shapes(self) -> list[tuple[int, ...]]:
        """Every allowed shape (the default first) -- for ct.EnumeratedShapes.  Axes that list
        the same sizes are tied (one sequence length on two axes, e.g. a (1, L, 1, L) mask)."""
        if not self.enumerated:
            return [self.shape]
        axes = sorted(self.enumerated)
        out = [self.shape]
        sizes = [self.enumerated[a] for a in axes]
        tied = len(axes) > 1 and all(s == sizes[0] for s in sizes)
        for combo in (zip(*sizes) if tied else itertools.product(*sizes)):
            s = list(self.shape)
            for a, v in zip(axes, combo):
                s[a] = v
            if tuple(s) not in out:
                out.append(tuple(s))
        return out

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "shape": list(self.shape), "dtype": self.dtype,
                             "layout": self.layout}
        if self.enumerated:
            d["enumerated"] = {str(a): list(s) for a, s in sorted(self.enumerated.items())}
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TensorSpec":
        enum = d.get("enumerated")
        return cls(d["name"], tuple(d["shape"]), d["dtype"], d["layout"],
                   {int(a): tuple(s) for a, s in enum.items()} if enum else None)


FunctionIO = dict[str, dict[str, list[TensorSpec]]]  # {function: {"inputs": [...], "outputs": [...]}}


def check_function_io(name: str, functions, function_io: FunctionIO, inputs, outputs) -> None:
    """Each entry names one of ``functions`` and has non-empty "inputs" and "outputs"; the
    default function's (``functions[0]``) are ``inputs`` / ``outputs``."""
    for fn, io in function_io.items():
        if fn not in functions:
            raise ValueError(f"{name}: function_io names {fn!r}, which is not among its functions {tuple(functions)}")
        if sorted(io) != ["inputs", "outputs"] or not io["inputs"] or not io["outputs"]:
            raise ValueError(f"{name}: function_io[{fn!r}] needs non-empty 'inputs' and 'outputs'")
        if fn == functions[0] and (list(io["inputs"]), list(io["outputs"])) != (list(inputs), list(outputs)):
            raise ValueError(f"{name}: function_io[{fn!r}] (the default function) differs from inputs / outputs")


@dataclass(frozen=True)
class BundleIO:
    """One component's contract: its tensors, functions, compute units and minimum OS."""

    name: str  # one of COMPONENT_NAMES
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    states: tuple[TensorSpec, ...] = ()
    functions: tuple[str, ...] = ("main",)
    function_io: FunctionIO = field(default_factory=dict)
    # multifunction bundles: every function's I/O ({} for single-function components)
    target: str = DEFAULT_TARGET  # deployment target (TARGETS): decides the compute units

    def __post_init__(self):
        if self.name not in COMPONENT_NAMES:
            raise ValueError(f"unknown component {self.name!r}; one of {COMPONENT_NAMES}")
        if self.target not in TARGETS:
            raise ValueError(f"unknown target {self.target!r}; one of {TARGETS}")
        for k in ("inputs", "outputs", "states", "functions"):
            object.__setattr__(self, k, tuple(getattr(self, k)))
        check_function_io(self.name, self.functions, self.function_io, self.inputs, self.outputs)

    @property
    def compute_units(self) -> str:
        return COMPONENTS[self.name].compute_units_for(self.target)

    @property
    def minimum_os(self) -> dict[str, str]:
        return dict(MINIMUM_OS)


# ------------------------------------------------------------------ sizes


def sequence_lengths(config=None) -> tuple[int, ...]:
    """Token-sequence lengths the conditioning path (llm hidden_states -> mcp -> dit) is converted
    for, as enumerated shapes: 64, 128, 256, 512 (= weights.core.prompts.MAX_PROMPT_TOKENS).  The
    app pads a prompt to the next length and masks the padding.  The first is the default."""
    out, n = [], LENGTH_STEP
    while n < MAX_PROMPT_TOKENS:
        out.append(n)
        n *= 2
    return tuple(out) + (MAX_PROMPT_TOKENS,)


def chunk_length(config=None) -> int:
    """Tokens per llm "prefill" call: the shortest sequence length (64)."""
    return sequence_lengths(config)[0]


def context_length(config) -> int:
    """llm cache slots: the longest prompt plus the default answer length, rounded up to a
    multiple of STATE_ALIGN and of the chunk length (a chunk writes one whole block of slots)."""
    n = MAX_PROMPT_TOKENS + config.defaults.max_new_tokens
    step = math.lcm(STATE_ALIGN, chunk_length(config))
    return -(-n // step) * step


def cache_shape(config) -> tuple[int, int, int, int]:
    """(layers, kv_heads, context_length, head_dim) of each llm cache state: a call writes
    its S slots in place (``slice_update`` at the ``position`` input on axis 2) and the last
    axis is the head dim (64: a multiple of the Neural Engine's 32-element alignment, as in
    Anemll's (2L, kv_heads, T, D) cache), not a singleton."""
    llm = config.llm
    return (llm.num_hidden_layers, llm.num_key_value_heads, context_length(config), llm.head_dim)


def state_write_bytes(config, count: int = 1) -> int:
    """Bytes of cache state one call of ``count`` tokens writes (keys and values, every
    layer, fp16): 12,288 per token at full size."""
    layers, kv_heads, _, d = cache_shape(config)
    return 2 * layers * kv_heads * count * d * 2


def _enumerated(axis: int, lengths: tuple[int, ...]) -> dict[int, tuple[int, ...]] | None:
    return {axis: tuple(lengths)} if len(lengths) > 1 else None


# ------------------------------------------------------------------ components


def vision_encoder_io(config) -> BundleIO:
    """image (1, 3, S, S) in [0, 1] -> image_features (1, hidden, 1, N)."""
    s, n, hidden = config.vision.image_size, config.vision.num_tokens, config.llm.hidden_size
    return BundleIO("vision_encoder",
                    inputs=[TensorSpec("image", (1, 3, s, s), "float16", "B,3,H,W")],
                    outputs=[TensorSpec("image_features", (1, hidden, 1, n), "float16", "B,C,1,S")])


def logits_widths(vocab_size: int) -> tuple[int, ...]:
    """The decode logits as outputs of at most MAX_DIMENSION columns each (Anemll splits its
    Qwen head the same way): logits_0 .. logits_{n-1}, concatenated in order."""
    return tuple(min(MAX_DIMENSION, vocab_size - i) for i in range(0, vocab_size, MAX_DIMENSION))


def llm_io(config) -> BundleIO:
    """One multifunction bundle over one weight set (functions: LLM_FUNCTIONS).  Every input
    is fp16 and computed on the host: ``embeds`` from the embedding table (EMBEDDINGS_FILE,
    image rows placed by the app), ``cos`` / ``sin`` from :func:`rope`, ``attention_bias``
    from :func:`causal_bias`, ``position`` (int32, the first cache slot the call writes)
    from :func:`cache_position`."""
    llm = config.llm
    hidden, d, p, t = llm.hidden_size, llm.head_dim, chunk_length(config), context_length(config)
    lengths, k = sequence_lengths(config), config.mcp.num_layers

    def step_inputs(s: int) -> list[TensorSpec]:
        return [TensorSpec("embeds", (1, hidden, 1, s), "float16", "B,C,1,S"),
                TensorSpec("cos", (1, d, 1, s), "float16", "B,D,1,S"),
                TensorSpec("sin", (1, d, 1, s), "float16", "B,D,1,S"),
                TensorSpec("attention_bias", (1, t, 1, s), "float16", "B,T,1,S"),
                TensorSpec("position", (1,), "int32", "N")]

    l0, seq = lengths[0], _enumerated(3, lengths)
    both = {1: lengths, 3: lengths} if len(lengths) > 1 else None  # tied axes: (1, L, 1, L)
    function_io = {
        "decode": {"inputs": step_inputs(1),
                   "outputs": [TensorSpec(f"logits_{i}", (1, w), "float16", "B,V")
                               for i, w in enumerate(logits_widths(llm.vocab_size))]},
        "prefill": {"inputs": step_inputs(p),
                    "outputs": [TensorSpec("hidden_states", (1, hidden, 1, p), "float16", "B,C,1,S")]},
        "hidden_states": {
            "inputs": [TensorSpec("embeds", (1, hidden, 1, l0), "float16", "B,C,1,S", seq),
                       TensorSpec("cos", (1, d, 1, l0), "float16", "B,D,1,S", seq),
                       TensorSpec("sin", (1, d, 1, l0), "float16", "B,D,1,S", seq),
                       TensorSpec("attention_bias", (1, l0, 1, l0), "float16", "B,K,1,S", both)],
            "outputs": [TensorSpec("hidden_states", (k, hidden, 1, l0), "float16", "K,C,1,S", seq)]},
    }
    shape = cache_shape(config)
    default = function_io[LLM_FUNCTIONS[0]]
    return BundleIO("llm", inputs=default["inputs"], outputs=default["outputs"],
                    states=[TensorSpec(s, shape, "float16", "L,G,T,D") for s in ("key_cache", "value_cache")],
                    functions=LLM_FUNCTIONS, function_io=function_io)


def mcp_io(config, lengths: tuple[int, ...] | None = None) -> BundleIO:
    """hidden_states (K, D, 1, S) + attention_mask (1, S) -> conditioning (1, Cc, 1, S)."""
    c = config.mcp
    lengths = tuple(lengths or sequence_lengths(config))
    s = lengths[0]
    return BundleIO("mcp",
                    inputs=[TensorSpec("hidden_states", (c.num_layers, c.in_dim, 1, s), "float16", "K,C,1,S",
                                       _enumerated(3, lengths)),
                            TensorSpec("attention_mask", (1, s), "float16", "B,S", _enumerated(1, lengths))],
                    outputs=[TensorSpec("conditioning", (1, c.out_dim, 1, s), "float16", "B,C,1,S",
                                        _enumerated(3, lengths))])


def dit_io(config, lengths: tuple[int, ...] | None = None) -> BundleIO:
    """The CFG batch of latents, timestep features (:func:`timestep_features`, computed on the
    host) and conditioning -> velocity."""
    d = config.dit
    lengths = tuple(lengths or sequence_lengths(config))
    s, c, b = d.sample_size, d.in_channels, CFG_BATCH
    return BundleIO("dit",
                    inputs=[TensorSpec("latent", (b, c, s, s), "float16", "B,C,H,W"),
                            TensorSpec("timestep_features", (b, d.TIMESTEP_CHANNELS, 1, 1), "float16", "B,F,1,1"),
                            TensorSpec("encoder_hidden_states", (b, d.caption_channels, 1, lengths[0]), "float16",
                                       "B,C,1,S", _enumerated(3, lengths)),
                            TensorSpec("encoder_attention_mask", (b, lengths[0]), "float16", "B,S",
                                       _enumerated(1, lengths))],
                    outputs=[TensorSpec("velocity", (b, d.out_channels, s, s), "float16", "B,C,H,W")])


def vae_decoder_io(config, latent_size: int | None = None) -> BundleIO:
    """The sampler's (scaled) latent (1, C, h, w) -> image (1, 3, H, W) in [0, 1].
    ``latent_size``: h = w (default: the DiT's sample_size)."""
    v = config.vae
    size = latent_size or config.dit.sample_size
    out = size * v.spatial_compression
    return BundleIO("vae_decoder",
                    inputs=[TensorSpec("latent", (1, v.latent_channels, size, size), "float16", "B,C,H,W")],
                    outputs=[TensorSpec("image", (1, v.in_channels, out, out), "float16", "B,3,H,W")])


IO: dict[str, Callable[..., BundleIO]] = {
    "vision_encoder": vision_encoder_io, "llm": llm_io,
    "mcp": mcp_io, "dit": dit_io, "vae_decoder": vae_decoder_io,
}
assert tuple(IO) == COMPONENT_NAMES == tuple(COMPONENT_COMPUTE_UNITS)
assert set(COMPONENT_COMPUTE_UNITS.values()) <= set(COMPUTE_UNITS)


def bundle_io(name: str, config) -> BundleIO:
    """The contract of component ``name`` for a checkpoint config, at the real sizes."""
    if name not in IO:
        raise ValueError(f"unknown component {name!r}; one of {COMPONENT_NAMES}")
    return IO[name](config)


# ------------------------------------------------------------------ host-side inputs (numpy)
# What the app computes before each call, defined once here; Swift re-implements each
# (ios_bridge/swift/Sources/MobileO/HostInputs.swift) and tests/tools/golden.py checks it.


def rope(llm, positions) -> tuple[np.ndarray, np.ndarray]:
    """cos, sin (1, head_dim, 1, S) float32 for integer ``positions`` (S,), as transformers'
    Qwen2RotaryEmbedding computes them: fp32 inverse frequencies theta^(-2i/d), fp32 angles
    position * inv_freq, the half-width table repeated twice along head_dim."""
    d = llm.head_dim
    inv_freq = (1.0 / (np.float32(llm.rope_theta) ** (np.arange(0, d, 2, dtype=np.float32) / np.float32(d))))
    inv_freq = inv_freq.astype(np.float32)
    angles = np.asarray(positions, np.float32).reshape(-1)[None, :] * inv_freq[:, None]  # (d/2, S)
    angles = np.concatenate([angles, angles], axis=0)  # (d, S)
    return np.cos(angles)[None, :, None, :], np.sin(angles)[None, :, None, :]


def causal_bias(query_positions, key_positions, key_valid=None) -> np.ndarray:
    """Additive attention bias (1, K, 1, Q) float32: 0 where key position <= query position
    (and the key is a real token when ``key_valid`` (K,) 0/1 is given), else MASK_BIAS (-1e4,
    never -inf: fp16 softmax of a -inf row is NaN)."""
    from weights.core.configs import DiTConfig

    q = np.asarray(query_positions).reshape(-1)
    k = np.asarray(key_positions).reshape(-1)
    allowed = k[:, None] <= q[None, :]
    if key_valid is not None:
        allowed &= np.asarray(key_valid).reshape(-1)[:, None] > 0
    return np.where(allowed, 0.0, DiTConfig.MASK_BIAS).astype(np.float32)[None, :, None, :]


def cache_position(position: int, count: int, slots: int) -> np.ndarray:
    """The ``position`` input (1,) int32: a call writes cache slots position .. position+count-1
    (and only those); every other slot is kept as is."""
    if count <= 0 or not 0 <= position or position + count > slots:
        raise ValueError(f"cache write of {count} slots at {position} in {slots}: the slots must lie "
                         f"in 0 .. {slots - 1}")
    return np.array([position], np.int32)


def quantize_rows(table: np.ndarray) -> np.ndarray:
    """The embedding table as stored (EMBEDDINGS_DTYPE): (V, C/2 + 2) bytes, each row C int4
    values (two's complement, -8..7, two a byte, column 2j in the low nibble) then its fp16
    scale, little-endian (value = int4 * scale).  Each row's scale minimises the row's squared
    error over clipping ratios of max|row| / 7 (CLIP_RATIOS): a few large values clip, the
    rest get finer steps.  A quarter of fp16's bytes; the app reads one row per token."""
    t = np.asarray(table, np.float32)
    if t.ndim != 2 or t.shape[1] % 2:
        raise ValueError(f"an int4 table needs an even row width, got shape {t.shape}")
    scale = np.zeros(t.shape[0], np.float16)
    for lo in range(0, t.shape[0], 4096):  # row blocks: bounded temporaries
        scale[lo:lo + 4096] = _row_scales(t[lo:lo + 4096])
    safe = np.where(scale > 0, scale.astype(np.float32), 1.0)[:, None]
    q = (np.clip(np.round(t / safe), -8, 7).astype(np.int8) & 0x0F).astype(np.uint8)
    packed = q[:, 0::2] | (q[:, 1::2] << 4)
    return np.concatenate([packed, scale.astype("<f2")[:, None].view(np.uint8)], axis=1)


CLIP_RATIOS = np.linspace(0.5, 1.0, 11)  # quantize_rows' candidate scales, x max|row| / 7


def _row_scales(rows: np.ndarray) -> np.ndarray:
    """Per row, the fp16 scale among CLIP_RATIOS x max|row| / 7 with the least squared error."""
    peak = np.abs(rows).max(axis=1)
    best, best_err = np.zeros(rows.shape[0], np.float16), np.full(rows.shape[0], np.inf)
    for ratio in CLIP_RATIOS:
        s = (peak * ratio / 7).astype(np.float16)
        sf = np.where(s > 0, s.astype(np.float32), 1.0)[:, None]
        err = np.sum((np.clip(np.round(rows / sf), -8, 7) * sf - rows) ** 2, axis=1)
        take = err < best_err
        best[take], best_err[take] = s[take], err[take]
    return best


def dequantize_rows(packed: np.ndarray, ids=None) -> np.ndarray:
    """(V, C) float32 rows of a :func:`quantize_rows` table (only ``ids``' rows if given)."""
    p = np.asarray(packed, np.uint8)
    if ids is not None:
        p = p[np.asarray(ids, np.int64)]
    body = p[:, :-ROW_SCALE_BYTES]
    q = np.empty((p.shape[0], body.shape[1] * 2), np.int8)
    q[:, 0::2], q[:, 1::2] = body & 0x0F, body >> 4
    q = np.where(q > 7, q - 16, q).astype(np.float32)
    scale = np.ascontiguousarray(p[:, -ROW_SCALE_BYTES:]).view("<f2").astype(np.float32)
    return q * scale


def table_format(array: np.ndarray) -> tuple[str, tuple[int, ...]]:
    """(dtype, logical shape) of a table written beside a bundle: packed int4 rows (uint8
    bytes, :func:`quantize_rows`) or fp16 values."""
    a = np.asarray(array)
    if a.dtype == np.uint8:
        return EMBEDDINGS_DTYPE, (int(a.shape[0]), 2 * (int(a.shape[1]) - ROW_SCALE_BYTES))
    return "float16", tuple(int(n) for n in a.shape)


def timestep_features(timesteps, channels: int | None = None, max_period: float | None = None) -> np.ndarray:
    """diffusers' Timesteps(channels, flip_sin_to_cos=True, downscale_freq_shift=0) of the DiT
    in fp32 -> (B, channels, 1, 1): [cos(t f), sin(t f)] with f_i = exp(-ln(max_period) i / half).
    Computed on the host (t f reaches 1000 rad, beyond fp16's phase resolution); the bundle takes
    the features in fp16 (values in [-1, 1])."""
    from weights.core.configs import DiTConfig

    channels = channels or DiTConfig.TIMESTEP_CHANNELS
    max_period = max_period or DiTConfig.TIMESTEP_MAX_PERIOD
    half = channels // 2
    exponent = (-np.float32(math.log(max_period)) * np.arange(half, dtype=np.float32)) / np.float32(half)
    freqs = np.exp(exponent.astype(np.float32)).astype(np.float32)
    arg = np.asarray(timesteps, np.float32).reshape(-1)[:, None] * freqs[None, :]
    return np.concatenate([np.cos(arg), np.sin(arg)], axis=1)[:, :, None, None].astype(np.float32)


def embed_prompt(table: np.ndarray, ids, image: np.ndarray | None = None, offset: int = 0) -> np.ndarray:
    """The ``embeds`` input (1, C, 1, L) float32 for token ``ids`` (L,): rows of the embedding
    table (V, C), with image rows (N, C) written at columns offset + i (those inside 0..L-1;
    Mobile-O's ``<image>`` expansion).  Image columns' ids are ignored."""
    ids = np.asarray(ids, np.int64).reshape(-1)
    rows = np.asarray(table, np.float32)[ids]
    if image is not None:
        rows = place_image(rows, np.asarray(image, np.float32), offset)
    return rows.T[None, :, None, :]


def place_image(embeds: np.ndarray, image: np.ndarray, offset: int) -> np.ndarray:
    """(L, C) token embeddings with image rows (N, C) written at rows offset + i (clipped)."""
    out = embeds.copy()
    for i in range(image.shape[0]):
        if 0 <= offset + i < out.shape[0]:
            out[offset + i] = image[i]
    return out
