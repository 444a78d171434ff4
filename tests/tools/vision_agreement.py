"""Understanding with the ``-q 4`` folder's 4-bit vision tower vs a float one, the same 4-bit
LLM (issue 24: the 4-bit tower is the folder's largest drift on random weights; README,
section "MLX folder").

    python tests/tools/vision_agreement.py --model checkpoints/full --q4 DIR [--tokens 32]

For each test image (uniform noise, a gradient, a checkerboard, a disc): the projected image
tokens' PSNR and SNR against the float tower's; then the LLM reads the prompt with each
tower's image tokens followed by one fixed answer (the float tower's greedy answer,
teacher-forced), and the next-token predictions at those answer positions are compared: top-1
agreement and the mean KL divergence (float || quantized).  An 8-bit tower gives the scale.
Free-running greedy answers are also compared (first differing position).  Random weights:
the tower's output barely depends on the image (two images differ by ~1e-4 of its range), and
the random LLM's logits are nearly tied, so these figures bound the drift but say little about
answers on trained weights.  Heavy at full size (~2 GB): run it under
``flock /tmp/bigrun.lock`` on shared machines.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the tests' own metrics
from metrics import psnr, snr  # noqa: E402

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


def predictions(u, image_tokens, answer: list[int]):
    """Log-probabilities [T, V] of the LLM's next token at each answer position (teacher-forced)."""
    import mlx.core as mx

    prompt = u.prompt(QUESTION)
    embeds = mx.concatenate([prompt.embed(u.llm, image_tokens), u.llm.embed(mx.array([answer[:-1]]))], axis=1)
    logits = u.llm(embeds)[0, -len(answer):].astype(mx.float32)
    return np.array(logits - mx.logsumexp(logits, axis=-1, keepdims=True))


def main(argv=None) -> None:
    import mlx.core as mx

    from mlx_model.components.multimodal import ImageEncoder
    from mlx_model.pipelines.understanding import Understanding
    from mlx_model.support.mlx_folder import open_model
    from mlx_model.support.platform import prepare_cpu_process
    from mlx_model.support.quant import PART_BITS

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="checkpoints/full", help="the float (bf16) checkpoint: the float and 8-bit towers")
    p.add_argument("--q4", required=True, help="its -q 4 MLX folder: the LLM and the 4-bit tower")
    p.add_argument("--tokens", type=int, default=32)
    a = p.parse_args(argv)
    prepare_cpu_process()
    q4 = Understanding.from_checkpoint(open_model(a.q4), quantize=4, low_memory=False)
    src = open_model(a.model)
    towers = {"float": ImageEncoder.from_checkpoint(src, 0), f"{PART_BITS['vision']}-bit (folder)": q4.encoder,
              "8-bit": ImageEncoder.from_checkpoint(src, 8)}
    ref = Understanding(q4.llm, towers["float"], q4.config, quantize=4, tokenizer=q4.tokenizer)
    for name, img in images().items():
        answer = [r.token for r in ref.stream(img, QUESTION, max_tokens=a.tokens, temp=0.0, stop_at_eos=False)
                  if r.token is not None]
        tokens = {k: enc.encode(img) for k, enc in towers.items()}
        lp = {k: predictions(ref, t, answer) for k, t in tokens.items()}
        for k in list(towers)[1:]:
            f, q = np.array(tokens["float"]), np.array(tokens[k])
            top1 = float(np.mean(lp[k].argmax(-1) == lp["float"].argmax(-1)))
            kl = float(np.mean(np.sum(np.exp(lp["float"]) * (lp["float"] - lp[k]), axis=-1)))
            u = Understanding(q4.llm, towers[k], q4.config, quantize=4, tokenizer=q4.tokenizer)
            free = [r.token for r in u.stream(img, QUESTION, max_tokens=a.tokens, temp=0.0, stop_at_eos=False)
                    if r.token is not None]
            first = next((i for i, (x, y) in enumerate(zip(answer, free)) if x != y), None)
            print(f"{name}, {k} tower: image tokens PSNR {psnr(f, q):.1f} dB, SNR {snr(f, q):.1f} dB; teacher-forced "
                  f"top-1 agreement {top1:.0%} over {len(answer)} positions, mean KL {kl:.2e} nats; free-running "
                  f"answers first differ at {first if first is not None else '-'}", flush=True)
        mx.clear_cache()


if __name__ == "__main__":
    main()
