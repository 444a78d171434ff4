"""The two parity gates every converted component must pass (runnable on Linux).

  gate 1  our Neural-Engine torch module vs the upstream reference (diffusers / transformers /
          timm / weights.references.mcp), fp32, on the spec's example inputs: PSNR >= 60 dB;
  gate 2  the saved bundle's MIL program, executed on numpy (coreml_convert.mil_exec), vs the
          torch module: PSNR >= 35 dB.  Unknown ops raise; they never pass.
A compressed bundle (``--compress``, default: each component's recipe, convert.RECIPES):
gate 2 runs on the uncompressed fp16 program, and the compressed program, run the same way,
is measured against it ("drift", PSNR in dB; floor DRIFT_MIN_DB catches a broken
decompression, not a quality target -- random test weights make the values indicative).
On macOS the bundle also runs through ``MLModel.predict`` (same threshold as gate 2); on
other systems that check is skipped with a reason.  PSNR = 20 log10(max|ref| / RMSE)
(coreml_convert.metrics.psnr); a component's gate value is the minimum over its outputs.
"""

from __future__ import annotations

import math
import platform
from dataclasses import dataclass

import numpy as np

from coreml_convert.convert import CT_COMPUTE_UNITS, io_specs, torch_inputs
from coreml_convert.spec import ComponentSpec

GATE1_MIN_DB = 60.0
GATE2_MIN_DB = 35.0
FP16_MAX = 65504.0  # the largest finite fp16 value
DRIFT_MIN_DB = 15.0  # compressed program vs the uncompressed one (4-bit weights included)


def torch_outputs(spec: ComponentSpec, inputs: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """The Neural-Engine torch module on ``inputs`` (default: the examples), keyed by output name."""
    import torch

    with torch.no_grad():
        out = spec.module(*torch_inputs(spec, inputs))
    if isinstance(out, torch.Tensor):
        out = (out,)
    if isinstance(out, dict):
        return {k: v.float().numpy() for k, v in out.items()}
    if len(out) != len(spec.outputs):
        raise ValueError(f"{spec.name}: module returned {len(out)} outputs, spec declares {len(spec.outputs)}")
    return {t.name: o.float().numpy() for t, o in zip(spec.outputs, out)}


def compare(reference: dict[str, np.ndarray], test: dict[str, np.ndarray]) -> dict[str, float]:
    """PSNR per output named in ``reference``."""
    from coreml_convert.metrics import psnr

    missing = sorted(set(reference) - set(test))
    if missing:
        raise ValueError(f"outputs {missing} are missing (got {sorted(test)})")
    return {k: psnr(reference[k], np.asarray(test[k], np.float32)) for k in reference}


def _min(values: dict[str, float]) -> float:
    return min(values.values()) if values else math.nan


def gate1(spec: ComponentSpec) -> dict[str, float]:
    """PSNR per output of the torch module against the upstream reference (fp32)."""
    return compare(spec.reference(spec.example_inputs), torch_outputs(spec))


def program_inputs(spec: ComponentSpec, precision: str) -> dict[str, np.ndarray]:
    """The example inputs in the bundle's input dtypes (fp16 bundles take fp16)."""
    dtypes = {t.name: t.np_dtype for t in io_specs(spec.inputs, precision)}
    return {k: np.asarray(v).astype(dtypes.get(k, np.asarray(v).dtype)) for k, v in spec.example_inputs.items()}


def program_outputs(spec: ComponentSpec, path, precision: str = "fp16") -> dict[str, np.ndarray]:
    """The saved program's outputs (numpy MIL execution) on the example inputs."""
    from coreml_convert.mil_exec import run_program

    if spec.program_check is not None:
        return spec.program_check(str(path))
    inputs = program_inputs(spec, precision)
    return run_program(str(path), {t.name: inputs[t.name] for t in spec.inputs}, "main")


def module_outputs(spec: ComponentSpec, precision: str = "fp16") -> dict[str, np.ndarray]:
    """The torch module's side of gate 2: its outputs on the program's (dtype-rounded) inputs.
    The converter computes them before converting, so the module can be freed once traced."""
    return torch_outputs(spec, program_inputs(spec, precision))


def gate2(spec: ComponentSpec, path, precision: str = "fp16",
          torch_out: dict[str, np.ndarray] | None = None) -> dict[str, float]:
    """PSNR per output of the saved program (numpy MIL execution) against the torch module,
    both fed the same (dtype-rounded) inputs (``torch_out``: the module's, computed before)."""
    torch_out = module_outputs(spec, precision) if torch_out is None else torch_out
    return compare(torch_out, program_outputs(spec, path, precision))


def predict_check(spec: ComponentSpec, path, precision: str = "fp16",
                  expected: dict[str, np.ndarray] | None = None) -> tuple[dict[str, float] | None, str]:
    """``MLModel.predict`` vs the torch module (or ``expected``: a compressed bundle's own
    program outputs) on macOS; elsewhere (None, reason)."""
    if platform.system() != "Darwin":
        return None, f"MLModel.predict needs macOS (this is {platform.system()}); the MIL program gate ran instead"
    if spec.states or len(spec.functions) > 1:
        return None, "stateful / multifunction bundles are checked through their program_check"
    import coremltools as ct

    inputs = program_inputs(spec, precision)
    units = getattr(ct.ComputeUnit, CT_COMPUTE_UNITS[spec.compute_units])  # the contract's
    model = ct.models.MLModel(str(path), compute_units=units)
    out = model.predict({t.name: inputs[t.name] for t in spec.inputs})
    reference = torch_outputs(spec, inputs) if expected is None else expected
    return compare(reference, out), f"ran MLModel.predict ({spec.compute_units})"


@dataclass
class GateReport:
    reference: dict[str, float]  # gate 1 per output
    program: dict[str, float]  # gate 2 per output
    predict: dict[str, float] | None = None
    predict_note: str = ""
    drift: dict[str, float] | None = None  # compressed program vs the uncompressed one, per output
    compressed: dict[str, float] | None = None  # compressed program vs the torch module, per output
    # the largest |activation| the gated (uncompressed) program computed on the example inputs:
    # next to fp16's 65,504, what a device run with real weights can be read against
    max_abs_activation: float | None = None

    @property
    def drift_psnr_db(self) -> float | None:
        return None if self.drift is None else _min(self.drift)

    @property
    def compressed_psnr_db(self) -> float | None:
        return None if self.compressed is None else _min(self.compressed)

    @property
    def reference_psnr_db(self) -> float:
        return _min(self.reference)

    @property
    def program_psnr_db(self) -> float:
        return _min(self.program)

    @property
    def failures(self) -> list[str]:
        out = []
        if not self.reference_psnr_db >= GATE1_MIN_DB:
            out.append(f"gate 1 (vs reference) {self.reference_psnr_db:.1f} dB < {GATE1_MIN_DB:.0f} dB")
        if not self.program_psnr_db >= GATE2_MIN_DB:
            out.append(f"gate 2 (program) {self.program_psnr_db:.1f} dB < {GATE2_MIN_DB:.0f} dB")
        if self.predict is not None and not _min(self.predict) >= GATE2_MIN_DB:
            out.append(f"MLModel.predict {_min(self.predict):.1f} dB < {GATE2_MIN_DB:.0f} dB")
        if self.drift is not None and not self.drift_psnr_db >= DRIFT_MIN_DB:
            out.append(f"drift (compressed vs fp16 program) {self.drift_psnr_db:.1f} dB < {DRIFT_MIN_DB:.0f} dB")
        return out

    @property
    def passed(self) -> bool:
        return not self.failures

    def as_gates(self) -> dict[str, float]:
        g = {"reference_psnr_db": self.reference_psnr_db, "program_psnr_db": self.program_psnr_db}
        if self.predict is not None:
            g["predict_psnr_db"] = _min(self.predict)
        if self.max_abs_activation is not None:
            g["max_abs_activation"] = self.max_abs_activation
            g["fp16_max"] = FP16_MAX
        return g


def run_gates(spec: ComponentSpec, path, precision: str = "fp16",
              reference: dict[str, float] | None = None, plain_path=None,
              torch_out: dict[str, np.ndarray] | None = None) -> GateReport:
    """Both gates (gate 1 reused when already computed) plus the macOS predict check.

    ``plain_path``: the uncompressed program of a compressed bundle ``path``; gate 2 then runs
    on it, and the bundle's program is measured against it (drift) and against the module.
    ``torch_out``: :func:`module_outputs`, computed before (the module is then not needed)."""
    from coreml_convert.mil_exec import track_activations

    ref = gate1(spec) if reference is None else reference
    torch_out = module_outputs(spec, precision) if torch_out is None else torch_out
    if plain_path is None:
        with track_activations() as peak:
            prog = gate2(spec, path, precision, torch_out)
        drift = compressed = squeezed = None
    else:
        with track_activations() as peak:
            plain = program_outputs(spec, plain_path, precision)
        prog = compare(torch_out, plain)
        squeezed = program_outputs(spec, path, precision)
        drift = compare({k: np.asarray(v, np.float32) for k, v in plain.items() if k in torch_out}, squeezed)
        compressed = compare(torch_out, squeezed)
    pred, note = predict_check(spec, path, precision, expected=torch_out if squeezed is None else squeezed)
    return GateReport(ref, prog, pred, note, drift, compressed, max_abs_activation=peak.value)
