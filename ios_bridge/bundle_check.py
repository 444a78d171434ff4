"""The manifest against the bundles' own specs (no prediction): every field the Swift side
consumes (``ios_bridge/swift/Sources/MobileO``: ``Manifest.swift``, ``CoreMLRunner.swift``).

Per component, from ``<bundle>.mlpackage/Data/com.apple.CoreML/model.mlmodel`` (read with
coremltools' protobuf, ``coremltools.models.utils.load_spec``; no model is loaded):

* functions and the default function; each function's inputs and outputs (names, default
  shapes, dtypes, enumerated shapes) and the states (names, shapes, dtypes);
* the spec version against ``minimum_os`` (Core ML 8 = iOS 18 / macOS 15: states and
  multifunction);
* the stamp the converter wrote into the spec's user-defined metadata (:data:`STAMP`):
  component name, target, compute units, recipe, and the host-input constants (RoPE theta,
  head dim, context and chunk lengths, mask bias, timestep features) -- Swift computes the
  bundles' inputs from those, so a manifest that disagrees feeds the bundle wrong inputs;
* the host facts against the shapes (context length = the cache's slots and the decode
  bias's keys, chunk length = the prefill width, head dim = cos/sin rows and the cache's last
  axis);
* the lint summary against ``<name>.lint.json`` beside the bundle.

And the export as a whole: no components, or a component the pipeline needs missing from a
manifest that does not declare itself partial (``export.partial``), is refused.
"""

from __future__ import annotations

import json
from pathlib import Path

from weights.bundles import contract
from weights.core import components

STAMP = "mobileo."  # user-defined metadata keys the converter writes (coreml_convert.cli.stamp)
DTYPES = {65552: "float16", 65568: "float32", 131104: "int32"}  # ArrayFeatureType.ArrayDataType
# Core ML specification version -> the OS it needs (coremltools' _SPECIFICATION_VERSION table)
SPEC_MIN_OS = {9: {"iOS": "18.0", "macOS": "15.0"}, 8: {"iOS": "17.0", "macOS": "14.0"},
               7: {"iOS": "16.0", "macOS": "13.0"}, 6: {"iOS": "15.0", "macOS": "12.0"}}


def load_spec(path: Path):
    """The bundle's protobuf spec (coremltools; its import-time notices about torch,
    scikit-learn and the missing native runtime are silenced)."""
    import contextlib
    import io
    import logging

    quiet = logging.getLogger("coremltools")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
            from coremltools.models.utils import load_spec as _load
    finally:
        quiet.setLevel(level)
    return _load(str(path))


def _array(feature) -> dict:
    t = feature.type
    kind = t.WhichOneof("Type")
    arr = t.stateType.arrayType if kind == "stateType" else t.multiArrayType
    out = {"shape": [int(d) for d in arr.shape], "dtype": DTYPES.get(arr.dataType, str(arr.dataType))}
    if kind == "multiArrayType" and arr.WhichOneof("ShapeFlexibility") == "enumeratedShapes":
        out["shapes"] = sorted(tuple(int(d) for d in s.shape) for s in arr.enumeratedShapes.shapes)
    return out


def spec_functions(spec) -> dict[str, dict]:
    """function -> {"inputs": {name: array}, "outputs": {...}, "states": {...}} (ordered)."""
    desc = spec.description
    funcs = list(desc.functions) or [desc]
    names = [f.name for f in desc.functions] or ["main"]
    return {n: {"inputs": {i.name: _array(i) for i in f.input}, "outputs": {o.name: _array(o) for o in f.output},
                "states": {s.name: _array(s) for s in f.state}} for n, f in zip(names, funcs)}


def _manifest_shapes(t: dict) -> list[tuple[int, ...]]:
    spec = contract.TensorSpec.from_dict(t)
    return sorted(spec.shapes())


def _tensor_problems(what: str, want: list[dict], have: dict[str, dict], shapes: bool = True,
                     enumerated: bool = True) -> list[str]:
    """``enumerated``: compare the enumerated shapes too (inputs; an output's spec holds its
    default shape only)."""
    out = []
    names = [t["name"] for t in want]
    if sorted(names) != sorted(have):
        return [f"{what}: the manifest lists {names} but the bundle has {list(have)}."]
    for t in want:
        h = have[t["name"]]
        if t["dtype"] != h["dtype"]:
            out.append(f"{what} {t['name']!r}: dtype {t['dtype']} in the manifest, {h['dtype']} in the bundle.")
        if shapes and h["shape"] and list(t["shape"]) != h["shape"]:
            out.append(f"{what} {t['name']!r}: shape {t['shape']} in the manifest, {h['shape']} in the bundle.")
        if shapes and "shapes" in h and _manifest_shapes(t) != h["shapes"]:
            out.append(f"{what} {t['name']!r}: enumerated shapes {_manifest_shapes(t)} in the manifest, "
                       f"{h['shapes']} in the bundle.")
        elif shapes and enumerated and "shapes" not in h and t.get("enumerated"):
            out.append(f"{what} {t['name']!r}: the manifest enumerates {t['enumerated']}; the bundle's shape is fixed.")
    return out


def _io_problems(comp: dict, funcs: dict[str, dict]) -> list[str]:
    name, out = comp["name"], []
    if list(funcs) != list(comp["functions"]):
        out.append(f"{name}: functions {comp['functions']} in the manifest, {list(funcs)} in the bundle "
                   f"(the first is the default).")
        return out
    io = comp.get("function_io") or {comp["functions"][0]: {"inputs": comp["inputs"], "outputs": comp["outputs"]}}
    for fn, f in funcs.items():
        want = io.get(fn)
        if want is None:
            out.append(f"{name}: the manifest lists no I/O for function {fn!r}.")
            continue
        label = f"{name}" + (f" function {fn!r}" if fn != "main" else "")
        out += _tensor_problems(f"{label} input", want["inputs"], f["inputs"])
        out += _tensor_problems(f"{label} output", want["outputs"], f["outputs"], enumerated=False)
    states = {k: v for f in funcs.values() for k, v in f["states"].items()}
    out += _tensor_problems(f"{name} state", comp.get("states", []), states)
    return out


def _stamp_problems(comp: dict, spec, host: dict) -> list[str]:
    name = comp["name"]
    meta = dict(spec.description.metadata.userDefined)
    if STAMP + "name" not in meta:
        return [f"{name}: the bundle carries no conversion stamp ({STAMP}* metadata); it was not written by "
                f"this converter. Fix: convert it again with python -m coreml_convert."]
    out = []
    want = {"name": name, "target": comp.get("target", components.DEFAULT_TARGET),
            "compute_units": comp["compute_units"], "recipe": comp.get("compression", {}).get("recipe", "fp16")}
    for key, value in want.items():
        if meta.get(STAMP + key) != value:
            out.append(f"{name}: {key} is {value!r} in the manifest but {meta.get(STAMP + key)!r} in the bundle.")
    stamped = json.loads(meta.get(STAMP + "host_inputs", "{}"))
    for key in sorted(set(stamped) | set(host)):
        if stamped.get(key) != host.get(key):
            out.append(f"{name}: pipeline.host_inputs.{key} is {host.get(key)!r} in the manifest but the bundle "
                       f"was built for {stamped.get(key)!r}.")
    return out


def _os_problems(comp: dict, spec) -> list[str]:
    need = SPEC_MIN_OS.get(int(spec.specificationVersion))
    if need is None:
        return [f"{comp['name']}: unknown Core ML specification version {spec.specificationVersion}."]
    have = comp.get("minimum_os", {})
    return [f"{comp['name']}: minimum_os {have} in the manifest, but the bundle's specification version "
            f"{spec.specificationVersion} needs {need}."] if have != need else []


def _host_shape_problems(comp: dict, funcs: dict, host: dict) -> list[str]:
    """The llm's shapes against the host facts Swift builds its inputs from."""
    if comp["name"] != "llm" or not {"decode", "prefill"} <= set(funcs):
        return []
    out = []
    dec, pre = funcs["decode"], funcs["prefill"]
    for s, a in dec["states"].items():  # (layers, kv_heads, T, D)
        if len(a["shape"]) == 4 and a["shape"][2] != host.get("context_length"):
            out.append(f"llm: context_length {host.get('context_length')} but state {s!r} has {a['shape'][2]} slots.")
        if len(a["shape"]) == 4 and a["shape"][3] != host.get("head_dim"):
            out.append(f"llm: head_dim {host.get('head_dim')} but state {s!r} has a last axis of {a['shape'][3]}.")
    bias = dec["inputs"].get("attention_bias", {}).get("shape", [])
    if len(bias) > 1 and bias[1] != host.get("context_length"):
        out.append(f"llm: context_length {host.get('context_length')} but decode's attention_bias has {bias[1]} keys.")
    emb = pre["inputs"].get("embeds", {}).get("shape", [])
    if emb and emb[-1] != host.get("chunk_length"):
        out.append(f"llm: chunk_length {host.get('chunk_length')} but prefill takes {emb[-1]} tokens.")
    cos = dec["inputs"].get("cos", {}).get("shape", [])
    if len(cos) > 1 and cos[1] != host.get("head_dim"):
        out.append(f"llm: head_dim {host.get('head_dim')} but cos has {cos[1]} rows.")
    return out


def _lint_problems(folder: Path, comp: dict) -> list[str]:
    if "lint" not in comp:
        return []
    path = folder / contract.lint_report_name(comp["name"])
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError):
        return [f"{path}: missing or unreadable, but the manifest records a lint summary for {comp['name']}."]
    if report.get("summary") != comp["lint"]:
        return [f"{comp['name']}: the manifest's lint summary differs from {path.name}'s."]
    return []


def component_problems(folder: Path, comp: dict, host: dict) -> list[str]:
    """Everything the manifest says of one component against its bundle's own spec."""
    if "chunks" in comp:
        return [f"{comp['name']}: chunked bundles are not read by this validator (no converter writes them)."]
    try:
        spec = load_spec(folder / comp["file"])
    except ImportError:
        return [f"{comp['name']}: reading a bundle's spec needs coremltools. Fix: pip install coremltools "
                f"(or pass --files-only to check hashes alone)."]
    except Exception as e:  # not a Core ML model package
        return [f"{folder / comp['file']}: not a readable Core ML model ({type(e).__name__})."]
    funcs = spec_functions(spec)
    default = spec.description.defaultFunctionName or "main"
    head = [] if default == comp["functions"][0] else [
        f"{comp['name']}: default function {comp['functions'][0]!r} in the manifest, {default!r} in the bundle."]
    return head + (_io_problems(comp, funcs) + _os_problems(comp, spec) + _stamp_problems(comp, spec, host)
            + _host_shape_problems(comp, funcs, host) + _lint_problems(folder, comp))


def export_problems(where: str, data: dict) -> list[str]:
    """No components, or a component the pipeline needs missing without ``export.partial``."""
    names = [c.get("name") for c in data.get("components", [])]
    if not names:
        return [f"{where}: lists 0 components (a failed or empty conversion). Fix: convert again and read "
                f"the errors of python -m coreml_convert."]
    export = data.get("export", {})
    missing = [n for n in components.BUNDLES if n not in names]
    if missing and not export.get("partial"):
        return [f"{where}: missing component(s) {', '.join(missing)} that the pipeline needs, and the export is "
                f"not declared partial. Fix: convert them (python -m coreml_convert --components "
                f"{' '.join(missing)} --out <this folder>)."]
    lost = [n for n in export.get("components", []) if n not in names]
    return [f"{where}: the export asked for {', '.join(lost)} but lists no such component (its conversion "
            f"failed). Fix: convert it again."] if lost else []


def bundle_problems(folder: Path, data: dict) -> list[str]:
    host = data.get("pipeline", {}).get("host_inputs", {})
    out = []
    for comp in data.get("components", []):
        out += component_problems(folder, comp, host)
    return out
