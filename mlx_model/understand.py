"""``python -m mlx_model.understand IMAGE "question"``: Mobile-O answers a question about an
image, streamed, with MLX only (no torch); the closing lines are mlx-lm's.  The library is
:mod:`mlx_model.understanding`.
"""

from __future__ import annotations

import argparse
import sys

from weights.configs import GenerationDefaults
from weights.errors import run_cli
from weights.hub import DEFAULT_MODEL

from . import cli_common as cc
from .understanding import Understanding, check_options, check_question

__all__ = ["understand", "main"]


# ------------------------------------------------------------------ command line
def parser() -> argparse.ArgumentParser:
    d = GenerationDefaults()
    p = argparse.ArgumentParser(prog="python -m mlx_model.understand",
                                description="Ask Mobile-O about an image, with MLX.")
    p.add_argument("image", help="image file (anything Pillow opens)")
    p.add_argument("question", help="what to ask about the image")
    cc.add_model_options(p)
    g = p.add_argument_group("decoding")
    g.add_argument("--max-tokens", "-m", type=int, default=d.max_new_tokens,
                   help=f"most tokens to generate (default {d.max_new_tokens})")
    g.add_argument("--temp", type=float, default=d.temperature,
                   help=f"sampling temperature; 0 = greedy (default {d.temperature})")
    g.add_argument("--top-p", type=float, default=d.top_p, help=f"nucleus sampling; 1.0 = off (default {d.top_p})")
    g.add_argument("--top-k", type=int, default=d.top_k, help=f"sample from the k likeliest tokens; 0 = off (default {d.top_k})")
    g.add_argument("--seed", type=int, default=None, help="random seed for sampling (default: random)")
    p.add_argument("-v", "--verbose", action="store_true", help="print model and image details")
    return p


def understand(image, question: str, *, model: str = DEFAULT_MODEL, revision: str | None = None, quantize: int = 4,
               dtype: str | None = None, max_tokens: int | None = None, temp: float | None = None,
               top_p: float | None = None, top_k: int | None = None, seed: int | None = None, verbose: bool = False,
               out=None, pipeline: Understanding | None = None) -> str:
    """Stream the answer to ``out`` (stdout) and close with mlx-lm's statistics lines."""
    from weights.hub import open_model

    from .preprocess import preprocess

    out = out or sys.stdout
    d = GenerationDefaults()
    check_options(d.max_new_tokens if max_tokens is None else max_tokens,
                  d.temperature if temp is None else temp, d.top_p if top_p is None else top_p,
                  d.top_k if top_k is None else top_k)
    check_question(question)
    if pipeline is None:
        ckpt = open_model(model, revision=revision)
        pixels = preprocess(image, ckpt.config.preprocess)[None]  # bad images fail before loading weights
        pipeline = Understanding.from_checkpoint(ckpt, quantize=quantize, dtype=cc.dtype_of(dtype))
    else:
        pixels = pipeline.encoder.pixels(image)
    if verbose:
        v = pipeline.config.vision
        print(f"model: {pipeline.source}; quantize: {pipeline.quantize or 'float'}; "
              f"dtype: {cc.dtype_name(pipeline.llm.dtype)}; image {v.image_size}x{v.image_size} -> "
              f"{v.num_tokens} tokens; loaded in {pipeline.load_seconds:.2f}s", file=out)
    print("=" * 10, file=out)
    text, r = "", None
    for r in pipeline.stream(pixels[0], question, max_tokens=max_tokens, temp=temp, top_p=top_p, top_k=top_k,
                             seed=seed):
        print(r.text, end="", file=out, flush=True)
        text += r.text
    print(file=out)
    print("=" * 10, file=out)
    if verbose:
        print(f"Image: {r.image_seconds:.3f} s (preprocess, vision tower, projector)", file=out)
    print(f"Prompt: {r.prompt_tokens} tokens, {r.prompt_tps:.3f} tokens-per-sec", file=out)
    print(f"Generation: {r.generation_tokens} tokens, {r.generation_tps:.3f} tokens-per-sec", file=out)
    print(f"Peak memory: {r.peak_memory:.3f} GB", file=out)
    return text


def main(argv: list[str] | None = None) -> None:
    from .platform import use_openblas

    if argv is None:
        use_openblas()
    a = parser().parse_args(argv)
    run_cli(lambda: understand(a.image, a.question, model=a.model, revision=a.revision, quantize=a.quantize,
                               dtype=a.dtype, max_tokens=a.max_tokens, temp=a.temp, top_p=a.top_p, top_k=a.top_k, seed=a.seed,
                               verbose=a.verbose))


if __name__ == "__main__":
    main()
