"""Side-by-side benchmark (`make bench`): the MLX pipeline's heavy stages vs the upstream torch
references on the same full-size weights and inputs, in one run.  Reports seconds (best of
``--repeat``), the ours/torch ratio, peak memory (MLX: ``mx.get_peak_memory``; torch: the
process's peak RSS in that window) and weight bytes (bf16 checkpoint, MLX fp32, MLX 4-bit).

    python tests/bench.py --model checkpoints/full [--repeat 2]

Not a test: numbers depend on the machine (Apple silicon is the target; on Linux MLX runs
on the CPU with OpenBLAS).  The parity of the same stages is checked by the test suite.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from coreml_convert.cli import peak_rss_mb, reset_peak_rss  # noqa: E402


def timed(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def mlx_run(build, call, repeat):
    import mlx.core as mx

    model = build()
    mx.reset_peak_memory()
    sec = timed(lambda: mx.eval(call(model)), repeat)
    peak = mx.get_peak_memory() / 1e6
    del model
    gc.collect()
    mx.clear_cache()  # so the torch stage's RSS window does not hold MLX's cached buffers
    return sec, peak


def torch_run(build, call, repeat):
    import torch

    model = build()
    reset_peak_rss()
    with torch.no_grad():
        sec = timed(lambda: call(model), repeat)
    peak = peak_rss_mb()
    del model
    gc.collect()
    return sec, peak


def weight_bytes(module) -> int:
    from mlx.utils import tree_flatten

    return sum(v.nbytes for _, v in tree_flatten(module.parameters()))


def main(argv=None):
    import mlx.core as mx
    import torch

    from mlx_model.dcae import AutoencoderDC
    from mlx_model.dit import SanaTransformer
    from mlx_model.llm import LanguageModel, quantize_linears
    from weights import upstream
    from weights.checkpoint import Checkpoint

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="checkpoints/full")
    p.add_argument("--repeat", type=int, default=2)
    a = p.parse_args(argv)
    ckpt = Checkpoint.open(a.model)
    cfg = ckpt.config
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 1000, (1, 64))
    lat = rng.standard_normal((2, *cfg.latent_shape)).astype(np.float32)  # CFG batch
    ctx = rng.standard_normal((2, 64, cfg.dit.caption_channels)).astype(np.float32)
    t = np.array([500.0, 500.0], np.float32)
    z = lat[:1]

    stages = {
        "llm prompt (64 tok, last 4 hidden)": (
            lambda: LanguageModel.from_checkpoint(ckpt),
            lambda m: m.hidden_states(m.embed(mx.array(ids)), cfg.mcp.num_layers),
            lambda: upstream.build("llm", cfg, ckpt.load("llm")),
            lambda m: m(input_ids=torch.from_numpy(ids), output_hidden_states=True)),
        "dit step (batch 2, 16x16, 64 tok)": (
            lambda: SanaTransformer.from_checkpoint(ckpt),
            lambda m: m(mx.array(lat), mx.array(ctx), mx.array(t)),
            lambda: upstream.build("dit", cfg, ckpt.load("dit")),
            lambda m: m(torch.from_numpy(lat), torch.from_numpy(ctx), torch.from_numpy(t))),
        "vae decode (512x512)": (
            lambda: AutoencoderDC.from_checkpoint(ckpt, encoder=False),
            lambda m: m.decode(mx.array(z)),
            lambda: upstream.build("vae", cfg, ckpt.load("vae")),
            lambda m: m.decode(torch.from_numpy(z))),
    }
    print(f"{'stage':<36}{'mlx s':>9}{'torch s':>9}{'ratio':>8}{'mlx peak MB':>13}{'torch peak RSS MB':>19}")
    for name, (mb, mc, tb, tc) in stages.items():
        ms, mp = mlx_run(mb, mc, a.repeat)
        ts, tp = torch_run(tb, tc, a.repeat)
        print(f"{name:<36}{ms:>9.2f}{ts:>9.2f}{ms / ts:>8.2f}{mp:>13.0f}{tp:>19.0f}", flush=True)

    print("\nweight bytes (LLM + DiT, the quantized parts)")
    disk = sum(ckpt.info(ck).end - ckpt.info(ck).start
               for c in ("llm", "dit") for ck in ckpt.split.components[c].values())
    llm = LanguageModel.from_checkpoint(ckpt).model
    dit = SanaTransformer.from_checkpoint(ckpt)
    fp32 = weight_bytes(llm) + weight_bytes(dit)
    q4 = weight_bytes(quantize_linears(llm, 4, dequantize=False)) + weight_bytes(
        quantize_linears(dit, 4, dequantize=False))
    print(f"  checkpoint bf16 {disk / 1e9:.2f} GB | MLX fp32 {fp32 / 1e9:.2f} GB | MLX 4-bit {q4 / 1e9:.2f} GB "
          f"({fp32 / q4:.1f}x smaller than fp32)")


if __name__ == "__main__":
    main()
