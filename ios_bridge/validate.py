"""Check an export folder: ``python -m ios_bridge.validate build/``.

Checks manifest.json against ``schema.json``; that it lists components (0 is a failed
export) and every one the pipeline needs unless ``export.partial`` declares a subset; that
every bundle and tokenizer file it lists exists with the recorded size and sha256; then every
field the Swift side consumes against each bundle's own spec -- I/O names, shapes, dtypes,
states, functions, default function, specification version vs minimum OS, target, compute
units, recipe, host-input constants, context/chunk length and head dim vs the shapes, the
lint summary vs ``<name>.lint.json`` (``ios_bridge.bundle_check``; needs coremltools, no
prediction; ``--files-only`` skips it).  Prints one line per problem, naming the file, and
exits 1; prints one ``ok:`` line and exits 0 when all is well.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from weights.core.errors import MobileOError, run_cli

from ios_bridge import MANIFEST_FILE
from weights.bundles.hashing import bundle_bytes, bundle_sha256
from ios_bridge.bundle_check import bundle_problems, export_problems
from ios_bridge.manifest import load_schema


def schema_problems(data, where: str) -> list[str]:
    try:
        import jsonschema
    except ImportError:
        raise MobileOError("the jsonschema package is needed to validate a manifest.",
                           fix="pip install -e . (jsonschema is a base dependency of mobileo-deploy).") from None
    validator = jsonschema.Draft202012Validator(load_schema())
    out = []
    for err in sorted(validator.iter_errors(data), key=lambda e: list(map(str, e.absolute_path))):
        path = "/".join(str(p) for p in err.absolute_path) or "(root)"
        out.append(f"{where}: schema: at {path}: {err.message}")
    return out


def listed_files(data) -> list[tuple[str, dict]]:
    """(what, {file, sha256, bytes}) for every bundle, chunk, table and tokenizer file."""
    items = []
    for comp in data.get("components", []):
        if "chunks" in comp:
            items += [(f"{comp['name']} chunk {i}", c) for i, c in enumerate(comp["chunks"])]
        else:
            items.append((comp["name"], comp))
        items += [(f"{comp['name']} table", f) for f in comp.get("files", [])]
    items += [("tokenizer", f) for f in data.get("pipeline", {}).get("tokenizer", {}).get("files", [])]
    return items


def file_problems(folder: Path, data) -> list[str]:
    out = []
    for what, entry in listed_files(data):
        path = folder / entry["file"]
        if not path.exists():
            out.append(f"{path}: missing ({what} bundle listed in {MANIFEST_FILE}).")
            continue
        size = bundle_bytes(path)
        if size != entry["bytes"]:
            out.append(f"{path}: size is {size} bytes but {MANIFEST_FILE} says {entry['bytes']} ({what}).")
            continue
        digest = bundle_sha256(path)
        if digest != entry["sha256"]:
            out.append(f"{path}: sha256 is {digest} but {MANIFEST_FILE} says {entry['sha256']} "
                       f"({what}: the bundle was modified or corrupted).")
    return out


def check_problems(folder: Path, data) -> list[str]:
    """Consistency the schema cannot express."""
    out, where = [], str(folder / MANIFEST_FILE)
    names = [c.get("name") for c in data.get("components", [])]
    for n in sorted({n for n in names if names.count(n) > 1}):
        out.append(f"{where}: component {n!r} is listed twice.")
    for comp in data.get("components", []):
        function_io = comp.get("function_io") or {}
        groups = [("", group, comp.get(group, [])) for group in ("inputs", "outputs", "states")]
        groups += [(f"function {fn!r} ", group, io.get(group, []))
                   for fn, io in function_io.items() for group in ("inputs", "outputs")]
        for fn, group, tensors in groups:
            what = f"{comp['name']} {fn}{group[:-1]}"
            names = [t.get("name") for t in tensors]
            for n in sorted({n for n in names if names.count(n) > 1}):
                out.append(f"{where}: {what} {n!r} is listed twice.")
            for t in tensors:
                axes = [a for a in t.get("layout", "").split(",") if a]
                if len(axes) != len(t.get("shape", [])):
                    out.append(f"{where}: {what} {t.get('name')!r} has layout "
                               f"{t.get('layout')!r} ({len(axes)} axes) for shape {t.get('shape')}.")
                for axis in t.get("enumerated", {}) or {}:
                    if int(axis) >= len(t.get("shape", [])):
                        out.append(f"{where}: {what} {t.get('name')!r}: enumerated "
                                   f"axis {axis} is beyond its rank {len(t.get('shape', []))}.")
        functions = comp.get("functions", [])
        for fn, io in function_io.items():
            if fn not in functions:
                out.append(f"{where}: {comp['name']} function_io names {fn!r}, which is not among its "
                           f"functions {functions}.")
            elif fn == functions[0] and (io.get("inputs"), io.get("outputs")) != (comp.get("inputs"), comp.get("outputs")):
                out.append(f"{where}: {comp['name']} function_io[{fn!r}] (the default function) differs "
                           f"from the component's inputs/outputs.")
    tok = data.get("pipeline", {}).get("tokenizer", {})
    known = {t["name"] for t in tok.get("special_tokens", [])}
    for role, name in (tok.get("roles") or {}).items():
        if name not in known:
            out.append(f"{where}: tokenizer role {role!r} names {name!r}, which is not among special_tokens.")
    return out


def validate(folder: str | Path, read_bundles: bool = True) -> list[str]:
    """All problems found in an export folder (empty when it is valid).  ``read_bundles``:
    also check the manifest against each bundle's own spec (``ios_bridge.bundle_check``;
    needs coremltools); False checks the manifest, the files and their hashes only."""
    folder = Path(folder)
    path = folder / MANIFEST_FILE
    if not path.is_file():
        return [f"{path}: missing; run `python -m coreml_convert --out {folder}` to write it."]
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        return [f"{path}: not valid JSON ({e})."]
    problems = schema_problems(data, str(path))
    if problems:
        return problems  # the file checks below rely on the schema's structure
    problems = export_problems(str(path), data) + check_problems(folder, data) + file_problems(folder, data)
    if read_bundles and not problems:
        problems += bundle_problems(folder, data)
    return problems


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="mobileo-validate", description=__doc__.split("\n\n")[0])
    p.add_argument("folder", help="export folder holding manifest.json and the bundles")
    p.add_argument("--files-only", action="store_true",
                   help="check the manifest, files, sizes and hashes only (not the bundles' specs)")
    a = p.parse_args(argv)

    def run() -> int:
        problems = validate(a.folder, read_bundles=not a.files_only)
        for line in problems:
            print(line, file=sys.stderr)
        if problems:
            print(f"{len(problems)} problem(s) in {a.folder}", file=sys.stderr)
            return 1
        data = json.loads((Path(a.folder) / MANIFEST_FILE).read_text())
        print(f"ok: {Path(a.folder) / MANIFEST_FILE}: {len(data['components'])} component(s), "
              f"{len(listed_files(data))} file(s) verified"
              + ("" if a.files_only else ", bundle specs match")
              + (" (partial export)" if data["export"]["partial"] else ""))
        return 0

    return run_cli(run)


if __name__ == "__main__":
    sys.exit(main())
