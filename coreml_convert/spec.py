"""What every Core ML component declares: its I/O tensors, its Neural-Engine torch module,
its upstream reference, and what a conversion produced.

    spec = components.dit.build_spec(ckpt)      # -> ComponentSpec
    model = convert.convert(spec, "fp16")         # -> ct.models.MLModel
    result = ConversionResult(...)                # what the CLI and the manifest record

Shapes and layouts are the bundle's public contract with the Swift package: the manifest
carries ``TensorSpec.to_dict()`` for every input, output and state, and for a multifunction
bundle each function's inputs and outputs (``function_io``; ``inputs`` / ``outputs`` are
the default function's, ``functions[0]``).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

if TYPE_CHECKING:  # torch / coremltools are only needed when converting
    import coremltools as ct
    import torch

DTYPES = ("float16", "float32", "int32")
COMPONENT_NAMES = ("vision_encoder", "llm_prefill", "llm_decode", "mcp", "dit", "vae_decoder")
COMPUTE_UNITS = ("all", "cpuOnly", "cpuAndGPU", "cpuAndNeuralEngine")
PRECISIONS = ("fp16", "fp32")


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
        """Every allowed shape (the default first) — for ct.EnumeratedShapes."""
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


@dataclass
class ComponentSpec:
    name: str  # one of COMPONENT_NAMES
    module: "torch.nn.Module"  # Neural-Engine layout, fp32, eval(), weights via weights/
    example_inputs: dict[str, np.ndarray]  # keyed by input name, ANE layout
    reference: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]
    # the UPSTREAM model on the same inputs, outputs keyed and laid out like `outputs` -> gate 1
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    states: list[TensorSpec] = field(default_factory=list)
    functions: tuple[str, ...] = ("main",)
    compute_units: str = "cpuAndNeuralEngine"
    minimum_os: dict[str, str] = field(default_factory=lambda: {"iOS": "18.0", "macOS": "15.0"})
    convert: Callable[[str], "ct.models.MLModel"] | None = None  # precision -> model; None = default
    program_check: Callable[[str], dict[str, np.ndarray]] | None = None
    # path of the saved .mlpackage -> outputs from executing its MIL program (gate 2);
    # None = default (run "main" on example_inputs with coreml_convert.mil_exec)
    function_io: FunctionIO = field(default_factory=dict)
    # multifunction bundles: every function's I/O ({} for single-function components)

    def __post_init__(self):
        if self.compute_units not in COMPUTE_UNITS:
            raise ValueError(f"{self.name}: compute_units {self.compute_units!r} not in {COMPUTE_UNITS}")
        check_function_io(self.name, self.functions, self.function_io, self.inputs, self.outputs)

    @property
    def file(self) -> str:
        return f"{self.name}.mlpackage"


@dataclass
class ConversionResult:
    name: str
    file: str  # bundle path relative to the output folder, e.g. "dit.mlpackage"
    bytes: int
    sha256: str  # ios_bridge.hashing.bundle_sha256(path)
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    states: list[TensorSpec]
    functions: tuple[str, ...]
    compute_units: str
    minimum_os: dict[str, str]
    compression: dict  # {"precision": "fp16", "weights": "fp16"} or a palettization recipe
    gates: dict[str, float]  # {"reference_psnr_db": ..., "program_psnr_db": ...}
    seconds: float
    peak_rss_mb: float
    function_io: FunctionIO = field(default_factory=dict)  # as ComponentSpec.function_io

    def to_dict(self) -> dict[str, Any]:
        d = {
            "name": self.name, "file": self.file, "bytes": int(self.bytes), "sha256": self.sha256,
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
            "states": [t.to_dict() for t in self.states],
            "functions": list(self.functions), "compute_units": self.compute_units,
            "minimum_os": dict(self.minimum_os), "compression": dict(self.compression),
            "gates": {k: _gate_float(v) for k, v in self.gates.items()},
            "seconds": round(float(self.seconds), 3), "peak_rss_mb": round(float(self.peak_rss_mb), 1),
        }
        if self.function_io:
            d["function_io"] = {fn: {k: [t.to_dict() for t in io[k]] for k in ("inputs", "outputs")}
                                for fn, io in self.function_io.items()}
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ConversionResult":
        return cls(
            name=d["name"], file=d["file"], bytes=d["bytes"], sha256=d["sha256"],
            inputs=[TensorSpec.from_dict(t) for t in d["inputs"]],
            outputs=[TensorSpec.from_dict(t) for t in d["outputs"]],
            states=[TensorSpec.from_dict(t) for t in d.get("states", [])],
            functions=tuple(d["functions"]), compute_units=d["compute_units"],
            minimum_os=d["minimum_os"], compression=d["compression"],
            gates={k: float(v) for k, v in d["gates"].items()},
            seconds=d["seconds"], peak_rss_mb=d["peak_rss_mb"],
            function_io={fn: {k: [TensorSpec.from_dict(t) for t in io[k]] for k in ("inputs", "outputs")}
                         for fn, io in d.get("function_io", {}).items()},
        )


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


def _gate_float(v: float) -> float:
    """PSNR rounded to 0.01 dB; inf (identical outputs) stays inf (the manifest writer
    spells non-finite numbers as strings; float("inf") reads them back)."""
    v = float(v)
    return round(v, 2) if np.isfinite(v) else v


# ------------------------------------------------------------------ shared I/O facts

LENGTH_STEP = 64  # enumerated sequence lengths: LENGTH_STEP * 2**i up to the prompt maximum


def sequence_lengths(config) -> tuple[int, ...]:
    """Token-sequence lengths the conditioning path (llm_prefill -> mcp -> dit) is converted
    for, as enumerated shapes: 64, 128, 256, 512 (= weights.prompts.MAX_PROMPT_TOKENS).  The
    app pads a prompt to the next length and masks the padding.  The first is the default."""
    from weights.prompts import MAX_PROMPT_TOKENS

    out, n = [], LENGTH_STEP
    while n < MAX_PROMPT_TOKENS:
        out.append(n)
        n *= 2
    return tuple(out) + (MAX_PROMPT_TOKENS,)
