"""Side-by-side benchmark (`make bench`): each contender in its own process, one table.

- whole generation (text -> denoise -> decode) at the model's size with a short step count,
  reported per step and extrapolated to 20 steps: MLX ``-q 4`` from the pre-quantized folder
  (everything resident, and with phase-wise residency), MLX float from the bf16 checkpoint,
  and the torch reference (transformers / diffusers modules, as tests/test_generate_e2e.py's
  ``torch_reference``);
- load time and peak RSS: ``-q 4`` quantized at load from the bf16 checkpoint vs read from
  the pre-quantized folder;
- understanding decode tokens/s: our ``decode_steps`` vs mlx-lm's own ``generate_step`` on
  the same 4-bit LLM weights (greedy; the token ids are compared);
- per op kind (linear, depthwise conv, conv, attention, norm, other = elementwise / casts /
  transposes), exclusive seconds of one DiT call (the CFG pair) and one DC-AE decode: MLX
  float, MLX ``-q 4`` (folder) and torch on the same shapes (``--no-ops`` leaves it out).

The BLAS in use (library file, OpenBLAS configuration and core name: the kernels it runs) is
recorded in the table's first line and bench.json; ``OPENBLAS_CORETYPE`` and
``OPENBLAS_L2_SIZE`` are unset for the workers, so OpenBLAS picks its kernels for the CPU.

    python tests/tools/bench.py --model checkpoints/full [--q4 DIR] [--steps 2] [--tokens 32]
    python tests/tools/bench.py --model demo --quick          # seconds; what CI runs

Peak RSS is each process's own high-water mark (VmHWM; ru_maxrss elsewhere), so a number
holds the interpreter, the imports and everything the contender loaded.  The folder for the
``-q 4`` rows is ``--q4``, or converted once into build/bench/ (``mlx_model.convert``).
Results: a table on stdout and in build/bench.txt, the numbers in build/bench.json.  Numbers
depend on the machine (Apple silicon is the target; on Linux MLX runs on the CPU) and are
reports, never asserts; parity of the same stages is the test suite's job.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from weights.core.memory import peak_rss_bytes

ROOT = Path(__file__).resolve().parents[2]
PROMPT = "a red cup on a wooden table"
STEPS_REPORTED = 20


def peak_rss_mb() -> float:
    return peak_rss_bytes() / 2**20


# ------------------------------------------------------------------ workers (one per process)
def work_generate(a) -> dict:
    from mlx_model.support.image_settings import ImageSettings

    import mlx.core as mx

    from mlx_model.support.mlx_folder import open_model
    from mlx_model.pipelines.generation import GenerationPipeline

    low = {"auto": None, "on": True, "off": False}[a.low_memory]
    t = time.perf_counter()
    pipe = GenerationPipeline.from_checkpoint(open_model(a.model), quantize=a.quantize, low_memory=low)
    load = time.perf_counter() - t
    out = pipe.generate(ImageSettings(PROMPT, steps=a.steps, seed=0))
    tm = out.timings
    per_step = tm["denoise"] / a.steps
    return {"load_s": load, "text_s": tm["text"], "denoise_s": tm["denoise"], "per_step_s": per_step,
            "decode_s": tm["decode"], "total_20_s": tm["text"] + per_step * STEPS_REPORTED + tm["decode"],
            "low_memory": pipe.low_memory, "phase_loads_s": out.load_seconds,
            "mlx_peak_mb": {k: v / 1e6 for k, v in {"load": pipe.load_peak_memory, **out.peak_memory}.items()},
            "image_mean": float(out.images.mean()), "mlx_version": mx.__version__}


def work_torch(a) -> dict:
    import torch

    from mlx_model.support.tokenizer import Tokenizer
    from weights.references import mcp as mcp_reference, upstream
    from weights.mapping.checkpoint import Checkpoint
    from weights.loading.hub import resolve_model
    from weights.core.prompts import generation_prompt

    torch.set_grad_enabled(False)
    t = time.perf_counter()
    ckpt = Checkpoint.open(resolve_model(a.model))
    cfg = ckpt.config
    llm = upstream.build("llm", cfg, ckpt.load("llm"))
    mcp = mcp_reference.build(cfg.mcp, ckpt.load("mcp"))
    dit = upstream.build("dit", cfg, ckpt.load("dit"))
    vae = upstream.build("vae", cfg, ckpt.load("vae"))
    sched = upstream.scheduler(cfg.scheduler)
    ids = Tokenizer.from_checkpoint(ckpt).encode_prompt(PROMPT, generation_prompt)
    load = time.perf_counter() - t

    t = time.perf_counter()
    hs = llm(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states
    ctx = mcp([torch.cat([torch.zeros_like(h), h]) for h in hs[-cfg.mcp.num_layers:]]).float()
    text = time.perf_counter() - t
    sched.set_timesteps(a.steps)
    lat = torch.from_numpy(__import__("numpy").random.default_rng(0).standard_normal(
        (1, *cfg.latent_shape)).astype("float32"))
    t = time.perf_counter()
    for ts in sched.timesteps:
        v = dit(torch.cat([lat, lat]), ctx, ts.expand(2)).sample
        u, c = v.chunk(2)
        lat = sched.step(u + cfg.defaults.guidance * (c - u), ts, lat).prev_sample
    denoise = time.perf_counter() - t
    t = time.perf_counter()
    img = vae.decode(lat / cfg.vae.scaling_factor).sample
    decode = time.perf_counter() - t
    per_step = denoise / a.steps
    return {"load_s": load, "text_s": text, "denoise_s": denoise, "per_step_s": per_step, "decode_s": decode,
            "total_20_s": text + per_step * STEPS_REPORTED + decode, "torch_version": torch.__version__,
            "threads": torch.get_num_threads(), "image_mean": float(img.mean())}


def work_load(a) -> dict:
    from mlx_model.support.mlx_folder import open_model
    from mlx_model.pipelines.generation import GenerationPipeline

    t = time.perf_counter()
    pipe = GenerationPipeline.from_checkpoint(open_model(a.model), quantize=a.quantize, low_memory=False)
    return {"load_s": time.perf_counter() - t, "mlx_peak_mb": {"load": pipe.load_peak_memory / 1e6}}


def work_decode(a) -> dict:
    import mlx.core as mx

    from mlx_model.components.llm import LanguageModel
    from mlx_model.support.mlx_folder import open_model

    t = time.perf_counter()
    ckpt = open_model(a.model)
    llm = LanguageModel.from_checkpoint(ckpt, a.quantize)
    load = time.perf_counter() - t
    vocab = ckpt.config.llm.vocab_size
    ids = [(i * 7919) % min(vocab, 20000) for i in range(1, 33)]  # a fixed 32-token prompt

    def greedy(logprobs):
        return mx.argmax(logprobs, axis=-1)

    if a.impl == "ours":
        from mlx_model.pipelines.understanding import decode_steps

        steps = decode_steps(llm, llm.embed(mx.array([ids])), greedy, a.tokens)
    else:
        from mlx_lm.generate import generate_step

        steps = (int(tok) for tok, _ in generate_step(mx.array(ids), llm.model, max_tokens=a.tokens, sampler=greedy))
    tokens, t0 = [], time.perf_counter()
    t1 = t0
    for tok in steps:
        if not tokens:
            t1 = time.perf_counter()
        tokens.append(tok)
    t2 = time.perf_counter()
    n = len(tokens) - 1
    return {"load_s": load, "prefill_s": t1 - t0, "tokens": len(tokens), "mlx_peak_mb": mx.get_peak_memory() / 1e6,
            "decode_tok_s": n / (t2 - t1) if n > 0 and t2 > t1 else 0.0, "token_ids": tokens}


# ------------------------------------------------------------------ per-op profile (one DiT step, one decode)
OP_KINDS = ("linear", "depthwise conv", "conv", "attention", "norm", "other")
OTHER = "other"  # elementwise, casts, transposes, reshapes, concatenations: what the blocks add around the ops


class OpTimer:
    """Exclusive seconds per op kind: each timed call's own time less its timed children's.
    MLX is lazy: a timed call first evaluates its inputs (that work belongs to the caller)
    and then its output, so the ops it launched are the ones it is charged for."""

    def __init__(self, sync=None):
        self.sync = sync or (lambda *_: None)
        self.seconds = {k: 0.0 for k in OP_KINDS}
        self.stack = [0.0]

    def timed(self, kind, fn):
        """``fn`` timed as ``kind`` (a name, or a function of the call's first argument: a
        method patched on a class, whose instances differ in kind)."""
        def run(*args, **kw):
            k = kind(args[0]) if callable(kind) else kind
            self.sync(args)
            self.stack.append(0.0)
            t = time.perf_counter()
            out = fn(*args, **kw)
            self.sync(out)
            took = time.perf_counter() - t
            self.seconds[k] += took - self.stack.pop()
            self.stack[-1] += took
            return out
        return run

    def total(self, fn, *args):
        t = time.perf_counter()
        out = fn(*args)
        self.sync(out)
        wall = time.perf_counter() - t
        self.seconds[OTHER] += wall - self.stack[-1]
        self.stack = [0.0]
        return wall


def _mlx_kind(m) -> str | None:
    import mlx.nn as nn

    from mlx_model.components import dcae, dit
    from mlx_model.components.conv_layers import DepthwiseConv2d

    if isinstance(m, (nn.Linear, nn.QuantizedLinear)):
        return "linear"
    if isinstance(m, DepthwiseConv2d) or (isinstance(m, nn.Conv2d) and m.weight.shape[-1] == 1):
        return "depthwise conv"
    if isinstance(m, nn.Conv2d):
        return "linear" if m.weight.shape[1:3] == (1, 1) else "conv"
    if isinstance(m, (dit.LinearAttention, dit.CrossAttention, dcae.MultiscaleLinearAttention)):
        return "attention"
    if isinstance(m, (dcae.RMSNorm, nn.RMSNorm, nn.LayerNorm)):
        return "norm"
    return None


def _mlx_instrument(timer, *modules):
    """Time every module call by kind (patched on the instances' classes for this process)."""
    from mlx_model.components import dit

    for module in modules:
        for _, m in module.named_modules():
            cls = type(m)
            if _mlx_kind(m) and "_op_timed" not in cls.__dict__:
                cls.__call__, cls._op_timed = timer.timed(_mlx_kind, cls.__call__), True
    dit._layer_norm = timer.timed("norm", dit._layer_norm)


def _torch_kind(m) -> str | None:
    import torch

    name = type(m).__name__
    if isinstance(m, torch.nn.Linear):
        return "linear"
    if isinstance(m, torch.nn.Conv2d):
        if m.groups > 1:
            return "depthwise conv" if m.groups == m.in_channels else "attention"  # DC-AE's grouped 1x1 aggregation
        return "linear" if m.kernel_size == (1, 1) else "conv"
    if name == "Attention" or name.endswith("LinearAttention"):
        return "attention"
    if "Norm" in name:
        return "norm"
    return None


def _torch_instrument(timer, *modules):
    for module in modules:
        for m in module.modules():
            kind = _torch_kind(m)
            if kind:
                m.forward = timer.timed(kind, m.forward)


def work_ops(a) -> dict:
    """One DiT call (the CFG pair, batch 2, at the model's latent size) and one decode, each
    per op kind (exclusive seconds), after one untimed warm-up; MLX or torch."""
    import numpy as np

    cfg_src = __import__("mlx_model.support.mlx_folder", fromlist=["open_model"]).open_model(a.model)
    cfg = cfg_src.config
    rng = np.random.default_rng(0)
    lat = rng.standard_normal((2, *cfg.latent_shape)).astype("float32")
    ctx = rng.standard_normal((2, 40, cfg.dit.caption_channels)).astype("float32")
    z = (lat[:1] / cfg.vae.scaling_factor).astype("float32")
    if a.impl == "torch":
        import torch

        from weights.references import upstream

        torch.set_grad_enabled(False)
        dit = upstream.build("dit", cfg, cfg_src.load("dit"))
        vae = upstream.build("vae", cfg, cfg_src.load("vae"))
        timer = OpTimer()
        step = lambda: dit(torch.from_numpy(lat), torch.from_numpy(ctx), torch.tensor([500.0, 500.0])).sample
        decode = lambda: vae.decode(torch.from_numpy(z)).sample
        instrument = lambda: _torch_instrument(timer, dit, vae)
        extra = {"torch_version": torch.__version__, "threads": torch.get_num_threads()}
    else:
        import mlx.core as mx

        from mlx_model.components.dcae import AutoencoderDC
        from mlx_model.components.dit import SanaTransformer

        dit = SanaTransformer.from_checkpoint(cfg_src, a.quantize)
        vae = AutoencoderDC.from_checkpoint(cfg_src, encoder=False)
        from mlx.utils import tree_flatten

        timer = OpTimer(sync=lambda x: mx.eval([v for _, v in tree_flatten(x, is_leaf=lambda v: not isinstance(
            v, (list, tuple, dict))) if isinstance(v, mx.array)]))
        step = lambda: dit(mx.array(lat), mx.array(ctx), mx.array([500.0, 500.0]))
        decode = lambda: vae.decode(mx.array(z))
        instrument = lambda: _mlx_instrument(timer, dit, vae)
        extra = {"mlx_version": mx.__version__}
    out = {}
    for phase, fn in (("dit_step", step), ("decode", decode)):
        timer.total(fn)  # warm-up (MLX compiles its shifted-sum kernels on first use)
    instrument()
    for phase, fn in (("dit_step", step), ("decode", decode)):
        timer.seconds = {k: 0.0 for k in OP_KINDS}
        wall = timer.total(fn)
        out[phase] = {"wall_s": wall, "ops_s": dict(timer.seconds)}
    return {**out, **extra}


WORKERS = {"generate": work_generate, "torch": work_torch, "load": work_load, "decode": work_decode,
           "ops": work_ops, "blas": lambda a: blas_info()}


def worker_main(argv) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("kind", choices=sorted(WORKERS))
    p.add_argument("--model", required=True)
    p.add_argument("-q", "--quantize", type=int, default=0)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--tokens", type=int, default=32)
    p.add_argument("--impl", default="ours")
    p.add_argument("--low-memory", default="off", choices=("auto", "on", "off"))
    p.add_argument("--malloc", default="default", choices=("default", "keep"),
                   help="keep: glibc keeps freed memory, as the MLX commands set it (platform.keep_freed_memory)")
    a = p.parse_args(argv)
    if a.malloc == "keep":
        from mlx_model.support.platform import keep_freed_memory

        keep_freed_memory()
    out = WORKERS[a.kind](a)
    out["malloc"] = a.malloc
    out["peak_rss_mb"] = peak_rss_mb()
    print("BENCH " + json.dumps(out), flush=True)


# ------------------------------------------------------------------ driver
BLAS_ENV = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")  # unset for the workers: OpenBLAS picks its own kernels


def run_worker(args: list[str], timeout: float) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", *args]
    env = {k: v for k, v in os.environ.items() if k not in BLAS_ENV}
    t = time.perf_counter()
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f}s"}
    wall = time.perf_counter() - t
    line = next((ln for ln in reversed(r.stdout.splitlines()) if ln.startswith("BENCH ")), None)
    if r.returncode or line is None:
        tail = (r.stderr or r.stdout).strip().splitlines()[-3:]
        return {"error": f"exit {r.returncode}: " + " / ".join(tail)}
    out = json.loads(line[len("BENCH "):])
    out["process_wall_s"] = wall
    return out


def q4_folder(model: str, given: str | None, out_dir: Path) -> str:
    if given:
        return given
    name = Path(model).name if model != "demo" else "demo"
    folder = out_dir / "bench" / f"{name}-q4"
    if not (folder / "config.json").is_file():
        folder.parent.mkdir(parents=True, exist_ok=True)
        print(f"converting {model} -> {folder} (4-bit) ...", flush=True)
        subprocess.run([sys.executable, "-m", "mlx_model.convert", "--model", model, "--quantize", "4",
                        "--out", str(folder)], check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return str(folder)


def fmt(v, spec=".2f") -> str:
    return "-" if v is None else format(v, spec)


def table(rows: list[dict]) -> str:
    lines = []
    gen = [r for r in rows if r["group"] == "generate"]
    if gen:
        lines += [f"whole generation ({PROMPT!r}, extrapolated to {STEPS_REPORTED} steps; with low memory the "
                  "components load inside their phases)",
                  f"{'contender':<40}{'load s':>8}{'text s':>8}{'s/step':>8}{'decode s':>9}"
                  f"{f'total@{STEPS_REPORTED} s':>13}{'peak RSS MB':>13}"]
        for r in gen:
            m = r["result"]
            if "error" in m:
                lines.append(f"{r['name']:<40}  {m['error']}")
                continue
            lines.append(f"{r['name']:<40}{fmt(m['load_s']):>8}{fmt(m['text_s']):>8}{fmt(m['per_step_s']):>8}"
                         f"{fmt(m['decode_s']):>9}{fmt(m['total_20_s']):>13}{fmt(m['peak_rss_mb'], '.0f'):>13}")
    load = [r for r in rows if r["group"] == "load"]
    if load:
        lines += ["", "load (-q 4, everything resident)", f"{'contender':<40}{'load s':>8}{'peak RSS MB':>13}"]
        for r in load:
            m = r["result"]
            lines.append(f"{r['name']:<40}  {m['error']}" if "error" in m else
                         f"{r['name']:<40}{fmt(m['load_s']):>8}{fmt(m['peak_rss_mb'], '.0f'):>13}")
    dec = [r for r in rows if r["group"] == "decode"]
    if dec:
        lines += ["", "understanding decode (4-bit LLM, greedy, 32-token prompt; mlx-lm's generate module imports "
                  "transformers, hence its RSS)",
                  f"{'contender':<40}{'prefill s':>10}{'tokens':>8}{'tok/s':>9}{'MLX peak MB':>13}{'peak RSS MB':>13}"]
        for r in dec:
            m = r["result"]
            lines.append(f"{r['name']:<40}  {m['error']}" if "error" in m else
                         f"{r['name']:<40}{fmt(m['prefill_s']):>10}{m['tokens']:>8}{fmt(m['decode_tok_s'], '.1f'):>9}"
                         f"{fmt(m['mlx_peak_mb'], '.0f'):>13}{fmt(m['peak_rss_mb'], '.0f'):>13}")
        ids = [r["result"].get("token_ids") for r in dec if "error" not in r["result"]]
        if len(ids) == 2:
            lines.append(f"same token ids: {ids[0] == ids[1]}")
    lines += ops_table([r for r in rows if r["group"] == "ops"])
    return "\n".join(lines)


def ops_table(ops: list[dict]) -> list[str]:
    """Seconds per op kind for one DiT call and one decode, each contender, and MLX / torch."""
    ok = [r for r in ops if "error" not in r["result"]]
    lines = [f"{r['name']:<40}  {r['result']['error']}" for r in ops if r not in ok]
    if not ok:
        return lines
    torch_row = next((r for r in ok if r["args"][-1] == "torch"), None)
    for phase, title in (("dit_step", "one DiT call (CFG pair, batch 2)"), ("decode", "one DC-AE decode")):
        lines += ["", f"per op kind, {title}: exclusive seconds (each op synchronised; 'other' = elementwise, "
                  "casts, transposes, reshapes around the ops)",
                  f"{'op kind':<16}" + "".join(f"{r['name'][:22]:>24}" for r in ok)
                  + ("".join(f"{'/torch ' + r['name'][:8]:>18}" for r in ok if r is not torch_row) if torch_row else "")]
        for kind in (*OP_KINDS, "total"):
            vals = [r["result"][phase]["wall_s"] if kind == "total" else r["result"][phase]["ops_s"][kind] for r in ok]
            row = f"{kind:<16}" + "".join(f"{v:>24.3f}" for v in vals)
            if torch_row:
                t = vals[ok.index(torch_row)]
                row += "".join(f"{(v / t if t > 0 else float('nan')):>18.2f}" for r, v in zip(ok, vals) if r is not torch_row)
            lines.append(row)
    return lines


def blas_info() -> dict:
    """The BLAS this process (and so every worker, LD_PRELOAD being inherited) runs: the
    library file mapped in and, for OpenBLAS, its configuration and core (kernel) name."""
    import ctypes

    import mlx.core as mx

    mx.eval(mx.ones((2, 2)) @ mx.ones((2, 2)))  # make sure a BLAS is mapped
    maps = Path("/proc/self/maps").read_text() if Path("/proc/self/maps").exists() else ""
    libs = sorted({ln.split()[-1] for ln in maps.splitlines() if "blas" in ln.lower() and "/" in ln})
    info = {"libraries": libs, "LD_PRELOAD": os.environ.get("LD_PRELOAD", "")}
    for lib in libs:
        try:
            h = ctypes.CDLL(lib)
            for fn in ("openblas_get_config", "openblas_get_corename"):
                f = getattr(h, fn)
                f.restype = ctypes.c_char_p
                info[fn.replace("openblas_get_", "openblas_")] = f().decode()
            break
        except (OSError, AttributeError):
            continue
    return info


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["--worker"]:
        worker_main(argv[1:])
        return 0
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="checkpoints/full", help="the bf16 checkpoint (or 'demo')")
    p.add_argument("--q4", help="its pre-quantized 4-bit MLX folder (default: converted into build/bench/)")
    p.add_argument("--steps", type=int, default=2, help="denoising steps run (reported per step and at 20)")
    p.add_argument("--tokens", type=int, default=32, help="answer tokens decoded")
    p.add_argument("--quick", action="store_true", help="1 step, 4 tokens (CI smoke run on --model demo)")
    p.add_argument("--no-torch", action="store_true", help="leave out the torch reference")
    p.add_argument("--no-ops", action="store_true", help="leave out the per-op profile")
    p.add_argument("--only", nargs="+", choices=("generate", "load", "decode", "ops"), help="run these groups only")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per contender")
    p.add_argument("--out", default=str(ROOT / "build"), help="folder for bench.json and bench.txt")
    a = p.parse_args(argv)
    if a.quick:
        a.steps, a.tokens = 1, 4
    out_dir = Path(a.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    q4 = q4_folder(a.model, a.q4, out_dir)
    s, n = ["--steps", str(a.steps)], ["--tokens", str(a.tokens)]
    keep = ["--malloc", "keep"]  # MLX rows run as the commands do (platform.prepare_cpu_process)
    contenders = [
        ("generate", "MLX -q 4 (folder)", ["generate", "--model", q4, "-q", "4", *s, *keep]),
        ("generate", "MLX -q 4 (folder), low memory",
         ["generate", "--model", q4, "-q", "4", "--low-memory", "on", *s, *keep]),
        ("generate", "MLX float (bf16 checkpoint)", ["generate", "--model", a.model, "-q", "0", *s, *keep]),
    ]
    if not a.no_torch:  # torch as users run it, and with the MLX commands' malloc setting
        contenders += [("generate", "torch reference (fp32)", ["torch", "--model", a.model, *s]),
                       ("generate", "torch, malloc as MLX's", ["torch", "--model", a.model, *s, *keep])]
    contenders += [
        ("load", "MLX -q 4 from bf16 checkpoint", ["load", "--model", a.model, "-q", "4", *keep]),
        ("load", "MLX -q 4 from pre-quantized folder", ["load", "--model", q4, "-q", "4", *keep]),
        ("decode", "ours (understanding.decode_steps)", ["decode", "--model", q4, "-q", "4", "--impl", "ours", *n, *keep]),
        ("decode", "mlx-lm generate_step", ["decode", "--model", q4, "-q", "4", "--impl", "mlx-lm", *n, *keep]),
    ]
    if not a.no_ops:
        contenders += [
            ("ops", "MLX float (bf16 checkpoint)", ["ops", "--model", a.model, "-q", "0", "--impl", "mlx", *keep]),
            ("ops", "MLX -q 4 (folder)", ["ops", "--model", q4, "-q", "4", "--impl", "mlx", *keep]),
        ] + ([] if a.no_torch else [("ops", "torch reference (fp32)", ["ops", "--model", a.model, "--impl", "torch"])])
    if a.only:
        contenders = [c for c in contenders if c[0] in a.only]
    rows = []
    blas = run_worker(["blas", "--model", "-"], 120)  # as the workers see it (their environment)
    blas.setdefault("libraries", [])
    print(f"BLAS: {blas.get('openblas_config') or blas['libraries']}; core {blas.get('openblas_corename', '?')}",
          file=sys.stderr, flush=True)
    info = {"blas": blas, "unset_env": sorted(k for k in BLAS_ENV if k in os.environ),
            "model": a.model, "q4_folder": q4, "steps": a.steps, "tokens": a.tokens, "python": sys.version.split()[0],
            "platform": platform.platform(), "cpus": os.cpu_count(), "rows": rows, "complete": False,
            "note": "reports, never asserts; peak RSS per process (VmHWM)"}
    for group, name, args in contenders:
        print(f"... {name}", file=sys.stderr, flush=True)
        rows.append({"group": group, "name": name, "args": args, "result": run_worker(args, a.timeout)})
        (out_dir / "bench.json").write_text(json.dumps(info, indent=2) + "\n")  # partial results survive a stop
    info["complete"] = True
    text = (f"BLAS: {blas.get('openblas_config') or ', '.join(blas['libraries']) or 'none found'}; "
            f"core (kernels) {blas.get('openblas_corename', 'unknown')}\n\n" + table(rows))
    print(text)
    (out_dir / "bench.json").write_text(json.dumps(info, indent=2) + "\n")
    (out_dir / "bench.txt").write_text(text + "\n")
    print(f"\nwrote {out_dir / 'bench.json'} and {out_dir / 'bench.txt'}")
    return 1 if any("error" in r["result"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
