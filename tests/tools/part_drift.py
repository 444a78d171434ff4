"""Drift of the vision tower's / VAE decoder's quantized matmul layers against their float path
(issue 24: how ``mlx_model.support.quant.PART_BITS`` was chosen; README, section "MLX folder").

    python tests/tools/part_drift.py --model checkpoints/full --part vae --variants 4/64/all,8/64/all,4/64/ffn
    python tests/tools/part_drift.py --model demo --part vision --variants 4/32/all,8/32/all

A variant is ``bits/group/kind``; kind ``all`` quantizes every layer ``-q`` would (Linear layers
and 1x1 convolutions), ``ffn`` only the feed-forward 1x1 convolutions, ``attn`` only the
attention projections.  The VAE decodes one normal latent; the tower encodes one uniform
image.  Printed: PSNR (20 log10(max|ref| / RMSE), as tests/metrics.py), SNR, and for the VAE
the PSNR of the 8-bit pixels; seconds per run (a loaded machine makes them loose).  Heavy at
full size: run it under ``flock /tmp/bigrun.lock`` on shared machines.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the tests' own metrics
from metrics import psnr, snr  # noqa: E402

KINDS = {"all": lambda p: True,
         "ffn": lambda p: any(k in p for k in ("fc1", "fc2", "conv_inverted", "conv_point")),
         "attn": lambda p: any(k in p for k in ("qkv", "proj", "to_q", "to_k", "to_v", "to_out"))}


def quantized(module, bits: int, group: int, kind: str):
    """``module``'s layers of ``kind`` quantized as ``-q`` does (bf16 scales, the CPU's compute form)."""
    import mlx.core as mx
    import mlx.nn as nn

    from mlx_model.support.quant import finish_quantized, quantizable, scales_to_stored

    base = quantizable(group)
    nn.quantize(module, group_size=group, bits=bits, class_predicate=lambda p, m: base(p, m) and KINDS[kind](p))
    scales_to_stored(module)
    return finish_quantized(module, None, mx.float32)


def runner(ckpt, part: str):
    """(build the float part, run it) for ``part``."""
    import mlx.core as mx

    cfg = ckpt.config
    if part == "vae":
        from mlx_model.components.dcae import AutoencoderDC

        z = mx.array(np.random.default_rng(0).standard_normal((1, *cfg.latent_shape)).astype(np.float32))
        return (lambda: AutoencoderDC.from_checkpoint(ckpt, encoder=False)), (lambda m: m.decode(z)), "decoder"
    from mlx_model.components.vision import VisionTower

    s = cfg.vision.image_size
    x = mx.array(np.random.default_rng(0).uniform(0, 1, (1, s, s, 3)).astype(np.float32))
    return (lambda: VisionTower.from_checkpoint(ckpt)), (lambda m: m(x)), None


def main(argv=None) -> None:
    import mlx.core as mx

    from mlx_model.support.mlx_folder import open_model
    from mlx_model.support.platform import prepare_cpu_process

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="demo")
    p.add_argument("--part", choices=("vae", "vision"), required=True)
    p.add_argument("--variants", default="4/64/all,8/64/all")
    a = p.parse_args(argv)
    prepare_cpu_process()
    build, run, sub = runner(open_model(a.model), a.part)

    def timed(m):
        t = time.perf_counter()
        y = run(m)
        mx.eval(y)
        return np.array(y.astype(mx.float32)), time.perf_counter() - t

    ref, t0 = timed(build())
    print(f"{a.part} float: {t0:.1f} s, output {ref.shape}", flush=True)
    for v in a.variants.split(","):
        bits, group, kind = v.split("/")
        m = build()
        quantized(getattr(m, sub) if sub else m, int(bits), int(group), kind)
        got, t = timed(m)
        line = f"{a.part} {v}: PSNR {psnr(ref, got):.2f} dB, SNR {snr(ref, got):.2f} dB"
        if a.part == "vae":
            px = [np.round((np.clip(x, -1, 1) / 2 + 0.5) * 255) for x in (ref, got)]
            line += f", 8-bit pixels {10 * np.log10(255 ** 2 / np.mean((px[0] - px[1]) ** 2)):.2f} dB"
        print(f"{line}, {t:.1f} s", flush=True)


if __name__ == "__main__":
    main()
