"""Trace a component's Neural-Engine torch module and convert it to an ML program.

    model = convert(spec, "fp16")                # ct.models.MLModel (iOS 18 target)
    model = compress(model, {"weights": "int4", "block_size": 32})   # or RECIPES[name]
    path  = save_atomic(model, out_dir, spec.file)   # out_dir/dit.mlpackage, never half-written

Default path (ml-stable-diffusion style): ``torch.jit.trace`` on the spec's example inputs,
then ``ct.convert(convert_to="mlprogram")`` with every input/output named and typed from the
spec's TensorSpecs (its bundle contract, weights/bundles/contract.py; enumerated dims become
``ct.EnumeratedShapes``) and the contract's compute units.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Callable

import numpy as np

from weights.core.components import ANE_MIXED, DEFAULT_TARGET, recipes
from weights.core.errors import MobileOError

from weights.bundles.contract import TensorSpec
from coreml_convert import memory
from coreml_convert.spec import PRECISIONS, ComponentSpec

IOS_TARGET = "iOS18"  # the contract's MINIMUM_OS (iOS 18.0 / macOS 15.0)
# contract.COMPUTE_UNITS -> coremltools' ct.ComputeUnit names
CT_COMPUTE_UNITS = {"all": "ALL", "cpuOnly": "CPU_ONLY", "cpuAndGPU": "CPU_AND_GPU",
                    "cpuAndNeuralEngine": "CPU_AND_NE"}
TMP_SUFFIX = ".tmp"  # temp folders in the output dir: ".<bundle>.<random>.tmp"


class ConversionError(MobileOError):
    """A component that cannot be traced, converted, compressed or saved."""


def io_specs(specs: list[TensorSpec], precision: str) -> list[TensorSpec]:
    """The TensorSpecs a bundle of this precision really has: fp32 bundles take and give
    float32 where the fp16 bundle uses float16 (int32 and float32 stay)."""
    _check_precision(precision)
    if precision == "fp16":
        return list(specs)
    return [replace(t, dtype="float32") if t.dtype == "float16" else t for t in specs]


def _check_precision(precision: str):
    if precision not in PRECISIONS:
        raise ConversionError(f"unknown precision {precision!r}.", fix=f"use one of {', '.join(PRECISIONS)}.")


def _ct_dtype(dtype: str):
    return {"float16": np.float16, "float32": np.float32, "int32": np.int32}[dtype]


def ct_input(t: TensorSpec):
    import coremltools as ct

    shape = ct.EnumeratedShapes(shapes=t.shapes(), default=t.shape) if t.enumerated else t.shape
    return ct.TensorType(name=t.name, shape=shape, dtype=_ct_dtype(t.dtype))


def ct_state(t: TensorSpec):
    import coremltools as ct

    return ct.StateType(wrapped_type=ct.TensorType(shape=t.shape, dtype=_ct_dtype(t.dtype)), name=t.name)


def torch_inputs(spec: ComponentSpec, inputs: dict[str, np.ndarray] | None = None) -> list:
    """Example inputs as torch tensors in the spec's input order (floats as float32)."""
    import torch

    inputs = spec.example_inputs if inputs is None else inputs
    out = []
    for t in spec.inputs:
        a = np.asarray(inputs[t.name])
        a = a.astype(np.float32) if a.dtype.kind == "f" else a.astype(np.int32)
        out.append(torch.from_numpy(np.ascontiguousarray(a)))
    return out


def trace(spec: ComponentSpec):
    import torch

    with torch.no_grad():
        return torch.jit.trace(spec.module.eval(), tuple(torch_inputs(spec)), check_trace=False, strict=False)


def convert(spec: ComponentSpec, precision: str = "fp16",
            op_selector: Callable | None = None):
    """The default conversion: trace, ``ct.convert`` to an iOS 18 ML program -> ct.models.MLModel.

    ``op_selector`` (fp16 only): coremltools' FP16ComputePrecision selector — return False
    for ops that must stay fp32 (e.g. the DiT's timestep sinusoid).
    """
    import coremltools as ct

    _check_precision(precision)
    traced = trace(spec)
    if precision == "fp32":
        compute_precision = ct.precision.FLOAT32
    elif op_selector is not None:
        compute_precision = ct.transform.FP16ComputePrecision(op_selector=op_selector)
    else:
        compute_precision = ct.precision.FLOAT16
    try:
        model = ct.convert(
            traced,
            convert_to="mlprogram",
            inputs=[ct_input(t) for t in io_specs(spec.inputs, precision)],
            outputs=[ct.TensorType(name=t.name, dtype=_ct_dtype(t.dtype)) for t in io_specs(spec.outputs, precision)],
            states=[ct_state(t) for t in io_specs(spec.states, precision)] or None,
            compute_precision=compute_precision,
            minimum_deployment_target=getattr(ct.target, IOS_TARGET),
            compute_units=getattr(ct.ComputeUnit, CT_COMPUTE_UNITS[spec.compute_units]),
            skip_model_load=True,
        )
    except MobileOError:
        raise
    except Exception as e:
        raise ConversionError(f"{spec.name}: coremltools could not convert the traced module "
                              f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}).",
                              fix="report it with the component name; run with --components to isolate it.") from e
    del traced
    return model


def release_program(model) -> None:
    """Drop a converted model's in-memory MIL program (a second copy of every weight): saving
    copies the package coremltools wrote, and compression and the gates read the saved
    program.  (Loading the saved program instead of keeping it would change the bundle:
    coremltools names some ops from process-wide counters that every load advances.)"""
    if hasattr(model, "_mil_program"):
        model._mil_program = None


def convert_spec(spec: ComponentSpec, precision: str = "fp16", compression: dict | None = None,
                 release_module: bool = False):
    """The spec's own conversion when it has one (it compresses per function), else
    :func:`convert` then :func:`compress`.  ``release_module``: :func:`convert_both`'s."""
    release = _releaser(spec) if release_module else None
    if spec.convert is not None:
        return spec.convert(precision, compression, release=release)
    model = convert(spec, precision)
    if release:
        release()
    return compress(model, compression)


def _releaser(spec: ComponentSpec) -> Callable[[], None]:
    """Drops the spec's torch module (called once it is traced and converted)."""
    def release():
        spec.module = None
        memory.release_free_memory()
    return release


def convert_both(spec: ComponentSpec, precision: str = "fp16", compression: dict | None = None,
                 release_module: bool = False):
    """(uncompressed model, compressed model or None), converting once: the uncompressed
    program is what gate 2 checks, the compressed one is measured against it (drift).
    ``release_module``: the spec's torch module is freed (``spec.module = None``) as soon as
    it is converted -- before compression (and the LLM's merge), which then work without it
    (the caller computed what it needs from the module before: ``gates.module_outputs``)."""
    if not compression or compression.get("weights") in (None, "fp16", "fp32"):
        return convert_spec(spec, precision, None, release_module), None
    release = _releaser(spec) if release_module else None
    if spec.convert is not None:
        return spec.convert(precision, compression, keep_plain=True, release=release)
    plain = convert(spec, precision)
    if release:
        release()
    memory.mark("compress")
    return plain, compress(plain, compression)


def load_saved(path: str | Path, compute_units: str):
    """A saved ``.mlpackage`` as a ``ct.models.MLModel`` to compress from disk (not compiled
    or loaded by Core ML; the compressed model gets ``compute_units``, a contract name)."""
    import coremltools as ct

    return ct.models.MLModel(str(path), skip_model_load=True,
                             compute_units=getattr(ct.ComputeUnit, CT_COMPUTE_UNITS[compute_units]))


def save_table(array: np.ndarray, out_dir: str | Path, file: str) -> Path:
    """Write ``array`` as ``out_dir/file`` atomically (temp + os.replace): uint8 arrays (packed
    int4 rows, ``contract.quantize_rows``) as their bytes, anything else as little-endian fp16."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{file}.", suffix=TMP_SUFFIX, dir=out_dir)
    try:
        with os.fdopen(fd, "wb") as f:
            a = np.asarray(array)
            f.write(np.ascontiguousarray(a).tobytes() if a.dtype == np.uint8
                    else np.ascontiguousarray(a, dtype="<f2").tobytes())
        os.replace(tmp, out_dir / file)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out_dir / file


# ------------------------------------------------------------------ compression

COMPRESSIONS = ("int4", "lut", "palettize", "int8", "mixed")
DEFAULT = "default"  # --compress default: each component's RECIPES entry

# The default recipe per component (iOS 18 constexpr ops; ``gather`` -- none left in the
# bundles, the LLM's embedding table lives outside as fp16 -- and weights under 2,048 elements
# (norms, biases) stay fp16).  Mixed bits: the two big transformers and the image decoder get
# LUT4/LUT6 per layer (else int8), the image encoder LUT6, the MCP int8.  Deterministic (no k-means):
# the LLM's functions compress identically and share one weight set after the merge.
# The recipes live in the component table (weights.core.components, ``Component.recipe``).
RECIPES: dict[str, dict] = recipes()  # the "ane" target's (TARGETS: "ane", "gpu")


def recipe_for(name: str, compression, target: str = DEFAULT_TARGET) -> dict | None:
    """The recipe a component gets: ``DEFAULT`` -> the component table's recipe for
    ``target``, None -> uncompressed, an explicit recipe (dict) -> that one for every component."""
    if compression == DEFAULT:
        return recipes(target).get(name)
    return compression


# ------------------------------------------------------------------ mixed-bit palettization

MIN_WEIGHT_ELEMENTS = 2048  # coremltools' default weight_threshold: smaller consts stay fp16


def uniform_lut_snr_db(w: np.ndarray, nbits: int, group_size: int) -> float:
    """The worst output channel's weight SNR (dB) under coremltools' uniform LUT palettization
    of ``w`` with one LUT per ``group_size`` channels of axis 0 (its ``compress_uniform``: a
    linear LUT from each group's min to max, fp16 entries, nearest index), computed exactly in
    numpy.  Per channel, not over the tensor: one outlier that stretches a group's LUT leaves
    the other channels of the group at a few levels, and the layer's output drifts there."""
    w = np.asarray(w, np.float32)
    n = w.shape[0]
    g = group_size if group_size and n % group_size == 0 else n
    groups = w.reshape(n // g, -1)
    lo, hi = groups.min(axis=1, keepdims=True), groups.max(axis=1, keepdims=True)
    levels = (1 << nbits) - 1
    span = np.where(hi > lo, hi - lo, 1.0)
    idx = np.round((groups - lo) / span * levels)
    lut_step = (hi - lo) / levels
    rebuilt = (idx * lut_step + lo).astype(np.float16).astype(np.float32)
    rows = w.reshape(n, -1)
    err = np.sum((rows - rebuilt.reshape(n, -1)) ** 2, axis=1)
    sig = np.sum(rows ** 2, axis=1)
    lost = err > 0
    if not lost.any():
        return float("inf")
    return float(np.min(10 * np.log10(np.maximum(sig[lost], 1e-30) / err[lost])))


def _weight_consts(model):
    """(name, value) of every weight const the compressor would take (>= 2,048 elements,
    float, not an embedding ``gather``'s), from the saved program as the compressor reads it
    (``_mil_program`` when a model still holds one)."""
    prog = getattr(model, "_mil_program", None)
    if prog is None:
        from coreml_convert.mil_exec import load_program

        prog = load_program(model)
    seen = set()
    for func in prog.functions.values():
        for op in func.find_ops(op_type="const"):
            val = op.outputs[0].val
            if op.name in seen or not isinstance(val, np.ndarray) or val.dtype.kind != "f" or val.size < MIN_WEIGHT_ELEMENTS:
                continue
            if any(c.op_type == "gather" for c in op.outputs[0].child_ops):
                continue
            seen.add(op.name)
            yield op.name, val


def lut_snr_db(w: np.ndarray, nbits: int, group_size: int, palette: str = "uniform") -> float:
    """The worst output channel's weight SNR (dB) under ``palette`` ("uniform": coremltools'
    min-max LUT, :func:`uniform_lut_snr_db`; "lloyd": ``palette.lloyd_lut``)."""
    if palette == "uniform":
        return uniform_lut_snr_db(w, nbits, group_size)
    from coreml_convert.palette import fake_quantize

    w = np.asarray(w).astype(np.float16).astype(np.float64)
    rows = w.reshape(w.shape[0], -1)
    err = np.sum((rows - fake_quantize(w, nbits, group_size, palette).reshape(rows.shape)) ** 2, axis=1)
    lost = err > 0
    if not lost.any():
        return float("inf")
    return float(np.min(10 * np.log10(np.maximum(np.sum(rows ** 2, axis=1)[lost], 1e-30) / err[lost])))


def planned_bits(name: str, recipe: dict) -> int:
    """The bits the output-drift pre-analysis gave the const ``name`` (``recipe["weight_bits"]``:
    {parameter name: bits} for the weights it promoted, matched against the const's name,
    which coremltools derives from the parameter's; ``unnamed_bits`` for consts named after no
    parameter -- the LLM's lm_head slices, ``op_<n>``; else ``default_bits``, or the fewest
    of ``bits`` when no pre-analysis ran)."""
    default = int(recipe.get("default_bits", min(recipe.get("bits", (4,)))))
    for key, bits in recipe.get("weight_bits", {}).items():
        if key.replace(".", "_") in name:
            return int(bits)
    return int(recipe.get("unnamed_bits", default)) if "weight" not in name else default


def mixed_plan(model, recipe: dict) -> dict[str, tuple]:
    """Per weight: ("lut", bits, snr, shape) for the fewest of ``recipe["bits"]`` whose
    measured weight SNR (``recipe["palette"]``'s LUTs) reaches ``recipe["min_snr_db"]``, else
    ("int8", 8, snr of the widest palette, shape): a per-channel int8 weight where a palette
    drifts too far.  A recipe whose bits were chosen by output drift (``select:
    "output_drift"``, the plan in ``weight_bits``, coreml_convert.sensitivity) -> ("lut",
    :func:`planned_bits`, None, shape)."""
    bits = sorted(int(b) for b in recipe.get("bits", (4, 6)))
    floor, group = float(recipe.get("min_snr_db", 14.0)), int(recipe.get("group_size", 16))
    palette, by_drift = recipe.get("palette", "uniform"), recipe.get("select") == "output_drift"
    plan = {}
    for name, val in _weight_consts(model):
        if by_drift:
            plan[name] = ("lut", planned_bits(name, recipe), None, val.shape)
            continue
        snr = None
        for b in bits:
            snr = lut_snr_db(val, b, group, palette)
            if snr >= floor:
                plan[name] = ("lut", b, snr, val.shape)
                break
        else:
            plan[name] = ("int8", 8, snr, val.shape)
    return plan


def compression_plan(model, recipe: dict | None) -> dict | None:
    """What :func:`compress` would measure on ``model``'s in-memory program before
    compressing (the mixed recipe's per-weight :func:`mixed_plan`; None for the others):
    taken while the converted model still holds its program, so that it can be compressed
    later from its saved package (``compress(saved, recipe, plan=...)``) without loading the
    program once more (coremltools names ops from process-wide counters that a load advances)."""
    if not recipe or recipe.get("weights") != "mixed":
        return None
    return mixed_plan(model, recipe)


def compress_mixed(model, recipe: dict, plan: dict | None = None):
    """Mixed-bit per-grouped-channel palettization (:func:`mixed_plan`, or ``plan`` measured
    before), then per-channel int8 for the weights no palette holds -- both formats the
    Neural Engine runs."""
    import coremltools.optimize.coreml as cto

    plan = mixed_plan(model, recipe) if plan is None else plan
    release_program(model)  # the plan was its last use
    group, palette = int(recipe.get("group_size", 16)), recipe.get("palette", "uniform")
    luts = {n: palettizer(b, group, palette, shape) for n, (kind, b, _, *shape) in plan.items() if kind == "lut"}
    ints = {n: cto.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8", granularity="per_channel")
            for n, (kind, *_) in plan.items() if kind == "int8"}
    if luts:
        model = cto.palettize_weights(model, cto.OptimizationConfig(global_config=None, op_name_configs=luts))
    if ints:
        model = cto.linear_quantize_weights(model, cto.OptimizationConfig(global_config=None, op_name_configs=ints))
    return model


def palettizer(nbits: int, group_size: int, palette: str = "uniform", shape=()):
    """coremltools' per-grouped-channel palettizer config: its ``uniform`` mode, or Lloyd-Max
    LUTs (``palette="lloyd"``, coreml_convert.palette) through its ``custom`` mode.  ``shape``
    (the weight's, when known): a group size that divides its output channels (Lloyd-Max
    recipes only: the uniform recipes keep their bytes, a weight whose channels the group size
    does not divide stays fp16 there)."""
    import coremltools.optimize.coreml as cto

    from coreml_convert.palette import group_size_for, lut_function

    if palette == "lloyd":
        group = group_size_for(int(shape[0][0]), group_size) if shape else group_size
        return cto.OpPalettizerConfig(mode="custom", lut_function=lut_function(nbits),
                                      granularity="per_grouped_channel", group_size=group)
    return cto.OpPalettizerConfig(mode="uniform", nbits=nbits, granularity="per_grouped_channel", group_size=group_size)


def compress(model, recipe: dict | None, plan: dict | None = None):
    """Post-training weight compression (coremltools.optimize.coreml, iOS 18 ops).

    recipe: None or {"weights": "fp16"} -> unchanged;
            {"weights": "int4", "block_size": 32} -> blockwise symmetric int4
            (``constexpr_blockwise_shift_scale``, one fp16 scale per block of input channels);
            {"weights": "lut", "nbits": 2..8, "group_size": 16?} -> uniform LUT palettization
            (``constexpr_lut_to_dense``; one LUT per group of output channels, or per tensor);
            {"weights": "palettize", "nbits": ..., "group_size": ...?} -> k-means LUTs (needs
            scikit-learn, not a dependency of this project);
            {"weights": "int8"} -> per-channel symmetric linear quantization.
    Embedding tables (``gather``) stay uncompressed.  Measure the gates after compressing.
    ``plan``: the mixed recipe's :func:`compression_plan`, measured before (else now).
    """
    if not recipe or recipe.get("weights") in (None, "fp16", "fp32"):
        return model
    import coremltools.optimize.coreml as cto

    kind = recipe["weights"]
    if kind == "mixed":
        return compress_mixed(model, recipe, plan)
    release_program(model)
    if kind in ("palettize", "lut"):
        mode = "uniform" if kind == "lut" else "kmeans"
        if mode == "kmeans":
            try:
                import sklearn  # noqa: F401  (coremltools' k-means)
            except ImportError:
                raise ConversionError("k-means palettization needs scikit-learn, which is not installed.",
                                      fix="pip install scikit-learn, or use lut<bits> (uniform LUTs) or int4.") from None
        kw = {"mode": mode, "nbits": int(recipe.get("nbits", 6))}
        if recipe.get("group_size"):
            kw.update(granularity="per_grouped_channel", group_size=int(recipe["group_size"]))
        if recipe.get("palette") == "lloyd":  # Lloyd-Max LUTs (coreml_convert.palette), no k-means restarts
            op_config = palettizer(kw["nbits"], int(recipe.get("group_size", 0)), "lloyd")
        else:
            op_config = cto.OpPalettizerConfig(**kw)
        config = cto.OptimizationConfig(global_config=op_config, op_type_configs={"gather": None})
        return cto.palettize_weights(model, config)
    if kind in ("int8", "int4"):
        if kind == "int8":
            op_config = cto.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8",
                                                    granularity="per_channel")
        else:
            op_config = cto.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int4", granularity="per_block",
                                                    block_size=int(recipe.get("block_size", 32)))
        config = cto.OptimizationConfig(global_config=op_config, op_type_configs={"gather": None})
        return cto.linear_quantize_weights(model, config)
    raise ConversionError(f"unknown compression {kind!r}.", fix=f"use one of {', '.join(COMPRESSIONS)} or fp16.")


def parse_compression(text: str | None):
    """CLI form -> a recipe: "default" (each component's RECIPES entry; also when not given),
    "none"/"fp16" (None), "int8", "int4" / "int4b32" (block size 32), "lut6" / "lut4g16"
    (uniform LUTs, group size 16), "lloyd4g16" (Lloyd-Max LUTs, coreml_convert.palette),
    "palettize6" / "palettize4g16" (k-means LUTs)."""
    if text is None or text == DEFAULT:
        return DEFAULT
    if text in ("none", "fp16"):
        return None
    if text == "int8":
        return {"weights": "int8"}
    if text == "mixed":
        return dict(ANE_MIXED)
    import re

    m = re.fullmatch(r"int4(?:b(\d+))?", text)
    if m:
        return {"weights": "int4", "block_size": int(m[1] or 32)}
    m = re.fullmatch(r"(palettize|lut|lloyd)(\d)(?:g(\d+))?", text)
    if not m or int(m[2]) not in (1, 2, 3, 4, 6, 8) or (m[3] and int(m[3]) < 1):
        raise ConversionError(f"unknown --compress value {text!r}.",
                              fix="use default, none, int8, int4[b<block>], lut<bits>[g<group>], "
                                  "lloyd<bits>[g<group>] or palettize<bits>[g<group>], e.g. lut6g16.")
    recipe = {"weights": "lut" if m[1] == "lloyd" else m[1], "nbits": int(m[2])}
    if m[1] == "lloyd":
        recipe["palette"] = "lloyd"
    if m[3]:
        recipe["group_size"] = int(m[3])
    return recipe


def recipe_name(recipe: dict | None) -> str:
    """The CLI spelling of a recipe ("int4b32", "lut6g16", "fp16")."""
    if not recipe or recipe.get("weights") in (None, "fp16", "fp32"):
        return "fp16"
    kind = recipe["weights"]
    if recipe.get("precision") == "fp32":
        return recipe_name({k: v for k, v in recipe.items() if k != "precision"}) + "-fp32"
    if kind == "int4":
        return f"int4b{recipe.get('block_size', 32)}"
    lloyd = "lloyd-" if recipe.get("palette") == "lloyd" else ""
    if kind == "mixed":
        bits = "/".join(str(b) for b in recipe.get("bits", (4, 6)))
        return (f"{lloyd}mixed{bits}g{recipe.get('group_size', 16)}"
                + ("-drift" if recipe.get("select") == "output_drift" else "+int8"))
    if kind in ("lut", "palettize"):
        name = "lloyd" if lloyd and kind == "lut" else kind
        return f"{name}{recipe.get('nbits', 6)}" + (f"g{recipe['group_size']}" if recipe.get("group_size") else "")
    return kind


# ------------------------------------------------------------------ atomic save


def save_atomic(model, out_dir: str | Path, file: str) -> Path:
    """Save ``model`` as ``out_dir/file`` (an .mlpackage folder) so that an interrupted run
    leaves nothing: written into a temp folder inside ``out_dir``, then ``os.replace``-d in.
    An existing bundle of that name is replaced only after the new one is complete."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / file
    tmp = Path(tempfile.mkdtemp(prefix=f".{file}.", suffix=TMP_SUFFIX, dir=out_dir))
    try:
        staged = tmp / file
        model.save(str(staged))
        if not staged.exists():
            raise ConversionError(f"coremltools wrote nothing for {file}.", fix="check free disk space in the output folder.")
        if staged.is_dir():
            reproducible_package(staged)
        if final.exists():  # os.replace cannot overwrite a non-empty folder: move the old one aside first
            os.replace(final, tmp / "previous")
        os.replace(staged, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


PACKAGE_MANIFEST = "Manifest.json"  # an .mlpackage's item list
SPEC_FILE = "model.mlmodel"


def reproducible_package(path: str | Path) -> None:
    """Make a saved ``.mlpackage`` the same bytes for the same program, run after run: the
    package's ``Manifest.json`` names its items by random UUIDs (coremltools' ``uuid4``) and
    protobuf writes the spec's maps (user metadata) in an order that varies between processes.
    Each item is renamed to a UUID derived from its path (``uuid5``) and the spec re-written
    with deterministic serialization -- the same message, so Core ML reads the same model, and
    the bundle's sha256 identifies its content (issue 27: hashes equal for the same recipe)."""
    import json
    import uuid

    from coremltools.proto import Model_pb2

    path = Path(path)
    manifest = path / PACKAGE_MANIFEST
    data = json.loads(manifest.read_text())
    names = {old: str(uuid.uuid5(uuid.NAMESPACE_URL, f"mlpackage:{item.get('path', old)}"))
             for old, item in data.get("itemInfoEntries", {}).items()}
    data["itemInfoEntries"] = {names[k]: v for k, v in sorted(data.get("itemInfoEntries", {}).items(),
                                                              key=lambda kv: names[kv[0]])}
    if data.get("rootModelIdentifier") in names:
        data["rootModelIdentifier"] = names[data["rootModelIdentifier"]]
    manifest.write_text(json.dumps(data, indent=4, sort_keys=True) + "\n")
    for item in data["itemInfoEntries"].values():
        spec_path = path / "Data" / item.get("path", "")
        if spec_path.name == SPEC_FILE and spec_path.is_file():
            spec = Model_pb2.Model()
            spec.ParseFromString(spec_path.read_bytes())
            spec_path.write_bytes(spec.SerializeToString(deterministic=True))


def leftover_temp_folders(out_dir: str | Path) -> list[Path]:
    """Temp folders an interrupted save left (a crash can still leave one: the CLI removes them)."""
    out_dir = Path(out_dir)
    return sorted(p for p in out_dir.glob(f".*{TMP_SUFFIX}")) if out_dir.is_dir() else []
