"""DC-AE decode from the float checkpoint vs from a ``-q 4`` MLX folder, side by side in one
process (alternating float, folder, folder, float on the same latent), for a loaded machine
where separate processes measure the machine more than the code (issue 24).

    python tests/tools/decode_ab.py --model checkpoints/full --q4 DIR

Heavy at full size (~1.5 GB, minutes): run it under ``flock /tmp/bigrun.lock`` on shared machines.
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def main(argv=None) -> None:
    import mlx.core as mx

    from mlx_model.components.dcae import AutoencoderDC
    from mlx_model.support.mlx_folder import open_model
    from mlx_model.support.platform import use_openblas

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="checkpoints/full", help="the float (bf16) checkpoint")
    p.add_argument("--q4", required=True, help="its -q 4 MLX folder")
    a = p.parse_args(argv)
    use_openblas()
    full = open_model(a.model)
    parts = {"float": AutoencoderDC.from_checkpoint(full, encoder=False),
             "q4 folder": AutoencoderDC.from_checkpoint(open_model(a.q4), encoder=False, quantize=4)}
    z = mx.array(np.random.default_rng(0).standard_normal((1, *full.config.latent_shape)).astype(np.float32))
    seconds = {k: [] for k in parts}
    for name in ("float", "q4 folder", "q4 folder", "float"):
        t = time.perf_counter()
        mx.eval(parts[name].decode(z))
        seconds[name].append(time.perf_counter() - t)
        print(f"{name}: {seconds[name][-1]:.1f} s", flush=True)
    f, q = sum(seconds["float"]), sum(seconds["q4 folder"])
    print(f"total float {f:.1f} s, q4 folder {q:.1f} s, ratio {q / f:.3f}")


if __name__ == "__main__":
    main()
