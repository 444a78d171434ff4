"""What Core ML itself plans for each op of a bundle (``MLComputePlan``, macOS 14.4+ only), to
print beside the static lint verdict (:mod:`coreml_convert.lint`).

``device_usage(bundle)`` compiles the bundle, asks Core ML for every ML-program op's preferred
compute device and counts them per function (constants aside):
``{"functions": {name: {"ane": n, "gpu": n,
"cpu": n, "unknown": n}}}``.  Elsewhere it returns ``None`` with the reason in :data:`WHY_NOT`.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path
from typing import Callable

__all__ = ["device_usage", "available", "WHY_NOT", "DEVICES"]

WHY_NOT = "MLComputePlan needs macOS 14.4 or later (this is a static verdict only)"
DEVICES = {"MLNeuralEngineComputeDevice": "ane", "MLGPUComputeDevice": "gpu", "MLCPUComputeDevice": "cpu"}


def available() -> bool:
    if sys.platform != "darwin":
        return False
    try:
        import coremltools.libcoremlpython  # noqa: F401  (the native part: built for macOS only)
    except ImportError:
        return False
    return True


def device_name(usage) -> str:
    """``MLComputePlanDeviceUsage`` -> "ane" | "gpu" | "cpu" | "unknown"."""
    if usage is None:
        return "unknown"
    return DEVICES.get(type(usage.preferred_compute_device).__name__, "unknown")


def count_devices(plan, functions: dict, skip: Callable[[str], bool]) -> dict:
    """Per function, how many ops (but those ``skip`` names) Core ML prefers to run on each device."""
    out = {}
    for name, fn in functions.items():
        counts = Counter({"ane": 0, "gpu": 0, "cpu": 0, "unknown": 0})
        for op in fn.block.operations:
            if not skip(op.operator_name):
                counts[device_name(plan.get_compute_device_usage_for_mlprogram_operation(op))] += 1
        out[name] = dict(counts)
    return out


def device_usage(bundle: str | Path, skip: Callable[[str], bool] = lambda op_type: op_type == "const") -> dict | None:
    """Core ML's own plan for ``bundle`` (every function), or None where it cannot be asked;
    ``skip(op_type)``: ops not counted (the lint passes its constants)."""
    if not available():
        return None
    import coremltools as ct
    from coremltools.models.compute_plan import MLComputePlan

    try:
        model = ct.models.MLModel(str(bundle), compute_units=ct.ComputeUnit.ALL)
        plan = MLComputePlan.load_from_path(model.get_compiled_path(), compute_units=ct.ComputeUnit.ALL)
        program = plan.model_structure.program
    except Exception as e:  # an older macOS, a bundle Core ML refuses: say so, do not fail the lint
        return {"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}
    if program is None:
        return {"error": "not an ML program"}
    return {"functions": count_devices(plan, program.functions, skip)}
