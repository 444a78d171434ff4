"""``python -m mlx_model.generate "a red cup"``: a Mobile-O image with MLX only (no torch).

Python use, same options:

    from mlx_model.generate import generate
    paths = generate("a red cup", model="demo", steps=20, seed=0)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from weights.configs import DEFAULT_SAMPLER
from weights.hub import DEFAULT_MODEL
from weights.errors import run_cli

from . import cli_common as cc

__all__ = ["generate", "main"]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m mlx_model.generate",
                                description="Make an image from a prompt with Mobile-O in MLX.")
    p.add_argument("prompt", help="what to draw")
    cc.add_model_options(p)
    cc.add_sampling_options(p)
    cc.add_output_options(p)
    return p


def generate(prompt: str, *, model: str = DEFAULT_MODEL, revision: str | None = None, quantize: int = 4,
             dtype: str | None = None, steps: int | None = None, guidance: float | None = None, seed: int | None = None,
             n_images: int = 1, latents=None, scheduler: str = DEFAULT_SAMPLER, output: str | Path = "image.png",
             metadata: bool = False, verbose: bool = False, progress: bool = False, pipeline=None,
             log=None) -> list[Path]:
    """Make ``n_images`` images and save them as PNGs; returns the paths written.

    ``latents``: an array or a .npy path of shape (n_images, C, h, w).  ``pipeline``: reuse a
    loaded :class:`~mlx_model.pipeline.GenerationPipeline` (``model``/``quantize``/``dtype`` ignored).
    """
    from .pipeline import GenerationPipeline

    log = log or (lambda msg: print(msg, flush=True))

    if not prompt or not prompt.strip():  # fail before loading anything
        from .tokenizer import PromptError

        raise PromptError("the prompt is empty.", fix="pass a non-empty prompt, e.g. \"a red cup\".")
    latents, latents_file = cc.latents_arg(latents)
    if pipeline is None:
        pipeline = GenerationPipeline.from_pretrained(model, quantize=quantize, dtype=cc.dtype_of(dtype),
                                                      revision=revision)
    if verbose:
        c = pipeline.config
        log(f"model: {pipeline.source} ({c.diffusion_name_or_path}); quantize: {pipeline.quantize or 'float'}; "
            f"dtype: {cc.dtype_name(pipeline.dtype)}; image {c.image_size}x{c.image_size}, latents {list(c.latent_shape)}")
    meta = {"prompt": prompt, "model": model, "revision": revision, "latents": latents_file}
    return cc.run_and_save(pipeline, prompt, meta=meta, steps=steps, guidance=guidance, seed=seed,
                           n_images=n_images, latents=latents, scheduler=scheduler, output=output,
                           metadata=metadata, verbose=verbose, progress=progress, log=log)


def main(argv: list[str] | None = None) -> None:
    from .platform import use_openblas

    if argv is None:
        use_openblas()
    a = parser().parse_args(argv)
    run_cli(lambda: generate(a.prompt, model=a.model, revision=a.revision, quantize=a.quantize, dtype=a.dtype,
                             steps=a.steps, guidance=a.guidance, seed=a.seed, n_images=a.n_images,
                             latents=a.latents, scheduler=a.scheduler, output=a.output,
                             metadata=a.metadata, verbose=a.verbose, progress=sys.stderr.isatty() or a.verbose))


if __name__ == "__main__":
    main()
