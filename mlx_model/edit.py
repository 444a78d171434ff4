"""``python -m mlx_model.edit IMAGE "instruction"``: Mobile-O image editing with MLX only.

Editing is generation with another conditioning source (:class:`mlx_model.pipeline.
GenerationPipeline` loaded with ``edit=True``); this command shares the generation options
and output handling (:mod:`mlx_model.cli_common`).

Python use:

    from mlx_model.pipeline import GenerationPipeline
    pipe = GenerationPipeline.from_pretrained("demo", quantize=0, edit=True)
    out = pipe.edit("photo.jpg", "make it snowy", steps=20, seed=0)
    out.images          # uint8 [n, H, W, 3]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from weights.configs import DEFAULT_SAMPLER
from weights.hub import DEFAULT_MODEL
from weights.errors import run_cli

from . import cli_common as cc
from .tokenizer import PromptError

__all__ = ["edit", "main"]


# ------------------------------------------------------------------ command line
def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m mlx_model.edit",
                                description="Edit an image following an instruction, with Mobile-O in MLX.")
    p.add_argument("image", help="image to edit (anything Pillow opens)")
    p.add_argument("instruction", help="what to change")
    cc.add_model_options(p)
    cc.add_sampling_options(p)
    cc.add_output_options(p, default="edited.png")
    return p


def edit(image, instruction: str, *, model: str = DEFAULT_MODEL, revision: str | None = None, quantize: int = 4,
         dtype: str | None = None, steps: int | None = None, guidance: float | None = None, seed: int | None = None,
         n_images: int = 1, latents=None, scheduler: str = DEFAULT_SAMPLER, output: str | Path = "edited.png",
         metadata: bool = False, verbose: bool = False, progress: bool = False,
         pipeline=None, log=None) -> list[Path]:
    """Edit ``image`` ``n_images`` times and save PNGs; returns the paths written.
    ``pipeline``: reuse a loaded :class:`~mlx_model.pipeline.GenerationPipeline` (``edit=True``)."""
    from .pipeline import GenerationPipeline
    from .preprocess import load_image

    log = log or (lambda msg: print(msg, flush=True))
    if not instruction or not instruction.strip():  # fail before loading anything
        raise PromptError("the instruction is empty.", fix="say what to change, e.g. \"make it snowy\".")
    source = load_image(image)  # unreadable images fail before loading weights
    latents, latents_file = cc.latents_arg(latents)
    if pipeline is None:
        pipeline = GenerationPipeline.from_pretrained(model, quantize=quantize, dtype=cc.dtype_of(dtype),
                                                      revision=revision, edit=True)
    pixels = pipeline.encoder.pixels(source)
    if verbose:
        c = pipeline.config
        log(f"model: {pipeline.source}; quantize: {pipeline.quantize or 'float'}; dtype: {cc.dtype_name(pipeline.dtype)}; "
            f"input {source.width}x{source.height} -> {c.vision.image_size}x{c.vision.image_size} "
            f"({c.vision.num_tokens} image tokens); output {c.image_size}x{c.image_size}")
    meta = {"task": "edit", "image": str(image) if isinstance(image, (str, Path)) else None,
            "instruction": instruction, "model": model, "revision": revision, "latents": latents_file}
    return cc.run_and_save(pipeline, instruction, image=pixels, meta=meta, steps=steps, guidance=guidance, seed=seed,
                           n_images=n_images, latents=latents, scheduler=scheduler, output=output,
                           metadata=metadata, verbose=verbose, progress=progress, log=log)


def main(argv: list[str] | None = None) -> None:
    from .platform import use_openblas

    if argv is None:
        use_openblas()
    a = parser().parse_args(argv)
    run_cli(lambda: edit(a.image, a.instruction, model=a.model, revision=a.revision, quantize=a.quantize,
                         dtype=a.dtype, steps=a.steps, guidance=a.guidance, seed=a.seed, n_images=a.n_images,
                         latents=a.latents, scheduler=a.scheduler, output=a.output, metadata=a.metadata,
                         verbose=a.verbose, progress=sys.stderr.isatty() or a.verbose))


if __name__ == "__main__":
    main()
