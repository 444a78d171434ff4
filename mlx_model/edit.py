"""``python -m mlx_model.edit IMAGE "instruction"``: Mobile-O image editing with MLX only.

Editing is generation with another conditioning source: the image (vision tower +
projector) and the instruction go through the LLM with the editing template; its last
``vlm_num_layers`` hidden states go through the MCP into the DiT.  Everything after that --
the CFG batch, the sampler, the decoder, the options and the output handling -- is the
generation pipeline's (:mod:`mlx_model.pipeline`, :mod:`mlx_model.cli_common`).

Python use:

    from mlx_model.edit import EditPipeline
    pipe = EditPipeline.from_pretrained("demo", quantize=0)
    out = pipe.edit("photo.jpg", "make it snowy", steps=20, seed=0)
    out.images          # uint8 [n, H, W, 3]
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import numpy as np

from weights.hub import DEFAULT_MODEL
from weights.errors import run_cli
from weights.prompts import editing_prompt

from . import cli_common as cc
from .multimodal import ImageEncoder, MultimodalPrompt
from .pipeline import GenerationPipeline
from .tokenizer import PromptError

__all__ = ["EditPipeline", "EditRequest", "edit", "main"]


@dataclass(frozen=True)
class EditRequest:
    """What :meth:`GenerationPipeline.generate` conditions on when editing."""

    pixels: np.ndarray  # [1, S, S, 3], preprocessed
    instruction: str


class EditPipeline(GenerationPipeline):
    """The generation pipeline plus the image encoder; ``prompt`` is an :class:`EditRequest`."""

    encoder: ImageEncoder

    @classmethod
    def from_checkpoint(cls, ckpt, quantize: int = 4, dtype=None, **kw) -> "EditPipeline":
        pipe = super().from_checkpoint(ckpt, quantize=quantize, dtype=dtype, **kw)
        t = time.perf_counter()
        pipe.encoder = ImageEncoder.from_checkpoint(ckpt)
        pipe.load_seconds += time.perf_counter() - t
        pipe.load_peak_memory = max(pipe.load_peak_memory, float(mx.get_peak_memory()))
        return pipe

    def request(self, image, instruction: str) -> EditRequest:
        if not instruction or not instruction.strip():
            raise PromptError("the instruction is empty.", fix="say what to change, e.g. \"make it snowy\".")
        return EditRequest(self.encoder.pixels(image), instruction)

    def multimodal_prompt(self, request: EditRequest) -> MultimodalPrompt:
        return MultimodalPrompt.build(self.llm.tokenizer, editing_prompt(request.instruction), self.encoder.num_tokens)

    def prompt_ids(self, request: EditRequest) -> list[int]:
        return self.multimodal_prompt(request).ids()

    def prompt_embeds(self, request: EditRequest) -> tuple[int, mx.array]:
        """The hook GenerationPipeline.generate calls: image + instruction embeddings."""
        prompt = self.multimodal_prompt(request)
        return len(prompt), prompt.embed(self.llm, self.encoder(request.pixels))

    def edit(self, image, instruction: str, **kw):
        """Edit ``image`` (path, PIL image or uint8 array); keywords as ``generate``."""
        return self.generate(self.request(image, instruction), **kw)


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
         n_images: int = 1, latents=None, scheduler: str = "dpm", output: str | Path = "edited.png",
         metadata: bool = False, verbose: bool = False, progress: bool = False,
         pipeline: EditPipeline | None = None, log=None) -> list[Path]:
    """Edit ``image`` ``n_images`` times and save PNGs; returns the paths written."""
    from weights.hub import open_model

    from .preprocess import load_image

    log = log or (lambda msg: print(msg, flush=True))
    if not instruction or not instruction.strip():  # fail before loading anything
        raise PromptError("the instruction is empty.", fix="say what to change, e.g. \"make it snowy\".")
    source = load_image(image)  # unreadable images fail before loading weights
    latents, latents_file = cc.latents_arg(latents)
    if pipeline is None:
        pipeline = EditPipeline.from_checkpoint(open_model(model, revision=revision), quantize=quantize,
                                                dtype=cc.dtype_of(dtype))
    request = pipeline.request(source, instruction)
    if verbose:
        c = pipeline.config
        log(f"model: {pipeline.source}; quantize: {pipeline.quantize or 'float'}; dtype: {cc.dtype_name(pipeline.dtype)}; "
            f"input {source.width}x{source.height} -> {c.vision.image_size}x{c.vision.image_size} "
            f"({c.vision.num_tokens} image tokens); output {c.image_size}x{c.image_size}")
    meta = {"task": "edit", "image": str(image) if isinstance(image, (str, Path)) else None,
            "instruction": instruction, "model": model, "revision": revision, "latents": latents_file}
    return cc.run_and_save(pipeline, request, meta=meta, steps=steps, guidance=guidance, seed=seed,
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
