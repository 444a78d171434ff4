"""``mobileo-generate --prompt "a red cup"`` (or ``python -m mlx_model.generate "a red cup"``):
a Mobile-O image with MLX only (no torch).  The flags are mflux's where it has them
(``--prompt``, several ``--seed`` values, ``--width/--height``, ``--stepwise-image-output-dir``,
``--config-from-metadata``, ``--metadata``, ``-q``).

Python use, same options:

    from mlx_model.generate import generate
    paths = generate("a red cup", model="demo", steps=20, seed=0)

Many prompts, in one process or shared among several started by ``mlx.launch``
(:mod:`mlx_model.pipelines.batch`, docs/batch-generation.md):

    mobileo-generate --prompts-file prompts.txt --output-dir images/
    mlx.launch -n 2 --backend ring -- python -m mlx_model.generate --prompts-file prompts.txt --output-dir images/
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from weights.core.configs import DEFAULT_SAMPLER
from weights.core.errors import MobileOError
from weights.loading.hub import DEFAULT_MODEL

from mlx_model import cli_common as cc
from mlx_model.support import image_files

__all__ = ["generate", "main"]


def parser(batch: bool = False) -> argparse.ArgumentParser:
    """The options; without ``batch``, only those of one prompt (the ones mobileo-edit shares);
    with it, also ``--prompts-file`` / ``--output-dir`` (the command line's parser)."""
    p = argparse.ArgumentParser(prog="mobileo-generate", description="Make an image from a prompt with Mobile-O in MLX.")
    cc.add_text_argument(p, "prompt", "what to draw")
    cc.add_model_options(p)
    cc.add_sampling_options(p)
    cc.add_output_options(p)
    p.set_defaults(output=None)  # None: not given (--prompts-file refuses it); one image goes to image.png
    if batch:
        cc.add_batch_options(p)
    return p


def generate(prompt: str, *, model: str = DEFAULT_MODEL, revision: str | None = None, quantize: int = 4,
             dtype: str | None = None, low_memory: bool | None = None, steps: int | None = None,
             guidance: float | None = None,
             seed: int | list[int] | None = None, n_images: int = 1, latents=None, scheduler: str = DEFAULT_SAMPLER,
             height: int | None = None, width: int | None = None, output: str | Path = "image.png",
             metadata: bool = False, stepwise_dir: str | Path | None = None, verbose: bool = False,
             progress: bool = False, pipeline=None, log=None) -> list[Path]:
    """Make ``n_images`` images (or one per seed when ``seed`` is a list of several) and save
    them; returns the paths written.  Every argument is checked before the model is loaded.

    ``latents``: an array or a .npy path of shape (n_images, C, h, w).  ``pipeline``: reuse a
    loaded :class:`~mlx_model.pipelines.generation.GenerationPipeline` (``model``/``quantize``/``dtype`` ignored).
    """
    from mlx_model.pipelines.generation import GenerationPipeline

    log = log or (lambda msg: print(msg, flush=True))

    if not prompt or not prompt.strip():  # fail before loading anything
        from mlx_model.support.tokenizer import PromptError

        raise PromptError("the prompt is empty.", fix="pass a non-empty prompt, e.g. \"a red cup\".")
    cc.check_image_command(steps=steps, guidance=guidance, seed=seed, n_images=n_images, output=output,
                           stepwise_dir=stepwise_dir, latents=latents)
    latents, latents_file = cc.latents_arg(latents)
    if pipeline is None:
        ckpt = cc.open_checkpoint(model, revision, height, width)
        pipeline = GenerationPipeline.from_checkpoint(ckpt, quantize=quantize, dtype=cc.dtype_of(dtype),
                                                      low_memory=low_memory)
    if verbose:
        c = pipeline.config
        log(f"model: {pipeline.source} ({c.diffusion_name_or_path}); quantize: {pipeline.quantize or 'float'}; "
            f"dtype: {cc.dtype_name(pipeline.dtype)}; image {height or c.image_size}x{width or c.image_size}")
    meta = {"prompt": prompt, "model": model, "revision": revision, "latents": latents_file}
    return cc.run_and_save(pipeline, prompt, meta=meta, steps=steps, guidance=guidance, seed=seed,
                           n_images=n_images, latents=latents, scheduler=scheduler, output=output,
                           metadata=metadata, verbose=verbose, progress=progress, log=log, height=height,
                           width=width, stepwise_dir=stepwise_dir)


def _run(p: argparse.ArgumentParser, a: argparse.Namespace, argv: list[str]) -> list[Path]:
    prompts_file, output_dir = getattr(a, "prompts_file", None), getattr(a, "output_dir", None)
    if prompts_file is not None or output_dir is not None:
        cc.check_batch_command(text=a.prompt if a.prompt is not None else a.prompt_flag, output=a.output,
                               seed=a.seed, latents=a.latents, stepwise_dir=a.stepwise_image_output_dir,
                               config_from_metadata=a.config_from_metadata, prompts_file=prompts_file,
                               output_dir=output_dir)
        return _run_batch(a)
    text = None
    if a.config_from_metadata:  # its settings become the defaults; flags given now still win
        saved = image_files.metadata_defaults(a.config_from_metadata, "generate")
        text = saved.pop("text", None)
        p.set_defaults(**saved)
        a = p.parse_args(argv)
    prompt = cc.pick_text(a.prompt, a.prompt_flag, "prompt")
    prompt = text if prompt is None else prompt
    if prompt is None:
        raise MobileOError("no prompt given.", fix="pass one: mobileo-generate --prompt \"a red cup\".")
    return generate(prompt, model=a.model, revision=a.revision, quantize=a.quantize, dtype=a.dtype,
                    low_memory=a.low_memory, steps=a.steps,
                    guidance=a.guidance, seed=a.seed, n_images=a.n_images, latents=a.latents,
                    scheduler=a.scheduler, height=a.height, width=a.width, output=a.output or "image.png",
                    metadata=a.metadata,
                    stepwise_dir=a.stepwise_image_output_dir, verbose=a.verbose,
                    progress=sys.stderr.isatty() or a.verbose)


def _run_batch(a: argparse.Namespace) -> list[Path]:
    """``--prompts-file``: this process's share of the file (:func:`mlx_model.pipelines.batch.run_batch`)."""
    from mlx_model.pipelines.batch import BatchSettings, run_batch

    cc.check_sampling(a.steps, a.guidance, a.n_images)
    seed = a.seed[0] if a.seed else 0
    cc.check_seeds(seed, 1)
    settings = BatchSettings(model=a.model, revision=a.revision, quantize=a.quantize, dtype=a.dtype,
                             low_memory=a.low_memory, scheduler=a.scheduler, steps=a.steps, guidance=a.guidance,
                             seed=seed, n_images=a.n_images, width=a.width, height=a.height,
                             metadata=a.metadata, verbose=a.verbose)
    return run_batch(a.prompts_file, a.output_dir, settings)["made"]


def main(argv: list[str] | None = None) -> None:
    cc.run_command(parser(batch=True), _run, argv)


if __name__ == "__main__":
    main()
