"""One DiT call (the CFG pair) or one DC-AE decode from the float checkpoint vs from a ``-q 4``
MLX folder (and torch's reference), side by side in one process: the contenders
alternate (float, folder, [torch,] folder, float, ...) on the same inputs, so a loaded machine
measures the code more than the machine (issue 24).  Prints each run and the medians.

    python tests/tools/q4_ab.py --model checkpoints/full --q4 DIR --part dit|vae [--rounds 2] [--torch]

Heavy at full size (~1.5-3 GB, minutes): run it under ``flock /tmp/bigrun.lock`` on shared machines.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np


def _mlx_runs(part: str, model: str, q4: str, cfg):
    import mlx.core as mx

    from mlx_model.components.dcae import AutoencoderDC
    from mlx_model.components.dit import SanaTransformer
    from mlx_model.support.mlx_folder import open_model

    rng = np.random.default_rng(0)
    if part == "vae":
        z = mx.array(rng.standard_normal((1, *cfg.latent_shape)).astype(np.float32))
        make = lambda src, q: AutoencoderDC.from_checkpoint(src, encoder=False, quantize=q)
        call = lambda vae: vae.decode(z)
    else:
        lat = mx.array(rng.standard_normal((2, *cfg.latent_shape)).astype(np.float32))
        ctx = mx.array(rng.standard_normal((2, 40, cfg.dit.caption_channels)).astype(np.float32))
        make = lambda src, q: SanaTransformer.from_checkpoint(src, q)
        call = lambda dit: dit(lat, ctx, mx.array([500.0, 500.0]))
    runs = {}
    for name, src, q in (("float", model, 0), ("q4 folder", q4, 4)):
        m = make(open_model(src), q)
        runs[name] = lambda m=m: mx.eval(call(m))
    return runs


def _torch_run(part: str, model: str, cfg):
    import torch

    from mlx_model.support.mlx_folder import open_model
    from weights.references import upstream

    torch.set_grad_enabled(False)
    rng = np.random.default_rng(0)
    if part == "vae":
        z = torch.from_numpy(rng.standard_normal((1, *cfg.latent_shape)).astype(np.float32))
        vae = upstream.build("vae", cfg, open_model(model).load("vae"))
        return lambda: vae.decode(z).sample
    lat = torch.from_numpy(rng.standard_normal((2, *cfg.latent_shape)).astype(np.float32))
    ctx = torch.from_numpy(rng.standard_normal((2, 40, cfg.dit.caption_channels)).astype(np.float32))
    dit = upstream.build("dit", cfg, open_model(model).load("dit"))
    return lambda: dit(lat, ctx, torch.tensor([500.0, 500.0])).sample


def main(argv=None) -> None:
    from mlx_model.support.mlx_folder import open_model
    from mlx_model.support.platform import prepare_cpu_process

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="checkpoints/full", help="the float (bf16) checkpoint")
    p.add_argument("--q4", required=True, help="its -q 4 MLX folder")
    p.add_argument("--part", choices=("dit", "vae"), default="vae")
    p.add_argument("--rounds", type=int, default=2, help="rounds of (float, folder[, torch], folder, float)")
    p.add_argument("--torch", action="store_true", help="also torch's reference (diffusers' modules)")
    a = p.parse_args(argv)
    prepare_cpu_process()
    cfg = open_model(a.model).config
    runs = _mlx_runs(a.part, a.model, a.q4, cfg)
    if a.torch:
        runs["torch"] = _torch_run(a.part, a.model, cfg)
    for fn in runs.values():  # warm-up: compiled kernels, first allocations
        fn()
    order = ["float", "q4 folder", *(["torch"] if "torch" in runs else []), "q4 folder", "float"]
    seconds = {k: [] for k in runs}
    for _ in range(a.rounds):
        for name in order:
            t = time.perf_counter()
            runs[name]()
            seconds[name].append(time.perf_counter() - t)
            print(f"{name}: {seconds[name][-1]:.2f} s", flush=True)
    med = {k: statistics.median(v) for k, v in seconds.items()}
    print("medians: " + ", ".join(f"{k} {v:.2f} s" for k, v in med.items()))
    print("q4 folder / float: " + f"{med['q4 folder'] / med['float']:.3f}"
          + (f"; float / torch {med['float'] / med['torch']:.3f}, q4 folder / torch {med['q4 folder'] / med['torch']:.3f}"
             if "torch" in med else ""))


if __name__ == "__main__":
    main()
