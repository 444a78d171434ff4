"""``python -m coreml_convert --model X --out build/ [--components ...] [--precision fp16|fp32]
[--target ane|gpu] [--compress default|none|RECIPE] [--isolate auto|on|off] [-v]``

Checks for torch and coremltools first (one ``error:`` line naming the ``convert`` extra,
nothing written); their progress bars and tracer warnings are hidden unless ``-v``.
Weights are compressed by default with each component's recipe for ``--target`` (the
component table, ``weights.core.components``: for ``ane`` mixed LUT4/LUT6 + int8 LLM, DiT and
VAE decoder, 6-bit LUTs for the vision encoder, int8 MCP; for ``gpu`` per-block int4 LLM
and DiT, the DiT and VAE computed in fp32); each bundle is stamped (user metadata) with its
name, target, compute units, recipe and host-input constants for ``mobileo-validate``; gate 2 then runs
on the uncompressed program and the compressed one is measured against it ("drift", in the
table, the record and the manifest's ``compression`` object).  ``--compress none`` keeps fp16
weights; an explicit recipe applies to every component.

Converts one component at a time (pipeline order) -- each in its own process when the
checkpoint is over 1 GiB (``--isolate``; its memory goes back to the system when it ends) --
stage by stage, freeing each stage's memory before the next (``coreml_convert.memory``
records every stage's seconds and peak RSS; a component's peak is its own, the run's is the
highest of its processes), checks both gates, writes each bundle atomically (reproducible
bytes: ``convert.reproducible_package``), skips components whose bundle
and passing record already exist (``--force`` redoes them), prints a table, writes
``manifest.json`` (ios_bridge) and exits 3 when a gate fails (2: bad input, 1: a component
could not be converted).  A known failure of one component -- a ``MobileOError`` such as
the ``ConfigError`` of a config variant the modules do not build -- is one ``error:`` line
and a "failed" row; anything else is a traceback and a "crashed" row.  Either way the other
components are still converted.  Bundle I/O and compute units: ``weights.bundles.contract``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
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

from weights.bundles import contract
from weights.core.components import DEFAULT_TARGET, TARGETS
from weights.core.errors import MobileOError, run_cli

import numpy as np

from coreml_convert import convert as cv
from coreml_convert import gates, lint, memory
from coreml_convert.components import REGISTRY
from coreml_convert.spec import PRECISIONS, ConversionResult

RECORDS = ".conversion"  # out/.conversion/<name>.json: result + gate verdict of each bundle
RECORD_VERSION = 2  # 2: bundles stamped for mobileo-validate, llm cache written at a position
EXIT_GATE_FAILED = 3
EXIT_CRASHED = 1
SKIPPED = "already converted"


# ------------------------------------------------------------------ memory

reset_peak_rss, peak_rss_mb = memory.reset_peak_rss, memory.peak_rss_mb


# ------------------------------------------------------------------ records


def record_path(out: Path, name: str) -> Path:
    return out / RECORDS / f"{name}.json"


def read_record(out: Path, name: str) -> dict | None:
    try:
        return json.loads(record_path(out, name).read_text())
    except (OSError, ValueError):
        return None


def component_files(out: Path, name: str) -> list[Path]:
    """The paths in ``out`` that converted component ``name`` owns: its conversion record, its
    lint report, its bundle and the files beside it (the LLM's embedding table); [] when it is
    not converted there."""
    from weights.bundles.contract import lint_report_name

    rec = read_record(out, name)
    if not rec:
        return []
    result = rec["result"]
    return [record_path(out, name), out / lint_report_name(name), out / result["file"],
            *(out / f["file"] for f in result.get("files", []))]


def write_record(out: Path, name: str, record: dict) -> None:
    path = record_path(out, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=2))
    os.replace(tmp, path)


def finished(out: Path, name: str, precision: str, compression: dict | None,
             target: str = DEFAULT_TARGET) -> ConversionResult | None:
    """The stored result when ``name`` is already converted, passed, and matches the request."""
    from weights.bundles.hashing import bundle_bytes

    rec = read_record(out, name)
    if not rec or not rec.get("passed") or rec.get("precision") != precision or rec.get("recipe") != compression \
            or rec.get("target", DEFAULT_TARGET) != target or rec.get("record") != RECORD_VERSION:
        return None  # RECORD_VERSION: bundles of an older converter (no stamp, old cache layout) are redone
    result = ConversionResult.from_dict(rec["result"])
    bundle = out / result.file
    if not bundle.exists() or bundle_bytes(bundle) != result.bytes:
        return None
    return result


# ------------------------------------------------------------------ one component


def convert_component(ckpt, name: str, out: Path, precision: str, compression: dict | None,
                      seed: int = 0, target: str = DEFAULT_TARGET) -> tuple[ConversionResult, gates.GateReport]:
    """One component, stage by stage, each stage's memory freed before the next: load (the
    component's tensors, its torch module and the upstream reference), gate 1, then the
    reference is dropped before conversion; the bundle is saved and gated from disk.  The
    stages' seconds and peak RSS go to the result (``stages``; ``peak_rss_mb`` = their highest)."""
    log = memory.StageLog()
    t0 = time.perf_counter()
    with memory.logging_stages(log):
        result, report = _convert_stages(ckpt, name, out, precision, compression, seed, target, log)
    stages = log.close()
    return dataclasses.replace(result, seconds=time.perf_counter() - t0, peak_rss_mb=log.peak_mb,
                               stages=stages), report


def _convert_stages(ckpt, name, out, precision, compression, seed, target, log):
    from weights.bundles.hashing import bundle_bytes, bundle_sha256

    log.mark("load")
    try:
        module = REGISTRY[name]
    except ImportError as e:
        raise cv.ConversionError(f"component {name} cannot be imported ({e}).",
                                 fix="check coreml_convert/components/ is complete.") from None
    spec = module.build_spec(ckpt, seed=seed)
    spec.io = dataclasses.replace(spec.io, target=target)  # the compute units follow the target
    log.mark("gate 1")
    reference = gates.gate1(spec)
    spec.reference = None  # the upstream model is not needed again: freed before converting
    torch_out = gates.module_outputs(spec, precision)  # gate 2's module side, while the module is here
    log.mark("convert")
    # the torch module is freed once traced and converted, before compression (and the LLM's merge)
    plain, model = cv.convert_both(spec, precision, compression, release_module=True)
    spec.module = spec.convert = None
    log.mark("save")
    plain_dir = plain_path = None
    try:
        if model is None:  # uncompressed
            model, plain = plain, None
        else:  # gate 2 runs on the uncompressed program, saved aside (a temp folder) for the gates only
            plain_dir = Path(tempfile.mkdtemp(prefix=f".{name}.fp16.", suffix=cv.TMP_SUFFIX, dir=out))
            plain_path = cv.save_atomic(plain, plain_dir, spec.file)
        stamp(model, spec, compression, ckpt.config)
        path = cv.save_atomic(model, out, spec.file)
        del model, plain
        gc.collect()
        files = []
        for file, array in spec.files.items():  # tables the app reads beside the bundle
            table = cv.save_table(array, out, file)
            dtype, shape = contract.table_format(array)
            files.append({"file": file, "sha256": bundle_sha256(table), "bytes": bundle_bytes(table),
                          "shape": list(shape), "dtype": dtype})
        spec.files = {}
        log.mark("gate 2")
        report = gates.run_gates(spec, path, precision, reference=reference, plain_path=plain_path,
                                 torch_out=torch_out)
    finally:
        if plain_dir is not None:
            shutil.rmtree(plain_dir, ignore_errors=True)
    log.mark("lint")
    linted = lint.lint_bundle(path, name, spec.compute_units)
    lint.write_report(linted, out)  # out/<name>.lint.json beside the bundle
    result = ConversionResult(
        name=name, file=spec.file, bytes=bundle_bytes(path), sha256=bundle_sha256(path),
        inputs=cv.io_specs(spec.inputs, precision), outputs=cv.io_specs(spec.outputs, precision),
        states=cv.io_specs(spec.states, precision), functions=tuple(spec.functions),
        compute_units=spec.compute_units, minimum_os=dict(spec.minimum_os),
        compression={**compression_record(precision, compression, report, target), **spec.compression_facts},
        gates=report.as_gates(), seconds=0.0, peak_rss_mb=0.0,
        function_io={fn: {k: cv.io_specs(specs, precision) for k, specs in io.items()}
                     for fn, io in spec.function_io.items()},
        files=files, lint=lint.summary(linted),
    )
    del spec, module
    gc.collect()
    return result, report


def stamp(model, spec, recipe: dict | None, config) -> None:
    """Facts the validator reads back from the bundle's own spec (``ios_bridge.bundle_check``):
    the component, its target, compute units and recipe, and the host-input constants the
    bundle was built for (RoPE theta, context and chunk lengths, masks, timestep features).
    Stored as the model's user-defined metadata; the bundle's sha256 covers them."""
    from ios_bridge.bundle_check import STAMP
    from ios_bridge.manifest import host_facts

    meta = getattr(model, "user_defined_metadata", None)
    if meta is None:  # not a Core ML model object (a test double)
        return
    meta[STAMP + "name"] = spec.name
    meta[STAMP + "target"] = spec.io.target
    meta[STAMP + "compute_units"] = spec.compute_units
    meta[STAMP + "recipe"] = cv.recipe_name(recipe)
    meta[STAMP + "host_inputs"] = json.dumps(host_facts(config), sort_keys=True)


def compression_record(precision: str, recipe: dict | None, report: gates.GateReport,
                       target: str = DEFAULT_TARGET) -> dict:
    """The manifest's open ``compression`` object: the target, the recipe, its CLI name, and
    the drift of the compressed program (vs the uncompressed one, and vs the torch module)."""
    rec = {"precision": precision, "weights": precision, **(recipe or {}), "recipe": cv.recipe_name(recipe),
           "target": target}
    if report.drift is not None:
        rec["drift_psnr_db"] = _round_db(report.drift_psnr_db)
        rec["compressed_program_psnr_db"] = _round_db(report.compressed_psnr_db)
    return rec


def _round_db(v: float):
    return round(float(v), 2) if np.isfinite(v) else str(v)


# ------------------------------------------------------------------ table


COLUMNS = ("component", "recipe", "bundle MB", "gate1 dB", "gate2 dB", "drift dB", "max |act|", "ANE eligible",
           "seconds", "peak RSS MB", "status")
LEFT = (0, 1, 10)  # left-aligned columns


def _db(v) -> str:
    return "-" if v is None else ("inf" if v == float("inf") else f"{v:.1f}")


def table_row(name: str, result: ConversionResult | None, status: str) -> tuple[str, ...]:
    if result is None:
        return (name, "-", "-", "-", "-", "-", "-", "-", "-", "-", status)
    g = result.gates
    mb = result.bytes / 1e6
    share = result.lint.get("eligible_share")
    c = result.compression
    drift = c.get("drift_psnr_db")
    return (name, c.get("recipe", c.get("weights", "-")), f"{mb:.2f}" if mb < 10 else f"{mb:.1f}",
            _db(g.get("reference_psnr_db")), _db(g.get("program_psnr_db")), _db(None if drift is None else float(drift)),
            "-" if g.get("max_abs_activation") is None else f"{g['max_abs_activation']:.3g}",
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
    p = argparse.ArgumentParser(prog="mobileo-coreml",
                                description="Convert Mobile-O to Neural-Engine Core ML bundles, checking two parity gates each.")
    p.add_argument("--model", required=True, help="hub id, local checkpoint folder, or 'demo'")
    p.add_argument("--out", required=True, help="output folder for the .mlpackage bundles and manifest.json")
    p.add_argument("--components", nargs="+", metavar="NAME",
                   help=f"subset to convert (default: all): {', '.join(REGISTRY)}")
    p.add_argument("--precision", choices=PRECISIONS, default="fp16", help="compute precision (default fp16)")
    p.add_argument("--target", choices=TARGETS, default=DEFAULT_TARGET,
                   help="deployment target: 'ane' (iPhone default: Neural Engine weight formats, compute units "
                        "cpuAndNeuralEngine) or 'gpu' (Macs / GPU fallback: per-block int4, cpuAndGPU)")
    p.add_argument("--compress", default=cv.DEFAULT, metavar="RECIPE",
                   help="weight compression: 'default' (each component's recipe for --target; ane: "
                        + ", ".join(f"{n} {cv.recipe_name(r)}" for n, r in cv.RECIPES.items())
                        + "), 'none' (fp16 weights), or one recipe for all: int8, int4[b<block>], mixed "
                          "(LUT4/LUT6 per layer by measured drift, else int8), "
                          "lut<bits>[g<group>] (uniform LUTs), palettize<bits>[g<group>] (k-means, needs scikit-learn)")
    p.add_argument("--force", action="store_true", help="reconvert components whose bundle already exists")
    p.add_argument("--seed", type=int, default=0, help="seed of the gates' random inputs")
    p.add_argument("--revision", default=None, help="hub revision of --model")
    p.add_argument("--isolate", choices=("auto", "on", "off"), default="auto",
                   help="convert each component in its own process (its memory returned when it ends; "
                        "default auto: on for checkpoints over 1 GiB)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)  # one component for a parent run
    p.add_argument("-v", "--verbose", action="store_true",
                   help="show coremltools' progress bars and torch's tracer warnings (hidden by default)")
    return p.parse_args(argv)


CONVERT_EXTRA = "pip install -e '.[convert]'"


def require_convert_extra() -> None:
    """Conversion needs torch and coremltools (the ``convert`` extra): one line naming it,
    before anything is read or written."""
    from importlib.util import find_spec

    missing = [m for m in ("torch", "coremltools") if find_spec(m) is None]
    if missing:
        raise cv.ConversionError(f"mobileo-coreml needs {' and '.join(missing)}, which "
                                 f"{'is' if len(missing) == 1 else 'are'} not installed.",
                                 fix=f"{CONVERT_EXTRA} (the convert extra: torch, coremltools, transformers, "
                                     "diffusers, timm).")


@contextlib.contextmanager
def quiet_conversion(verbose: bool = False):
    """Hide coremltools' progress bars (tqdm, disabled for the duration), its INFO/WARNING
    log lines, and torch's TracerWarnings; ``-v`` keeps them.  Restored on exit."""
    import logging
    import warnings

    if verbose:
        yield
        return
    loggers = [logging.getLogger(n) for n in ("coremltools", "torch", "transformers", "diffusers", "timm")]
    levels = [lg.level for lg in loggers]
    try:
        import tqdm
    except ImportError:
        tqdm = None
    init = tqdm.tqdm.__dict__["__init__"] if tqdm else None  # the raw attribute (tqdm wraps it)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        if tqdm:
            tqdm.tqdm.__init__ = functools.partialmethod(tqdm.tqdm.__init__, disable=True)
        try:
            yield
        finally:
            if tqdm:
                tqdm.tqdm.__init__ = init
            for lg, level in zip(loggers, levels):
                lg.setLevel(level)


def run(args: argparse.Namespace, stream=None) -> int:
    stream = stream or sys.stdout
    require_convert_extra()
    with quiet_conversion(getattr(args, "verbose", False)):
        return _run(args, stream)


def _run(args: argparse.Namespace, stream) -> int:
    from weights.loading.hub import open_model

    t0 = time.perf_counter()
    names = select_components(args.components)
    compression = cv.parse_compression(args.compress)
    ckpt = open_model(args.model, revision=args.revision)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for tmp in cv.leftover_temp_folders(out):  # left by a run that was killed mid-save
        shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)
    child = getattr(args, "child", False)
    isolate = not child and use_processes(getattr(args, "isolate", "auto"), ckpt)

    rows, code, peaks = [], 0, []
    for name in names:
        target = getattr(args, "target", DEFAULT_TARGET)
        recipe = cv.recipe_for(name, compression, target)
        # a recipe may carry its compute precision (--target gpu: fp32 DiT and VAE, as Mobile-O's app)
        precision = (recipe or {}).get("precision", args.precision)
        result = None if args.force else finished(out, name, precision, recipe, target)
        if result is not None:
            rows.append(table_row(name, result, SKIPPED))
            print(f"{name}: {SKIPPED}, not redone (--force to redo)", file=stream, flush=True)
            continue
        if not child:
            print(f"{name}: converting ({precision}, weights {cv.recipe_name(recipe)})"
                  f"{' in its own process' if isolate else ''} ...", file=stream, flush=True)
        if isolate:
            row, status, peak = convert_in_process(args, name, out, stream)
        else:
            row, status, peak = convert_here(ckpt, name, out, precision, recipe, args.seed, target)
        rows.append(row)
        peaks.append(peak)
        code = CHILD_FAILED if child and status == "failed" else merge_code(code, status)
        gc.collect()

    if child:  # the parent prints the table and writes the manifest
        return code
    run_record = {"seconds": round(time.perf_counter() - t0, 1),
                  "peak_rss_mb": round(max([*peaks, peak_rss_mb()]), 1),
                  "processes": "one per component" if isolate else "one"}
    print(format_table(rows), file=stream, flush=True)
    print(f"run: {run_record['seconds']:.0f} s, peak RSS {run_record['peak_rss_mb']:.0f} MB "
          f"({run_record['processes']})", file=stream, flush=True)
    print(f"manifest: {write_manifest(out, ckpt, args, names, run_record)}", file=stream, flush=True)
    return code


ISOLATE_ABOVE_BYTES = 1 << 30  # --isolate auto: one process per component above 1 GiB of weights
CHILD_FAILED = 4  # a child's exit status for a known (one-line) failure; the run exits EXIT_CRASHED


def use_processes(isolate: str, ckpt) -> bool:
    """--isolate on/off, or auto: each component in its own process when the checkpoint holds
    over 1 GiB of weights (a full model; a tiny one converts faster in one process)."""
    if isolate in ("on", "off"):
        return isolate == "on"
    return memory.checkpoint_bytes(ckpt) > ISOLATE_ABOVE_BYTES


def merge_code(code: int, status: str) -> int:
    """The run's exit status so far after one component's ("ok", "gate", "failed", "crashed")."""
    if status in ("failed", "crashed"):
        return code or EXIT_CRASHED
    if status == "gate":
        return EXIT_GATE_FAILED if code != EXIT_CRASHED else code
    return code


def convert_here(ckpt, name, out, precision, recipe, seed, target) -> tuple[tuple[str, ...], str, float]:
    """Convert one component in this process: (table row, "ok" | "gate" | "failed" | "crashed",
    its own peak RSS in MB)."""
    try:
        result, report = convert_component(ckpt, name, out, precision, recipe, seed, target)
    except Exception as e:  # one component failing: report it, go on with the others
        if isinstance(e, MobileOError):  # a known failure (e.g. ct.convert refused): one line
            print(f"error: {name}: {e}", file=sys.stderr, flush=True)
        else:
            traceback.print_exc(file=sys.stderr)
            print(f"error: {name}: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        failed = "failed" if isinstance(e, MobileOError) else "crashed"
        return table_row(name, None, failed), failed, peak_rss_mb()
    write_record(out, name, {"passed": report.passed, "failures": report.failures,
                             "precision": precision, "recipe": recipe, "target": target,
                             "record": RECORD_VERSION,
                             "result": result.to_dict()})
    if not report.passed:
        print(f"error: {name}: {'; '.join(report.failures)}", file=sys.stderr, flush=True)
    row = table_row(name, result, record_status(report.passed, report.failures, result))
    return row, "ok" if report.passed else "gate", result.peak_rss_mb


def record_status(passed: bool, failures: list[str], result: ConversionResult) -> str:
    status = "ok" if passed else "FAILED: " + "; ".join(failures)
    if "predict_psnr_db" not in result.gates and platform.system() != "Darwin":
        status += f" (no MLModel.predict on {platform.system()})"
    return status


def child_command(args: argparse.Namespace, name: str, out: Path) -> list[str]:
    cmd = [sys.executable, "-m", "coreml_convert", "--model", str(args.model), "--out", str(out),
           "--components", name, "--precision", args.precision, "--compress", str(args.compress),
           "--target", getattr(args, "target", DEFAULT_TARGET), "--seed", str(args.seed),
           "--isolate", "off", "--force", "--child"]
    if args.revision:
        cmd += ["--revision", args.revision]
    return cmd + (["-v"] if getattr(args, "verbose", False) else [])


def convert_in_process(args: argparse.Namespace, name: str, out: Path, stream) -> tuple[tuple[str, ...], str, float]:
    """Convert one component in a child process (the same CLI, ``--child``): its memory is
    returned to the system when it exits, and ``wait4`` gives its own peak RSS.  Its stdout is
    copied to ``stream``, its stderr is this process's.  -> (row, status, child's peak MB)."""
    import subprocess

    env = {**os.environ, **{k: v for k, v in memory.CHILD_ENV.items() if k not in os.environ}}
    proc = subprocess.Popen(child_command(args, name, out), stdout=subprocess.PIPE, text=True, env=env)
    try:
        for line in proc.stdout:
            print(line, end="", file=stream, flush=True)
    finally:
        proc.stdout.close()
        code, peak = memory.child_peak_mb(proc.pid)
        proc.returncode = code  # reaped by wait4
    if code == 130:
        raise KeyboardInterrupt
    rec = read_record(out, name) if code in (0, EXIT_GATE_FAILED) else None
    if rec is None:
        failed = "failed" if code == CHILD_FAILED else "crashed"
        return table_row(name, None, failed), failed, peak
    result = ConversionResult.from_dict(rec["result"])
    status = "ok" if rec["passed"] else "gate"
    # Linux: the child's clear_refs windows lower the high-water mark wait4 reports, so its
    # own stage peaks count too
    peak = max(peak, result.peak_rss_mb)
    return table_row(name, result, record_status(rec["passed"], rec["failures"], result)), status, peak


def write_manifest(out: Path, ckpt, args, requested: list[str] | None = None, run: dict | None = None) -> Path:
    """ios_bridge's manifest over every passing bundle in ``out`` of this run's target
    (pipeline order); ``requested``: the components this run was asked for (a subset makes
    the export partial)."""
    from ios_bridge.manifest import write_manifest as _write

    results = []
    for name in REGISTRY:
        rec = read_record(out, name)
        target = getattr(args, "target", DEFAULT_TARGET)
        if rec and rec.get("passed") and (out / rec["result"]["file"]).exists() \
                and rec.get("target", DEFAULT_TARGET) == target:
            results.append(ConversionResult.from_dict(rec["result"]))
    requested = list(REGISTRY) if requested is None else requested
    return _write(out, ckpt, results, model_id=args.model, revision=args.revision,
                  requested=requested, target=getattr(args, "target", DEFAULT_TARGET), run=run)


def main(argv=None) -> None:
    args = parse_args(argv)
    code = run_cli(lambda: run(args))
    raise SystemExit(code or 0)
