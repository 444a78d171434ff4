"""The bundle contract, defined once: what each Core ML bundle takes and gives the app.

For every component: its tensors (name, default shape, dtype, axis layout, enumerated
sizes) for inputs, outputs and states -- and, for the multifunction ``llm_decode``, each
function's -- plus the compute units it is meant for and the minimum OS.  Also the shared
size facts behind those shapes: the enumerated sequence lengths of the conditioning path
(64, 128, 256, 512), the ``llm_decode`` chunk (prefill) length (64 tokens), its KV-cache
length and the classifier-free-guidance batch of the DiT.  Everything is a function of the
checkpoint's config (``weights.configs.MobileOConfig``).

    io = dit_io(ckpt.config)          # -> BundleIO: inputs, outputs, states, functions, ...
    io = bundle_io("dit", ckpt.config)

Read by the converter (each ``components/<name>.py`` builds its torch module to match and
puts the BundleIO in its ComponentSpec; ``convert.py`` types the Core ML inputs from it;
``cli.py`` records it), by the manifest writer (``ios_bridge.manifest``) and by the golden
generator (``tests/golden.py``).  Plain Python and numpy: importing this module pulls
neither torch nor coremltools, so ``ios_bridge`` may import it.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from weights.prompts import MAX_PROMPT_TOKENS

DTYPES = ("float16", "float32", "int32")
COMPONENT_NAMES = ("vision_encoder", "llm_prefill", "llm_decode", "mcp", "dit", "vae_decoder")  # pipeline order
COMPUTE_UNITS = ("all", "cpuOnly", "cpuAndGPU", "cpuAndNeuralEngine")  # Core ML's MLComputeUnits
# the compute units each bundle is converted and meant to run with: every module is written in
# the Neural Engine's layout (docs/deployment-notes.md section 1; Mobile-O's own app runs its
# fp32 DiT and VAE on cpuAndGPU instead, section 8)
COMPONENT_COMPUTE_UNITS = {
    "vision_encoder": "cpuAndNeuralEngine",
    "llm_prefill": "cpuAndNeuralEngine",
    "llm_decode": "cpuAndNeuralEngine",
    "mcp": "cpuAndNeuralEngine",
    "dit": "cpuAndNeuralEngine",
    "vae_decoder": "cpuAndNeuralEngine",
}
MINIMUM_OS = {"iOS": "18.0", "macOS": "15.0"}  # ML program with states / multifunction: iOS 18

LENGTH_STEP = 64  # enumerated sequence lengths: LENGTH_STEP * 2**i up to the prompt maximum
STATE_ALIGN = 32  # KV-cache length multiple (Neural Engine state dims; docs/deployment-notes.md section 2)
CFG_BATCH = 2  # DiT batch: [unconditional, conditional] for classifier-free guidance
DECODE_FUNCTIONS = ("decode", "prefill")  # llm_decode's functions; the first is the default
DECODE_INPUTS = {"decode": ("input_ids", "position"),  # llm_decode inputs per function, in order
                 "prefill": ("input_ids", "image_embeds", "image_offset", "position")}


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
        """Every allowed shape (the default first) -- for ct.EnumeratedShapes."""
        if not self.enumerated:
            return [self.shape]
        axes = sorted(self.enumerated)
        out = [self.shape]
        for combo in itertools.product(*(self.enumerated[a] for a in axes)):
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

    def __post_init__(self):
        if self.name not in COMPONENT_NAMES:
            raise ValueError(f"unknown component {self.name!r}; one of {COMPONENT_NAMES}")
        for k in ("inputs", "outputs", "states", "functions"):
            object.__setattr__(self, k, tuple(getattr(self, k)))
        check_function_io(self.name, self.functions, self.function_io, self.inputs, self.outputs)

    @property
    def compute_units(self) -> str:
        return COMPONENT_COMPUTE_UNITS[self.name]

    @property
    def minimum_os(self) -> dict[str, str]:
        return dict(MINIMUM_OS)


# ------------------------------------------------------------------ sizes


def sequence_lengths(config=None) -> tuple[int, ...]:
    """Token-sequence lengths the conditioning path (llm_prefill -> mcp -> dit) is converted
    for, as enumerated shapes: 64, 128, 256, 512 (= weights.prompts.MAX_PROMPT_TOKENS).  The
    app pads a prompt to the next length and masks the padding.  The first is the default."""
    out, n = [], LENGTH_STEP
    while n < MAX_PROMPT_TOKENS:
        out.append(n)
        n *= 2
    return tuple(out) + (MAX_PROMPT_TOKENS,)


def chunk_length(config=None) -> int:
    """Tokens per llm_decode "prefill" call: the shortest llm_prefill length (64)."""
    return sequence_lengths(config)[0]


def context_length(config) -> int:
    """llm_decode cache slots: the longest prompt plus the default answer length, rounded up
    to STATE_ALIGN."""
    n = MAX_PROMPT_TOKENS + config.defaults.max_new_tokens
    return -(-n // STATE_ALIGN) * STATE_ALIGN


def cache_shape(config) -> tuple[int, int, int, int]:
    """(layers, kv_heads * head_dim, 1, context_length) of each llm_decode cache state."""
    llm = config.llm
    return (llm.num_hidden_layers, llm.num_key_value_heads * llm.head_dim, 1, context_length(config))


def _enumerated(axis: int, lengths: tuple[int, ...]) -> dict[int, tuple[int, ...]] | None:
    return {axis: tuple(lengths)} if len(lengths) > 1 else None


# ------------------------------------------------------------------ components


def vision_encoder_io(config) -> BundleIO:
    """image (1, 3, S, S) in [0, 1] -> image_features (1, hidden, 1, N)."""
    s, n, hidden = config.vision.image_size, config.vision.num_tokens, config.llm.hidden_size
    return BundleIO("vision_encoder",
                    inputs=[TensorSpec("image", (1, 3, s, s), "float16", "B,3,H,W")],
                    outputs=[TensorSpec("image_features", (1, hidden, 1, n), "float16", "B,C,1,S")])


def llm_prefill_io(config) -> BundleIO:
    """A right-padded prompt of L tokens (L enumerated) -> the last K hidden states."""
    lengths = sequence_lengths(config)
    length, hidden, n, k = lengths[0], config.llm.hidden_size, config.vision.num_tokens, config.mcp.num_layers
    seq = {1: lengths}
    return BundleIO("llm_prefill",
                    inputs=[TensorSpec("input_ids", (1, length), "int32", "B,S", seq),
                            TensorSpec("attention_mask", (1, length), "float16", "B,S", seq),
                            TensorSpec("image_embeds", (1, hidden, 1, n), "float16", "B,C,1,N"),
                            TensorSpec("image_offset", (1,), "int32", "1")],
                    outputs=[TensorSpec("hidden_states", (k, hidden, 1, length), "float16", "K,C,1,S",
                                        {3: lengths})])


def llm_decode_io(config) -> BundleIO:
    """Two functions over two cache states: "decode" (one token -> logits, the default) and
    "prefill" (a chunk of chunk_length tokens, an image placed at image_offset)."""
    hidden, n, p, v = config.llm.hidden_size, config.vision.num_tokens, chunk_length(config), config.llm.vocab_size
    named = {"position": TensorSpec("position", (1,), "int32", "1"),
             "image_embeds": TensorSpec("image_embeds", (1, hidden, 1, n), "float16", "B,C,1,N"),
             "image_offset": TensorSpec("image_offset", (1,), "int32", "1")}
    length = {"decode": 1, "prefill": p}
    outputs = {"decode": [TensorSpec("logits", (1, v), "float16", "B,V")],
               "prefill": [TensorSpec("hidden_states", (1, hidden, 1, p), "float16", "B,C,1,S")]}
    function_io = {fn: {"inputs": [named.get(a) or TensorSpec(a, (1, length[fn]), "int32", "B,S")
                                   for a in DECODE_INPUTS[fn]],
                        "outputs": outputs[fn]} for fn in DECODE_FUNCTIONS}
    shape = cache_shape(config)
    default = function_io[DECODE_FUNCTIONS[0]]
    return BundleIO("llm_decode", inputs=default["inputs"], outputs=default["outputs"],
                    states=[TensorSpec(s, shape, "float16", "L,C,1,T") for s in ("key_cache", "value_cache")],
                    functions=DECODE_FUNCTIONS, function_io=function_io)


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
    """The CFG batch of latents, timesteps and conditioning -> velocity."""
    d = config.dit
    lengths = tuple(lengths or sequence_lengths(config))
    s, c, b = d.sample_size, d.in_channels, CFG_BATCH
    return BundleIO("dit",
                    inputs=[TensorSpec("latent", (b, c, s, s), "float16", "B,C,H,W"),
                            TensorSpec("timestep", (b,), "float32", "B"),
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
    "vision_encoder": vision_encoder_io, "llm_prefill": llm_prefill_io, "llm_decode": llm_decode_io,
    "mcp": mcp_io, "dit": dit_io, "vae_decoder": vae_decoder_io,
}
assert tuple(IO) == COMPONENT_NAMES == tuple(COMPONENT_COMPUTE_UNITS)
assert set(COMPONENT_COMPUTE_UNITS.values()) <= set(COMPUTE_UNITS)


def bundle_io(name: str, config) -> BundleIO:
    """The contract of component ``name`` for a checkpoint config, at the real sizes."""
    if name not in IO:
        raise ValueError(f"unknown component {name!r}; one of {COMPONENT_NAMES}")
    return IO[name](config)
