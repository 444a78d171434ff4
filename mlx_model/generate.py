"""``mobileo-generate --prompt "a red cup"`` (or ``python -m mlx_model.generate "a red cup"``):
a Mobile-O image with MLX only (no torch).  The flags are mflux's where it has them
(``--prompt``, several ``--seed`` values, ``--width/--height``, ``--stepwise-image-output-dir``,
``--config-from-metadata``, ``--metadata``, ``-q``).

Python use, same options:

    from mlx_model.generate import generate
    from mlx_model.support.image_settings import ImageSettings
    paths = generate(ImageSettings("a red cup", steps=20, seed=0), model="demo")

Many prompts, in one process or shared among several started by ``mlx.launch``
(:mod:`mlx_model.pipelines.batch`, docs/batch-generation.md):

    mobileo-generate --prompts-file prompts.txt --output-dir images/
    mlx.launch -n 2 --backend ring -- python -m mlx_model.generate --prompts-file prompts.txt --output-dir images/
"""

from __future__ import annotations

from mlx_model.interrupt import quiet_while_importing

quiet_while_importing(__name__)  # Ctrl-C during the imports below: one word, no traceback

import argparse
import sys
from dataclasses import replace
from pathlib import Path
from typing import Sequence

from weights.core.errors import MobileOError
from weights.loading.hub import DEFAULT_MODEL

from mlx_model import cli_common as cc
from mlx_model.support import image_files
from mlx_model.support.image_settings import ImageSettings
from mlx_model.support.platform import dtype_name, dtype_of
from mlx_model.support.quant import DEFAULT_QUANTIZE

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


def generate(settings: ImageSettings, *, seeds: Sequence[int] | None = None, latents=None,
             output: str | Path = "image.png", metadata: bool = False, stepwise_dir: str | Path | None = None,
             model: str = DEFAULT_MODEL, revision: str | None = None, quantize: int = DEFAULT_QUANTIZE,
             dtype: str | None = None, low_memory: bool | None = None, verbose: bool = False,
             progress: bool = False, pipeline=None, log=None) -> list[Path]:
    """Make ``settings.n_images`` images (or one per seed of several ``seeds``) and save them;
    returns the paths written.  Everything is checked before the model is loaded.

    ``latents``: an array or a .npy path of shape (n_images, C, h, w).  ``pipeline``: reuse a
    loaded :class:`~mlx_model.pipelines.generation.GenerationPipeline` (``model``/``quantize``/``dtype`` ignored).
    """
    from mlx_model.pipelines.generation import GenerationPipeline

    log = log or (lambda msg: print(msg, flush=True))
    runs = cc.image_runs(settings, seeds, latents)  # fail before loading anything
    cc.check_output_options(output, stepwise_dir)
    latents, latents_file = cc.latents_arg(latents)
    if pipeline is None:
        ckpt = cc.open_checkpoint(model, revision, runs)
        pipeline = GenerationPipeline.from_checkpoint(ckpt, quantize=quantize, dtype=dtype_of(dtype),
                                                      low_memory=low_memory)
    if verbose:
        c = pipeline.config
        log(f"model: {pipeline.source} ({c.diffusion_name_or_path}); quantize: {pipeline.quantize or 'float'}; "
            f"dtype: {dtype_name(pipeline.dtype)}; image {settings.height or c.image_size}x{settings.width or c.image_size}")
    meta = {"model": model, "revision": revision, "latents": latents_file}
    return cc.run_and_save(pipeline, runs, meta=meta, latents=latents, output=output, metadata=metadata,
                           verbose=verbose, progress=progress, log=log, stepwise_dir=stepwise_dir)


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
        a = cc.parse(p, argv)
    prompt = cc.pick_text(a.prompt, a.prompt_flag, "prompt")
    prompt = text if prompt is None else prompt
    if prompt is None:
        raise MobileOError("no prompt given.", fix="pass one: mobileo-generate --prompt \"a red cup\".")
    return generate(cc.settings_of(a, prompt), seeds=a.seed, latents=a.latents, output=a.output or "image.png",
                    metadata=a.metadata, stepwise_dir=a.stepwise_image_output_dir, model=a.model,
                    revision=a.revision, quantize=a.quantize, dtype=a.dtype, low_memory=a.low_memory,
                    verbose=a.verbose, progress=sys.stderr.isatty() or a.verbose)


def _run_batch(a: argparse.Namespace) -> list[Path]:
    """``--prompts-file``: this process's share of the file (:func:`mlx_model.pipelines.batch.run_batch`)."""
    from mlx_model.pipelines.batch import BASE_SEED, EACH_PROMPT, BatchSettings, run_batch

    defaults = replace(cc.settings_of(a, EACH_PROMPT), seed=a.seed[0] if a.seed else BASE_SEED).check()
    settings = BatchSettings(image=defaults, model=a.model, revision=a.revision, quantize=a.quantize,
                             dtype=a.dtype, low_memory=a.low_memory, metadata=a.metadata, verbose=a.verbose)
    if a.peer_timeout is not None:
        if not (a.peer_timeout > 0 and a.peer_timeout < 1e6):
            raise MobileOError(f"--peer-timeout {a.peer_timeout:g} is not a positive number of seconds.",
                               fix="pass e.g. --peer-timeout 60.")
        settings = replace(settings, peer_timeout=a.peer_timeout)
    return run_batch(a.prompts_file, a.output_dir, settings)["made"]


def main(argv: list[str] | None = None) -> None:
    cc.run_command(parser(batch=True), _run, argv)


if __name__ == "__main__":
    main()
