"""``python -m coreml_convert --model X --out build/ [--components ...] [--precision fp16|fp32]
[--compress default|none|RECIPE]``

Weights are compressed by default with each component's recipe (``convert.RECIPES``: 4-bit
LLM and DiT, 6-bit LUTs for the vision encoder, int8 MCP and VAE decoder); gate 2 then runs
on the uncompressed program and the compressed one is measured against it ("drift", in the
table, the record and the manifest's ``compression`` object).  ``--compress none`` keeps fp16
weights; an explicit recipe applies to every component.

Converts one component at a time (pipeline order), checks both gates, frees the torch
modules before the next one, writes each bundle atomically, skips components whose bundle
and passing record already exist (``--force`` redoes them), prints a table, writes
``manifest.json`` (ios_bridge) and exits 3 when a gate fails (2: bad input, 1: a component
could not be converted).  A known failure of one component -- a ``MobileOError`` such as
the ``ConfigError`` of a config variant the modules do not build -- is one ``error:`` line
and a "failed" row; anything else is a traceback and a "crashed" row.  Either way the other
components are still converted.  Bundle I/O and compute units: ``weights.bundles.contract``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

from weights.core.errors import MobileOError, run_cli
from weights.core.memory import peak_rss_bytes

import numpy as np

from coreml_convert import convert as cv
from coreml_convert import gates, lint
from coreml_convert.components import REGISTRY
from coreml_convert.spec import PRECISIONS, ConversionResult

RECORDS = ".conversion"  # out/.conversion/<name>.json: result + gate verdict of each bundle
EXIT_GATE_FAILED = 3
EXIT_CRASHED = 1
SKIPPED = "already converted"


# ------------------------------------------------------------------ memory


def reset_peak_rss() -> None:
    """Start a new peak-RSS window (Linux: /proc/self/clear_refs; elsewhere a no-op, so the
    peak is the process's so far)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_rss_mb() -> float:
    return peak_rss_bytes() / 2**20


# ------------------------------------------------------------------ records


def record_path(out: Path, name: str) -> Path:
    return out / RECORDS / f"{name}.json"


def read_record(out: Path, name: str) -> dict | None:
    try:
        return json.loads(record_path(out, name).read_text())
    except (OSError, ValueError):
        return None


def write_record(out: Path, name: str, record: dict) -> None:
    path = record_path(out, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=2))
    os.replace(tmp, path)


def finished(out: Path, name: str, precision: str, compression: dict | None) -> ConversionResult | None:
    """The stored result when ``name`` is already converted, passed, and matches the request."""
    from weights.bundles.hashing import bundle_bytes

    rec = read_record(out, name)
    if not rec or not rec.get("passed") or rec.get("precision") != precision or rec.get("recipe") != compression:
        return None
    result = ConversionResult.from_dict(rec["result"])
    bundle = out / result.file
    if not bundle.exists() or bundle_bytes(bundle) != result.bytes:
        return None
    return result


# ------------------------------------------------------------------ one component


def convert_component(ckpt, name: str, out: Path, precision: str, compression: dict | None,
                      seed: int = 0) -> tuple[ConversionResult, gates.GateReport]:
    from weights.bundles.hashing import bundle_bytes, bundle_sha256

    reset_peak_rss()
    t0 = time.perf_counter()
    try:
        module = REGISTRY[name]
    except ImportError as e:
        raise cv.ConversionError(f"component {name} cannot be imported ({e}).",
                                 fix="check coreml_convert/components/ is complete.") from None
    spec = module.build_spec(ckpt, seed=seed)
    reference = gates.gate1(spec)
    plain, model = cv.convert_both(spec, precision, compression)
    plain_dir = plain_path = None
    try:
        if model is None:  # uncompressed
            model, plain = plain, None
        else:  # gate 2 runs on the uncompressed program, saved aside (a temp folder) for the gates only
            plain_dir = Path(tempfile.mkdtemp(prefix=f".{name}.fp16.", suffix=cv.TMP_SUFFIX, dir=out))
            plain_path = cv.save_atomic(plain, plain_dir, spec.file)
        path = cv.save_atomic(model, out, spec.file)
        del model, plain
        gc.collect()
        files = []
        for file, array in spec.files.items():  # tables the app reads beside the bundle
            table = cv.save_table(array, out, file)
            files.append({"file": file, "sha256": bundle_sha256(table), "bytes": bundle_bytes(table),
                          "shape": [int(n) for n in np.shape(array)], "dtype": "float16"})
        report = gates.run_gates(spec, path, precision, reference=reference, plain_path=plain_path)
    finally:
        if plain_dir is not None:
            shutil.rmtree(plain_dir, ignore_errors=True)
    linted = lint.lint_bundle(path, name)
    lint.write_report(linted, out)  # out/<name>.lint.json beside the bundle
    summary = lint.summary(linted)
    result = ConversionResult(
        name=name, file=spec.file, bytes=bundle_bytes(path), sha256=bundle_sha256(path),
        inputs=cv.io_specs(spec.inputs, precision), outputs=cv.io_specs(spec.outputs, precision),
        states=cv.io_specs(spec.states, precision), functions=tuple(spec.functions),
        compute_units=spec.compute_units, minimum_os=dict(spec.minimum_os),
        compression=compression_record(precision, compression, report),
        gates=report.as_gates(), seconds=time.perf_counter() - t0, peak_rss_mb=peak_rss_mb(),
        function_io={fn: {k: cv.io_specs(specs, precision) for k, specs in io.items()}
                     for fn, io in spec.function_io.items()},
        files=files, lint=summary,
    )
    del spec, module
    gc.collect()
    return result, report


def compression_record(precision: str, recipe: dict | None, report: gates.GateReport) -> dict:
    """The manifest's open ``compression`` object: the recipe, its CLI name, and the drift
    of the compressed program (vs the uncompressed one, and vs the torch module)."""
    rec = {"precision": precision, "weights": precision, **(recipe or {}), "recipe": cv.recipe_name(recipe)}
    if report.drift is not None:
        rec["drift_psnr_db"] = _round_db(report.drift_psnr_db)
        rec["compressed_program_psnr_db"] = _round_db(report.compressed_psnr_db)
    return rec


def _round_db(v: float):
    return round(float(v), 2) if np.isfinite(v) else str(v)


# ------------------------------------------------------------------ table


COLUMNS = ("component", "recipe", "bundle MB", "gate1 dB", "gate2 dB", "drift dB", "ANE eligible", "seconds",
           "peak RSS MB", "status")
LEFT = (0, 1, 9)  # left-aligned columns


def _db(v) -> str:
    return "-" if v is None else ("inf" if v == float("inf") else f"{v:.1f}")


def table_row(name: str, result: ConversionResult | None, status: str) -> tuple[str, ...]:
    if result is None:
        return (name, "-", "-", "-", "-", "-", "-", "-", "-", status)
    g = result.gates
    mb = result.bytes / 1e6
    share = result.lint.get("eligible_share")
    c = result.compression
    drift = c.get("drift_psnr_db")
    return (name, c.get("recipe", c.get("weights", "-")), f"{mb:.2f}" if mb < 10 else f"{mb:.1f}",
            _db(g.get("reference_psnr_db")), _db(g.get("program_psnr_db")), _db(None if drift is None else float(drift)),
            "-" if share is None else f"{100 * share:.1f}%", f"{result.seconds:.1f}", f"{result.peak_rss_mb:.0f}", status)


def format_table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in [COLUMNS, *rows]) for i in range(len(COLUMNS))]
    fmt = lambda r: "  ".join(c.ljust(w) if i in LEFT else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
    return "\n".join([fmt(COLUMNS), "  ".join("-" * w for w in widths), *map(fmt, rows)])


# ------------------------------------------------------------------ main


def select_components(text: list[str] | None) -> list[str]:
    if not text:
        return list(REGISTRY)
    wanted = [n for part in text for n in part.replace(",", " ").split()]
    unknown = [n for n in wanted if n not in REGISTRY]
    if unknown:
        raise cv.ConversionError(f"unknown component {unknown[0]!r}.", fix=f"choose from {', '.join(REGISTRY)}.")
    return [n for n in REGISTRY if n in wanted]  # pipeline order, no duplicates


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m coreml_convert",
                                description="Convert Mobile-O to Neural-Engine Core ML bundles, checking two parity gates each.")
    p.add_argument("--model", required=True, help="hub id, local checkpoint folder, or 'demo'")
    p.add_argument("--out", required=True, help="output folder for the .mlpackage bundles and manifest.json")
    p.add_argument("--components", nargs="+", metavar="NAME",
                   help=f"subset to convert (default: all): {', '.join(REGISTRY)}")
    p.add_argument("--precision", choices=PRECISIONS, default="fp16", help="compute precision (default fp16)")
    p.add_argument("--compress", default=cv.DEFAULT, metavar="RECIPE",
                   help="weight compression: 'default' (each component's recipe: "
                        + ", ".join(f"{n} {cv.recipe_name(r)}" for n, r in cv.RECIPES.items())
                        + "), 'none' (fp16 weights), or one recipe for all: int8, int4[b<block>], "
                          "lut<bits>[g<group>] (uniform LUTs), palettize<bits>[g<group>] (k-means, needs scikit-learn)")
    p.add_argument("--force", action="store_true", help="reconvert components whose bundle already exists")
    p.add_argument("--seed", type=int, default=0, help="seed of the gates' random inputs")
    p.add_argument("--revision", default=None, help="hub revision of --model")
    return p.parse_args(argv)


def run(args: argparse.Namespace, stream=None) -> int:
    from weights.loading.hub import open_model

    stream = stream or sys.stdout
    names = select_components(args.components)
    compression = cv.parse_compression(args.compress)
    ckpt = open_model(args.model, revision=args.revision)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for tmp in cv.leftover_temp_folders(out):  # left by a run that was killed mid-save
        shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)

    rows, code = [], 0
    for name in names:
        recipe = cv.recipe_for(name, compression)
        result = None if args.force else finished(out, name, args.precision, recipe)
        if result is not None:
            rows.append(table_row(name, result, SKIPPED))
            print(f"{name}: {SKIPPED}, not redone (--force to redo)", file=stream, flush=True)
            continue
        print(f"{name}: converting ({args.precision}, weights {cv.recipe_name(recipe)}) ...", file=stream, flush=True)
        try:
            result, report = convert_component(ckpt, name, out, args.precision, recipe, args.seed)
        except Exception as e:  # one component failing: report it, go on with the others
            if isinstance(e, MobileOError):  # a known failure (e.g. ct.convert refused): one line
                print(f"error: {name}: {e}", file=sys.stderr, flush=True)
            else:
                traceback.print_exc(file=sys.stderr)
                print(f"error: {name}: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
            rows.append(table_row(name, None, "failed" if isinstance(e, MobileOError) else "crashed"))
            code = code or EXIT_CRASHED
            gc.collect()
            continue
        status = "ok" if report.passed else "FAILED: " + "; ".join(report.failures)
        if report.predict is None and platform.system() != "Darwin":
            status += f" (no MLModel.predict on {platform.system()})"
        write_record(out, name, {"passed": report.passed, "failures": report.failures,
                                 "precision": args.precision, "recipe": recipe,
                                 "result": result.to_dict()})
        rows.append(table_row(name, result, status))
        if not report.passed:
            print(f"error: {name}: {'; '.join(report.failures)}", file=sys.stderr, flush=True)
            code = EXIT_GATE_FAILED if code != EXIT_CRASHED else code
        gc.collect()

    print(format_table(rows), file=stream, flush=True)
    print(f"manifest: {write_manifest(out, ckpt, args)}", file=stream, flush=True)
    return code


def write_manifest(out: Path, ckpt, args) -> Path:
    """ios_bridge's manifest over every passing bundle in ``out`` (pipeline order)."""
    from ios_bridge.manifest import write_manifest as _write

    results = []
    for name in REGISTRY:
        rec = read_record(out, name)
        if rec and rec.get("passed") and (out / rec["result"]["file"]).exists():
            results.append(ConversionResult.from_dict(rec["result"]))
    return _write(out, ckpt, results, model_id=args.model, revision=args.revision)


def main(argv=None) -> None:
    args = parse_args(argv)
    code = run_cli(lambda: run(args))
    raise SystemExit(code or 0)
