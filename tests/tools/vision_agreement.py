"""Understanding with the ``-q 4`` folder's 4-bit vision tower vs a float one, the same 4-bit
LLM: how often the greedy answers agree (issue 24: the 4-bit tower is the folder's largest
drift on random weights; README, section "MLX folder").

    python tests/tools/vision_agreement.py --model checkpoints/full --q4 DIR [--tokens 32]

For each test image (uniform noise, a gradient, a checkerboard, a disc): the projected image
tokens' PSNR and SNR (float tower as the reference), and the greedy answers' agreement: the
fraction of positions with the same token, and the first position where they differ.  Random
weights answer nonsense, but the same nonsense from both towers is what is measured.  Heavy at
full size (~2 GB): run it under ``flock /tmp/bigrun.lock`` on shared machines.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the tests' own metrics
from metrics import psnr  # noqa: E402
from part_drift import snr  # noqa: E402  (tests/tools/, this file's folder)

QUESTION = "Describe this image in detail."


def images(size: int = 512) -> dict:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size] / size
    disc = ((yy - 0.5) ** 2 + (xx - 0.5) ** 2 < 0.1).astype(np.float32)
    return {"noise": rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
            "gradient": (np.stack([xx, yy, 1 - xx], -1) * 255).astype(np.uint8),
            "checkerboard": ((((yy * 8).astype(int) + (xx * 8).astype(int)) % 2)[..., None] * 255).repeat(3, -1)
            .astype(np.uint8),
            "disc": (np.stack([disc, disc * 0.3, 1 - disc], -1) * 255).astype(np.uint8)}


def main(argv=None) -> None:
    import mlx.core as mx

    from mlx_model.components.multimodal import ImageEncoder
    from mlx_model.pipelines.understanding import Understanding
    from mlx_model.support.mlx_folder import open_model
    from mlx_model.support.platform import prepare_cpu_process

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="checkpoints/full", help="the float (bf16) checkpoint: the float tower")
    p.add_argument("--q4", required=True, help="its -q 4 MLX folder: the LLM and the 4-bit tower")
    p.add_argument("--tokens", type=int, default=32)
    a = p.parse_args(argv)
    prepare_cpu_process()
    q4 = Understanding.from_checkpoint(open_model(a.q4), quantize=4, low_memory=False)
    ref = Understanding(q4.llm, ImageEncoder.from_checkpoint(open_model(a.model), 0), q4.config, quantize=4,
                        tokenizer=q4.tokenizer)
    same, total = 0, 0
    for name, img in images().items():
        feats = [np.array(u.encoder.encode(img)) for u in (ref, q4)]
        answers = [[r.token for r in u.stream(img, QUESTION, max_tokens=a.tokens, temp=0.0, stop_at_eos=False)
                    if r.token is not None] for u in (ref, q4)]
        n = min(map(len, answers))
        agree = sum(x == y for x, y in zip(*answers))
        first = next((i for i, (x, y) in enumerate(zip(*answers)) if x != y), None)
        same, total = same + agree, total + n
        print(f"{name}: image tokens PSNR {psnr(*feats):.1f} dB, SNR {snr(*feats):.1f} dB; answers agree at "
              f"{agree}/{n} positions, first difference at {first if first is not None else '-'}", flush=True)
        mx.clear_cache()
    print(f"all images: {same}/{total} positions agree ({same / max(1, total):.0%})")


if __name__ == "__main__":
    main()
