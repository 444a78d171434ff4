"""``python -m coreml_convert.lint DIR``: a static Neural-Engine report per bundle, without a Mac.

Core ML publishes no list of what the Neural Engine runs (github apple/coremltools issue
#1780), and ``MLComputePlan`` needs macOS.  This report reads each saved ML program (every
function) and classifies every non-constant op by named rules taken from public practice
(docs/deployment-notes.md sections 2-3; each rule below cites its source):

  eligible  nothing known keeps it off the Neural Engine;
  at_risk   may fall back to CPU/GPU (e.g. slices at runtime positions, range-flexible shapes);
  off       known to run off the Neural Engine (non-fp16 dtype, integer ops, dynamic gather,
            a dimension over 16,384, rank over 4, a weight format not documented for the
            bundle's compute units).

Allowed patterns, counted eligible and listed under ``allowed``: the integer ops that only
compute the begin/end of an in-place state write from an int32 position input, and that
``slice_update`` itself ("state-index", "state-write": Anemll's ``qwen_model.py`` and Apple's
stateful-model guide write the KV cache this way).  Reported beside the classes: outputs whose
last axis the Neural Engine pads ("last-axis"), each function's state traffic and cost
(GFLOPs, weight bytes, state bytes per call: :mod:`coreml_convert.mil_cost`) and each weight
compression format.  Bundle-level findings (a weight file over 1 GB, range-flexible inputs)
are listed beside.
Prints a table, writes ``DIR/<bundle>.lint.json`` (atomically) and, with ``--floor``, exits 1
when a bundle's eligible share is below it.  ``python -m coreml_convert`` runs it on each new
bundle and records :func:`summary` in the manifest.  A static reading: on macOS 14.4+ the
report also prints Core ML's own ``MLComputePlan`` (the device each op gets) beside it
(:mod:`coreml_convert.compute_plan`); elsewhere it says that it cannot.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections import Counter
from pathlib import Path

from weights.core.errors import MobileOError, run_cli

from weights.bundles.contract import MAX_DIMENSION, lint_report_name
from coreml_convert.mil_cost import SLICE_OPS, dtype_name

ELIGIBLE, AT_RISK, OFF = "eligible", "at_risk", "off"
# Rule "rank": rank <= 4.  The Neural Engine layout is 4-D (B, C, 1, S) (apple/ml-ane-transformers,
# "Deploying Transformers on the Apple Neural Engine", 2022; Anemll keeps every tensor 4-D);
# the coreai-models notes allow rank 5, but no bundle of ours needs it (deployment-notes s2).
MAX_RANK = 4
# Rule "last-axis" (reported, not a class): the Neural Engine lays the last axis out in 64-byte
# rows (32 fp16 values) and pads shorter or ragged ones (apple/coreai-models notes;
# deployment-notes s2: "last axis >= 32 fp16 values").  Decode's (1, C, 1, 1) activations
# are inherently one column wide; the figure is for comparing layouts, not a placement.
LAST_AXIS_ALIGN = 32
# Rule "compression": the weight formats documented per compute unit.  coremltools'
# "Performance" guide (docs-guides/source/opt-quantization-perf.md, opt-palettization-perf.md):
# on the Neural Engine, palettization (LUTs; per-grouped-channel from iOS 18) and per-channel
# linear int8 give their gains; per-block int4 gives its gains "when it is running on the GPU",
# and for the NE "it is recommended to use the per-channel scales option".  ml-stable-diffusion
# ships mixed-bit palettization for the NE; Anemll uses per-grouped-channel LUT4/LUT6.
ANE_FORMATS = {("lut", "per-tensor"), ("lut", "per-channel"), ("lut", "per-grouped-channel"),
               ("int8", "per-channel"), ("uint8", "per-channel"), ("int4", "per-channel")}
GPU_FORMATS = ANE_FORMATS | {("int4", "per-block"), ("uint4", "per-block"), ("int8", "per-block")}
ALLOWED_FORMATS = {"cpuAndNeuralEngine": ANE_FORMATS, "all": ANE_FORMATS,
                   "cpuAndGPU": GPU_FORMATS, "cpuOnly": GPU_FORMATS}
MAX_WEIGHT_FILE_BYTES = 1 << 30  # 1 GiB
CONSTANT_OPS = ("const",)  # constexpr_* weight decompression is counted with the constants


def is_constant(op_type: str) -> bool:
    return op_type in CONSTANT_OPS or op_type.startswith("constexpr")

# Rule "integer-op": integer arithmetic, comparisons, casts and index generation run off the
# Neural Engine -- community practice recorded in github apple/coremltools issue #1780 and
# Anemll's converter (github Anemll/Anemll, which moves them to the host); deployment-notes s2.
INTEGER_OPS = frozenset("""cast cumsum fill_like range_1d equal not_equal less less_equal greater greater_equal
    logical_and logical_or logical_xor logical_not select non_zero argsort topk reduce_argmax reduce_argmin
    floor_div mod shape""".split())
# Rule "dynamic-gather": gathers/scatters at runtime indices (embedding lookups) run off the
# Neural Engine; Anemll keeps the embedding outside the graph (deployment-notes s2).
GATHER_OPS = frozenset("gather gather_along_axis gather_nd scatter scatter_along_axis scatter_nd".split())
# Rule "dynamic-slice": slices whose begin/end come from the graph (not constants) -- the
# KV-cache-at-position pattern; Anemll uses it for state writes, but it is shape-dynamic work
# the compiler may place elsewhere: at risk (deployment-notes s2, "range-dynamic shapes").
# (SLICE_OPS: slice_by_index slice_by_size slice_update dynamic_slice, coreml_convert.mil_cost)

RULES = {
    "dtype": (OFF, "output dtype other than fp16: the Neural Engine computes fp16 only "
                   "(apple/coreai-models notes; deployment-notes s2)"),
    "integer-op": (OFF, "integer arithmetic / comparison / cast (coremltools issue #1780; Anemll)"),
    "dynamic-gather": (OFF, "gather/scatter at runtime indices (Anemll keeps embeddings outside)"),
    "dimension": (OFF, f"a dimension over {MAX_DIMENSION} (Anemll llama_model.py; deployment-notes s2)"),
    "rank": (OFF, f"tensor rank over {MAX_RANK} (ml-ane-transformers' 4-D layout; deployment-notes s2)"),
    "compression": (OFF, "a weight format not documented for the bundle's compute units "
                         "(coremltools opt-quantization-perf.md; per-block int4 is a GPU format)"),
    "dynamic-slice": (AT_RISK, "slice at runtime positions (shape-dynamic; deployment-notes s2)"),
    "flexible-shape": (AT_RISK, "symbolic dimension from a range-flexible input: only the default shape "
                                "runs on the Neural Engine (Apple Developer Forums thread 724930)"),
}
BUNDLE_RULES = {
    "weight-file-size": "a weight file over 1 GB: iOS loads at most about 1 GB per model file on the "
                        "Neural Engine unless weights are <= 6-bit (apple/ml-stable-diffusion README "
                        "--chunk-unet; the Anemll conversion guide; deployment-notes s2)",
    "range-flexible-input": "an input with a range-flexible shape (enumerate the shapes instead; Apple "
                            "Developer Forums thread 724930; deployment-notes s2)",
}


class LintError(MobileOError):
    """A folder or bundle the linter cannot read."""


def _walk(block):
    for op in block.operations:
        yield op
        for b in op.blocks:
            yield from _walk(b)


def _is_const(var) -> bool:
    return var.op is None and var.val is not None or (var.op is not None and (
        var.op.op_type == "const" or var.op.op_type.startswith("constexpr")))


def _dims(var) -> list:
    try:
        return list(var.shape)
    except Exception:
        return []


def _state_write(op, chain: set[int]) -> bool:
    """A ``slice_update`` of a state (its x read from the state chain, its result written back)."""
    return op.op_type == "slice_update" and id(op.inputs["x"]) in chain and any(
        c.op_type == "coreml_update_state" for c in op.outputs[0].child_ops)


def _state_chain(func) -> set[int]:
    chain = set()
    for op in _walk(func):
        if op.op_type == "read_state" or op.op_type == "coreml_update_state" or (
                op.op_type == "slice_update" and id(op.inputs["x"]) in chain):
            chain.add(id(op.outputs[0]))
    return chain


def classify(op, range_inputs: set[str], allowed: str | None = None) -> tuple[str, list[str]]:
    """(class, rules broken) of one non-constant op.  ``allowed``: the pattern ("state-index",
    "state-write") that lets this op's integer / runtime-slice nature pass."""
    broken = []
    outs = list(op.outputs)
    ins = [v for v in op.inputs.values() for v in (v if isinstance(v, (list, tuple)) else [v])]
    t = op.op_type
    if allowed == "state-index":
        pass
    elif t in INTEGER_OPS or any(dtype_name(o).startswith(("int", "uint", "bool")) for o in outs):
        broken.append("integer-op")
    elif any(dtype_name(o) != "fp16" for o in outs):
        broken.append("dtype")
    if t in GATHER_OPS and any(not _is_const(v) for k, v in op.inputs.items() if k == "indices"
                               for v in (v if isinstance(v, (list, tuple)) else [v])):
        broken.append("dynamic-gather")
    if t in SLICE_OPS and allowed != "state-write" and any(
            not _is_const(v) for k, v in op.inputs.items() if k in ("begin", "end", "size")):
        broken.append("dynamic-slice")
    shapes = [_dims(v) for v in outs + ins]
    if any(isinstance(d, int) and d > MAX_DIMENSION for s in shapes for d in s):
        broken.append("dimension")
    if any(len(s) > MAX_RANK for s in shapes):
        broken.append("rank")
    if range_inputs and any(not isinstance(d, int) for s in map(_dims, outs) for d in s):
        broken.append("flexible-shape")
    cls = OFF if any(RULES[r][0] == OFF for r in broken) else (AT_RISK if broken else ELIGIBLE)
    return cls, broken


def _function_inputs(model, fn: str):
    desc = model.get_spec().description
    inputs = desc.input
    for f in getattr(desc, "functions", []):
        if f.name == fn:
            inputs = f.input
    return inputs


def _range_inputs(model, fn: str) -> set[str]:
    """Inputs of function ``fn`` whose shape is range-flexible (not enumerated)."""
    out = set()
    for i in _function_inputs(model, fn):
        if i.type.WhichOneof("Type") == "multiArrayType" and \
                i.type.multiArrayType.WhichOneof("ShapeFlexibility") == "shapeRange":
            out.add(i.name)
    return out


def _default_shapes(model, fn: str) -> dict[str, tuple[int, ...]]:
    return {i.name: tuple(int(d) for d in i.type.multiArrayType.shape) for i in _function_inputs(model, fn)
            if i.type.WhichOneof("Type") == "multiArrayType"}


def bundle_compute_units(name: str | None) -> str:
    """The compute units a bundle is meant for: the component table's (weights.core.components)."""
    from weights.core.components import COMPONENTS

    comp = COMPONENTS.get(name or "")
    return comp.compute_units if comp is not None else "all"


def _allowed_patterns(func) -> dict[int, str]:
    from coreml_convert.mil_cost import state_index_ops

    chain = _state_chain(func)
    allowed = {i: "state-index" for i in state_index_ops(func)}
    for op in _walk(func):
        if _state_write(op, chain):
            allowed[id(op)] = "state-write"
    return allowed


def _last_axis_padded(op) -> int:
    """Outputs of ``op`` whose last axis is not a multiple of LAST_AXIS_ALIGN (padded by the NE)."""
    n = 0
    for o in op.outputs:
        dims = _dims(o)
        if dims and isinstance(dims[-1], int) and dims[-1] % LAST_AXIS_ALIGN:
            n += 1
    return n


def lint_function(model, fn: str, func, compute_units: str) -> dict:
    """One function's report: op histogram, classes, rules broken, allowed patterns, the
    last-axis count, compression formats and the cost per call."""
    from coreml_convert import mil_cost

    ranged = _range_inputs(model, fn)
    allowed = _allowed_patterns(func)
    hist, classes, rules, notes, padded = Counter(), Counter(), {}, Counter(), 0
    for op in _walk(func):
        if is_constant(op.op_type):
            continue
        hist[op.op_type] += 1
        pattern = allowed.get(id(op))
        cls, broken = classify(op, ranged, pattern)
        if pattern:
            notes[pattern] += 1
        classes[cls] += 1
        padded += _last_axis_padded(op)
        for r in broken:
            rules.setdefault(r, Counter())[op.op_type] += 1
    formats = Counter()
    ok = ALLOWED_FORMATS.get(compute_units, ANE_FORMATS)
    for op, f in mil_cost.compression_ops(func):
        key = (f["kind"], f["granularity"])
        formats[f"{f['kind']}{'' if f['kind'].startswith('int') else f['bits']} {f['granularity']}"] += 1
        if key not in ok and not (f["kind"] == "lut" and ("lut", f["granularity"]) in ok):
            rules.setdefault("compression", Counter())[op.op_type] += 1
            classes[OFF] += 1
            hist[op.op_type] += 1
    total = sum(classes.values())
    return {
        "ops": total, "histogram": dict(sorted(hist.items())),
        ELIGIBLE: classes[ELIGIBLE], AT_RISK: classes[AT_RISK], OFF: classes[OFF],
        "eligible_share": round(classes[ELIGIBLE] / total, 4) if total else 1.0,
        "rules": {r: dict(c) for r, c in sorted(rules.items())},
        "allowed": dict(sorted(notes.items())),
        "last_axis_padded_outputs": padded,
        "compression": dict(sorted(formats.items())),
        "cost": mil_cost.function_cost(func, _default_shapes(model, fn)),
        "range_flexible_inputs": sorted(ranged),
    }


def lint_bundle(path: str | Path, name: str | None = None, compute_units: str | None = None) -> dict:
    """The report of one .mlpackage: per function (:func:`lint_function`); bundle-level
    findings.  ``compute_units`` (default: the component table's for ``name``) decides which
    weight formats the "compression" rule allows."""
    import coremltools as ct

    from coreml_convert.mil_exec import load_program

    path = Path(path)
    if not path.exists():
        raise LintError(f"{path}: no such bundle.", fix="pass a folder of .mlpackage bundles.")
    name = name or path.name.removesuffix(".mlpackage")
    units = compute_units or bundle_compute_units(name)
    model = ct.models.MLModel(str(path), skip_model_load=True)
    program = load_program(model)
    functions = {fn: lint_function(model, fn, func, units) for fn, func in program.functions.items()}
    findings = []
    weights = path / "Data" / "com.apple.CoreML" / "weights"
    for f in sorted(weights.glob("*")) if weights.is_dir() else []:
        if f.stat().st_size > MAX_WEIGHT_FILE_BYTES:
            findings.append({"rule": "weight-file-size", "file": f.name, "bytes": f.stat().st_size})
    for fn, r in functions.items():
        for i in r["range_flexible_inputs"]:
            findings.append({"rule": "range-flexible-input", "function": fn, "input": i})
    weight_bytes = sum(f.stat().st_size for f in weights.glob("*")) if weights.is_dir() else 0
    return {"bundle": path.name, "name": name, "compute_units": units,
            "weight_bytes": weight_bytes, "functions": functions, "findings": findings}


def summary(report: dict) -> dict:
    """The manifest's record: totals over the functions, the worst function's eligible share,
    rule counts, bundle findings."""
    fns = report["functions"].values()
    rules = Counter()
    for f in fns:
        for r, c in f["rules"].items():
            rules[r] += sum(c.values())
    return {
        "ops": sum(f["ops"] for f in fns), ELIGIBLE: sum(f[ELIGIBLE] for f in fns),
        AT_RISK: sum(f[AT_RISK] for f in fns), OFF: sum(f[OFF] for f in fns),
        "eligible_share": min((f["eligible_share"] for f in fns), default=1.0),
        "rules": dict(sorted(rules.items())),
        "findings": sorted({f["rule"] for f in report["findings"]}),
        # weight formats (the largest count of each over the functions: they share weights)
        "compression": {k: max(f.get("compression", {}).get(k, 0) for f in fns)
                        for k in sorted({k for f in fns for k in f.get("compression", {})})},
        "compute_units": report.get("compute_units"),
        "max_state_write_bytes": max((f["cost"]["state_write_bytes"] for f in fns if "cost" in f), default=0),
    }


def format_table(reports: list[dict]) -> str:
    cols = ("bundle", "function", "ops", "eligible", "at risk", "off", "share", "rules broken")
    rows = []
    for rep in reports:
        for fn, f in rep["functions"].items():
            broken = ", ".join(f"{r} ({sum(c.values())}: {', '.join(sorted(c))})" for r, c in f["rules"].items())
            rows.append((rep["bundle"], fn, str(f["ops"]), str(f[ELIGIBLE]), str(f[AT_RISK]), str(f[OFF]),
                         f"{100 * f['eligible_share']:.1f}%", broken or "-"))
        for finding in rep["findings"]:
            rows.append((rep["bundle"], "(bundle)", "", "", "", "", "", f"{finding['rule']}: "
                         + ", ".join(f"{k}={v}" for k, v in finding.items() if k != "rule")))
    widths = [max(len(r[i]) for r in [cols, *rows]) for i in range(len(cols))]
    line = lambda r: "  ".join(c.ljust(w) if i in (0, 1, 7) else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
    return "\n".join([line(cols), "  ".join("-" * w for w in widths), *map(line, rows)])


COST_COLUMNS = ("bundle", "function", "GFLOPs", "weight MB", "state read KB", "state write KB", "whole-state writes")


def format_cost_table(reports: list[dict]) -> str:
    """Per bundle function: GFLOPs per call, weight bytes read per call, state bytes read and
    written per call (:func:`coreml_convert.mil_cost.function_cost`)."""
    rows = []
    for rep in reports:
        for fn, f in rep["functions"].items():
            c = f["cost"]
            rows.append((rep["bundle"], fn, f"{c['gflops']:.4g}", f"{c['weight_bytes'] / 1e6:.2f}",
                         f"{c['state_read_bytes'] / 1024:.1f}", f"{c['state_write_bytes'] / 1024:.1f}",
                         str(c["whole_state_writes"])))
    widths = [max(len(r[i]) for r in [COST_COLUMNS, *rows]) for i in range(len(COST_COLUMNS))]
    line = lambda r: "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
    return "\n".join([line(COST_COLUMNS), "  ".join("-" * w for w in widths), *map(line, rows)])


def print_compute_plans(reports: list[dict], bundles: list[Path]) -> None:
    """Core ML's own plan beside the static verdict (macOS 14.4+; elsewhere one line saying so);
    it is kept in each report as ``compute_plan``."""
    from coreml_convert.compute_plan import WHY_NOT, device_usage

    plans = [device_usage(b, skip=is_constant) for b in bundles]
    if all(p is None for p in plans):
        print(f"compute plan: {WHY_NOT}")
        return
    rows = [("bundle", "function", "ANE", "GPU", "CPU", "unknown")]
    for rep, plan in zip(reports, plans):
        rep["compute_plan"] = plan
        if plan is None or "error" in plan:
            rows.append((rep["bundle"], "-", "", "", "", (plan or {}).get("error", WHY_NOT)))
            continue
        for fn, c in plan["functions"].items():
            rows.append((rep["bundle"], fn, str(c["ane"]), str(c["gpu"]), str(c["cpu"]), str(c["unknown"])))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    print("\ncompute plan (Core ML's MLComputePlan: preferred device of each non-constant op)")
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)))


def write_report(report: dict, folder: Path) -> Path:
    """``folder/<name>.lint.json``: the report and its :func:`summary` (which the manifest
    records and ``mobileo-validate`` compares)."""
    report = {**report, "summary": summary(report)}
    path = folder / lint_report_name(report["name"])
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(report, f, indent=2)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m coreml_convert.lint", description=__doc__.split("\n\n")[0])
    p.add_argument("folder", help="folder of .mlpackage bundles (a coreml_convert --out folder)")
    p.add_argument("--floor", type=float, default=None,
                   help="exit 1 when a bundle's eligible share (its worst function) is below this, e.g. 0.98")

    def run() -> int:
        folder = Path(p.parse_args(argv).folder)
        floor = p.parse_args(argv).floor
        bundles = sorted(folder.glob("*.mlpackage")) if folder.is_dir() else []
        if not bundles:
            raise LintError(f"{folder}: no .mlpackage bundles.", fix="pass the --out folder of python -m coreml_convert.")
        reports = [lint_bundle(b) for b in bundles]
        print(format_table(reports))
        print("\ncost per call (from the MIL program)")
        print(format_cost_table(reports))
        print_compute_plans(reports, bundles)
        for r in reports:
            print(f"report: {write_report(r, folder)}")
        low = [r["name"] for r in reports if floor is not None and summary(r)["eligible_share"] < floor]
        if low:
            print(f"error: eligible share below {floor:.2%} in {', '.join(low)}. Fix: see the rules broken above.",
                  file=sys.stderr)
            return 1
        return 0

    raise SystemExit(run_cli(run) or 0)


if __name__ == "__main__":
    main()
