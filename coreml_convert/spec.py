"""What the converter works with per component, and what a conversion produced.

    spec = components.dit.build_spec(ckpt)      # -> ComponentSpec
    model = convert.convert(spec, "fp16")         # -> ct.models.MLModel
    result = ConversionResult(...)                # what the CLI and the manifest record

A ComponentSpec pairs a component's Neural-Engine torch module, example inputs and upstream
reference with its bundle contract (``io``: a ``contract.BundleIO`` -- tensor names, shapes,
layouts, functions, compute units), which is defined once in ``weights/bundles/contract.py``.
The manifest carries ``TensorSpec.to_dict()`` for every input, output and state, and for a
multifunction bundle each function's inputs and outputs (``function_io``; ``inputs`` /
``outputs`` are the default function's, ``functions[0]``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from weights.bundles.contract import BundleIO, FunctionIO, TensorSpec

if TYPE_CHECKING:  # torch / coremltools are only needed when converting
    import coremltools as ct
    import torch

PRECISIONS = ("fp16", "fp32")


@dataclass
class ComponentSpec:
    module: "torch.nn.Module"  # Neural-Engine layout, fp32, eval(), weights via weights/
    example_inputs: dict[str, np.ndarray]  # keyed by input name, ANE layout
    reference: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]
    # the UPSTREAM model on the same inputs, outputs keyed and laid out like `outputs` -> gate 1
    io: BundleIO  # the bundle contract (weights.bundles.contract)
    convert: Callable[[str, dict | None], "ct.models.MLModel"] | None = None
    # (precision, compression recipe) -> the compressed model; None = default (convert.convert
    # then convert.compress)
    program_check: Callable[[str], dict[str, np.ndarray]] | None = None
    # path of the saved .mlpackage -> outputs from executing its MIL program (gate 2);
    # None = default (run "main" on example_inputs with coreml_convert.mil_exec)
    files: dict[str, np.ndarray] = field(default_factory=dict)
    # tables the app reads beside the bundle (file name -> array: uint8 = packed int4 rows,
    # contract.quantize_rows; else written as little-endian fp16), e.g. the LLM's token
    # embeddings (contract.EMBEDDINGS_FILE)
    compression_facts: dict = field(default_factory=dict)
    # what the conversion measured to fill in its recipe (the LLM's output-drift plan, issue 22):
    # added to the manifest's ``compression`` object beside the recipe

    # the contract's facts, read through
    name = property(lambda self: self.io.name)
    inputs = property(lambda self: self.io.inputs)
    outputs = property(lambda self: self.io.outputs)
    states = property(lambda self: self.io.states)
    functions = property(lambda self: self.io.functions)
    function_io = property(lambda self: self.io.function_io)
    compute_units = property(lambda self: self.io.compute_units)
    minimum_os = property(lambda self: self.io.minimum_os)

    @property
    def file(self) -> str:
        return f"{self.name}.mlpackage"


@dataclass
class ConversionResult:
    name: str
    file: str  # bundle path relative to the output folder, e.g. "dit.mlpackage"
    bytes: int
    sha256: str  # weights.bundles.hashing.bundle_sha256(path)
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
    files: list[dict] = field(default_factory=list)  # [{file, sha256, bytes, shape, dtype}] beside the bundle
    lint: dict = field(default_factory=dict)  # coreml_convert.lint summary of the bundle
    stages: list[dict] = field(default_factory=list)
    # where the memory went: [{stage, seconds, peak_rss_mb, rss_mb}] (coreml_convert.memory);
    # peak_rss_mb is the highest of them, the component's own peak

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
        if self.files:
            d["files"] = [dict(f) for f in self.files]
        if self.lint:
            d["lint"] = dict(self.lint)
        if self.stages:
            d["stages"] = [dict(s) for s in self.stages]
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
            files=[dict(f) for f in d.get("files", [])], lint=dict(d.get("lint", {})),
            stages=[dict(s) for s in d.get("stages", [])],
        )


def _gate_float(v: float) -> float:
    """PSNR rounded to 0.01 dB; inf (identical outputs) stays inf (the manifest writer
    spells non-finite numbers as strings; float("inf") reads them back)."""
    v = float(v)
    return round(v, 2) if np.isfinite(v) else v


def reference_first(build: Callable[[], Any], forward: Callable[[Any, dict], dict[str, np.ndarray]],
                    example: dict[str, np.ndarray]) -> Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]:
    """Run the upstream reference (``build()`` -> model, ``forward(model, inputs)``) on the
    example inputs now, then free it, so the reference and our torch module are never in
    memory together (gate 1 compares the stored outputs).  The returned ``reference(inputs)``
    gives those outputs for the example inputs and builds the model again for any other."""
    import gc

    from coreml_convert import memory

    memory.mark("reference")
    model = build()
    expected = forward(model, example)
    del model
    gc.collect()
    memory.mark("module")  # what the component loads next: its own torch module

    def reference(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if inputs.keys() == example.keys() and all(np.array_equal(inputs[k], example[k]) for k in example):
            return {k: np.array(v, copy=True) for k, v in expected.items()}
        return forward(build(), inputs)

    return reference
