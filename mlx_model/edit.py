"""``mobileo-edit IMAGE "instruction"`` (or ``python -m mlx_model.edit``): Mobile-O image
editing with MLX only.

Editing is generation with another conditioning source (:class:`mlx_model.pipelines.generation.
GenerationPipeline` loaded with ``edit=True``); this command shares the generation options
and output handling (:mod:`mlx_model.cli_common`); mflux's ``--image-path`` and ``--prompt``
work too.

Python use:

    from mlx_model.pipelines.generation import GenerationPipeline
    from mlx_model.support.image_settings import ImageSettings
    pipe = GenerationPipeline.from_pretrained("demo", quantize=0, edit=True)
    out = pipe.edit("photo.jpg", ImageSettings("make it snowy", steps=20, seed=0))
    out.images          # uint8 [n, H, W, 3]
"""

from __future__ import annotations

from mlx_model.interrupt import quiet_while_importing

quiet_while_importing(__name__)  # Ctrl-C during the imports below: one word, no traceback

import argparse
import sys
from pathlib import Path
from typing import Sequence

from weights.core.errors import MobileOError
from weights.loading.hub import DEFAULT_MODEL

from mlx_model import cli_common as cc
from mlx_model.support import image_files
from mlx_model.support.image_settings import ImageSettings
from mlx_model.support.platform import dtype_name, dtype_of
from mlx_model.support.quant import DEFAULT_QUANTIZE
from mlx_model.support.tokenizer import PromptError

__all__ = ["edit", "main"]


# ------------------------------------------------------------------ command line
def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mobileo-edit",
                                description="Edit an image following an instruction, with Mobile-O in MLX.")
    p.add_argument("image", nargs="?", default=None, help="image to edit (anything Pillow opens)")
    cc.add_text_argument(p, "instruction", "what to change")
    p.add_argument("--image-path", default=None, metavar="IMAGE",
                   help="the image to edit, as a flag (mflux's name; instead of the argument)")
    cc.add_model_options(p)
    cc.add_sampling_options(p)
    cc.add_output_options(p, default="edited.png")
    return p


def edit(image, settings: ImageSettings, *, seeds: Sequence[int] | None = None, latents=None,
         output: str | Path = "edited.png", metadata: bool = False, stepwise_dir: str | Path | None = None,
         model: str = DEFAULT_MODEL, revision: str | None = None, quantize: int = DEFAULT_QUANTIZE,
         dtype: str | None = None, low_memory: bool | None = None, verbose: bool = False,
         progress: bool = False, pipeline=None, log=None) -> list[Path]:
    """Edit ``image`` following ``settings.prompt`` (the instruction) ``settings.n_images`` times
    (or once per seed of several ``seeds``) and save the results; returns the paths written.
    ``pipeline``: reuse a loaded :class:`~mlx_model.pipelines.generation.GenerationPipeline`
    (``edit=True``).  Every setting and the image are checked before the model is loaded."""
    from mlx_model.components.multimodal import check_no_placeholder
    from mlx_model.pipelines.generation import GenerationPipeline
    from mlx_model.support.preprocess import load_image

    log = log or (lambda msg: print(msg, flush=True))
    instruction = settings.prompt
    if not instruction or not instruction.strip():  # fail before loading anything
        raise PromptError("the instruction is empty.", fix="say what to change, e.g. \"make it snowy\".")
    check_no_placeholder(instruction, "instruction")
    runs = cc.image_runs(settings, seeds, latents)
    cc.check_output_options(output, stepwise_dir)
    source = load_image(image)  # unreadable images fail before loading weights
    latents, latents_file = cc.latents_arg(latents)
    if pipeline is None:
        ckpt = cc.open_checkpoint(model, revision, runs)
        pipeline = GenerationPipeline.from_checkpoint(ckpt, quantize=quantize, dtype=dtype_of(dtype), edit=True,
                                                      low_memory=low_memory)
    pixels = pipeline.encoder.pixels(source)
    if verbose:
        c = pipeline.config
        log(f"model: {pipeline.source}; quantize: {pipeline.quantize or 'float'}; dtype: {dtype_name(pipeline.dtype)}; "
            f"input {source.width}x{source.height} -> {c.vision.image_size}x{c.vision.image_size} "
            f"({c.vision.num_tokens} image tokens); output {settings.height or c.image_size}x{settings.width or c.image_size}")
    # the image as an absolute path: --config-from-metadata finds it from any folder
    meta = {"image": str(Path(image).expanduser().resolve()) if isinstance(image, (str, Path)) else None, "model": model, "revision": revision,
            "latents": latents_file}
    return cc.run_and_save(pipeline, runs, image=pixels, meta=meta, latents=latents, output=output,
                           metadata=metadata, verbose=verbose, progress=progress, log=log, stepwise_dir=stepwise_dir)


def _run(p: argparse.ArgumentParser, a: argparse.Namespace, argv: list[str]) -> list[Path]:
    saved = {}
    if a.config_from_metadata:  # its settings become the defaults; flags given now still win
        saved = image_files.metadata_defaults(a.config_from_metadata, "edit")
        p.set_defaults(**{k: v for k, v in saved.items() if k not in ("text", "image")})
        a = cc.parse(p, argv)
    image, instruction = a.image, a.instruction
    if a.image_path is not None:
        if instruction is None and image is not None:
            instruction, image = image, None  # mobileo-edit --image-path photo.jpg "make it blue"
        if image is not None and image != a.image_path:
            raise MobileOError(f"the image is given twice: as an argument ({image!r}) and with --image-path "
                               f"({a.image_path!r}).", fix="pass it once.")
        image = a.image_path
    if image == "-":
        raise MobileOError("the image cannot be read from stdin ('-'); only the instruction can.",
                           fix="pass the image as a file path.")
    instruction = cc.pick_text(instruction, a.instruction_flag, "instruction", example="make it snowy")
    image = saved.get("image") if image is None else image
    instruction = saved.get("text") if instruction is None else instruction
    if image is None or instruction is None:
        raise MobileOError(f"no {'image' if image is None else 'instruction'} given.",
                           fix="mobileo-edit photo.jpg \"make it snowy\".")
    return edit(image, cc.settings_of(a, instruction), seeds=a.seed, latents=a.latents, output=a.output,
                metadata=a.metadata, stepwise_dir=a.stepwise_image_output_dir, model=a.model, revision=a.revision,
                quantize=a.quantize, dtype=a.dtype, low_memory=a.low_memory, verbose=a.verbose,
                progress=sys.stderr.isatty() or a.verbose)


def main(argv: list[str] | None = None) -> None:
    cc.run_command(parser(), _run, argv)


if __name__ == "__main__":
    main()
