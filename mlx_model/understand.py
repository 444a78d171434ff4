"""``mobileo-understand IMAGE "question"`` (or ``python -m mlx_model.understand``): Mobile-O
answers a question about an image, streamed, with MLX only (no torch); the flags and the
closing lines are mlx-lm's.  The library is :mod:`mlx_model.pipelines.understanding`.

The command line decodes greedily by default (``--temp 0``), as ``mlx_lm.generate`` does, so
the same question gets the same answer; Mobile-O's own setting is ``--temp 0.8 --top-k 50``
(:class:`weights.core.configs.GenerationDefaults`, which the library and the iOS manifest keep).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

from weights.core.configs import GenerationDefaults
from weights.core.errors import MobileOError
from weights.loading.hub import DEFAULT_MODEL

from mlx_model import cli_common as cc
from mlx_model.support.image_settings import check_seed
from mlx_model.support.platform import dtype_name, dtype_of
from mlx_model.pipelines.understanding import Understanding, check_length, check_options, check_question
from mlx_model.support.quant import DEFAULT_QUANTIZE

__all__ = ["understand", "main", "CLI_DEFAULTS", "add_decoding_options", "decoding_options"]


@dataclass(frozen=True)
class CLIDefaults:
    """The command line's decoding defaults: mlx-lm's (greedy, every filter off), with
    Mobile-O's answer length.  Mobile-O's own sampling is ``GenerationDefaults``."""

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    repetition_context_size: int = 20
    max_tokens: int = GenerationDefaults.max_new_tokens


CLI_DEFAULTS = CLIDefaults()


# ------------------------------------------------------------------ command line
def add_decoding_options(p: argparse.ArgumentParser, title: str) -> argparse._ArgumentGroup:
    """The decoding flags (mlx-lm's), shared by ``mobileo-understand`` and ``mobileo-chat``;
    returns the group so a command can add its own (``--seed``).  :func:`decoding_options`
    reads them back."""
    d, m = CLI_DEFAULTS, GenerationDefaults()
    g = p.add_argument_group(title)
    g.add_argument("--system-prompt", default=None,
                   help="replaces Mobile-O's system message (\"You are a helpful assistant.\")")
    g.add_argument("--max-tokens", "-m", type=int, default=d.max_tokens,
                   help=f"most tokens to generate; prompt + answer must fit the model's context "
                   f"(default {d.max_tokens})")
    g.add_argument("--temp", type=float, default=d.temperature,
                   help=f"sampling temperature; 0 = greedy (default {d.temperature}, as mlx-lm; Mobile-O's own "
                   f"setting is --temp {m.temperature} --top-k {m.top_k})")
    g.add_argument("--top-p", type=float, default=d.top_p, help=f"nucleus sampling; 1.0 = off (default {d.top_p})")
    g.add_argument("--top-k", type=int, default=d.top_k,
                   help=f"sample from the k likeliest tokens; 0 = off (default {d.top_k})")
    g.add_argument("--min-p", type=float, default=d.min_p,
                   help=f"drop tokens below min-p x the top token's probability; 0 = off (default {d.min_p})")
    g.add_argument("--repetition-penalty", type=float, default=None,
                   help="penalize tokens of the last --repetition-context-size tokens; 1.0 = off (default: off)")
    g.add_argument("--repetition-context-size", type=int, default=d.repetition_context_size,
                   help=f"tokens the repetition penalty looks back over (default {d.repetition_context_size})")
    g.add_argument("--max-kv-size", type=int, default=None,
                   help="keep at most this many KV-cache entries (a rotating cache; default: all)")
    return g


def decoding_options(a: argparse.Namespace) -> dict:
    """The flags of :func:`add_decoding_options` (but ``--system-prompt``) as decoding keywords."""
    return dict(max_tokens=a.max_tokens, temp=a.temp, top_p=a.top_p, top_k=a.top_k, min_p=a.min_p,
                repetition_penalty=a.repetition_penalty, repetition_context_size=a.repetition_context_size,
                max_kv_size=a.max_kv_size)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mobileo-understand", description="Ask Mobile-O about an image, with MLX.")
    p.add_argument("image", nargs="?", default=None, help="image file (anything Pillow opens)")
    cc.add_text_argument(p, "question", "what to ask about the image")
    p.add_argument("--image", dest="image_flag", default=None, metavar="IMAGE",
                   help="the image, as a flag (instead of the argument)")
    cc.add_model_options(p)
    g = add_decoding_options(p, "decoding (mlx-lm's flags)")
    g.add_argument("--seed", type=int, default=None, help="random seed for sampling (default: random)")
    p.add_argument("-v", "--verbose", action="store_true", help="print model and image details")
    return p


def understand(image, question: str, *, model: str = DEFAULT_MODEL, revision: str | None = None, quantize: int = DEFAULT_QUANTIZE,
               dtype: str | None = None, low_memory: bool | None = None, max_tokens: int | None = None,
               temp: float | None = None,
               top_p: float | None = None, top_k: int | None = None, min_p: float | None = None,
               repetition_penalty: float | None = None, repetition_context_size: int | None = None,
               max_kv_size: int | None = None, system_prompt: str | None = None, seed: int | None = None,
               verbose: bool = False, out=None, pipeline: Understanding | None = None) -> str:
    """Stream the answer to ``out`` (stdout) and close with mlx-lm's statistics lines.
    Options left None take the command line's defaults (:data:`CLI_DEFAULTS`).  Every check
    (options, question, image, prompt + answer length) runs before the answer starts."""
    from mlx_model.support.mlx_folder import open_model
    from mlx_model.support.preprocess import preprocess

    out = out or sys.stdout
    d = CLI_DEFAULTS
    opts = dict(max_tokens=d.max_tokens if max_tokens is None else max_tokens,
                temp=d.temperature if temp is None else temp, top_p=d.top_p if top_p is None else top_p,
                top_k=d.top_k if top_k is None else top_k, min_p=d.min_p if min_p is None else min_p,
                repetition_penalty=repetition_penalty,
                repetition_context_size=(d.repetition_context_size if repetition_context_size is None
                                         else repetition_context_size),
                max_kv_size=max_kv_size)
    check_options(**opts)
    check_question(question)
    if seed is not None:
        check_seed(seed)
    if pipeline is None:
        if image is None:
            raise MobileOError("no image given.", fix="pass an image file: mobileo-understand photo.jpg \"What is this?\".")
        ckpt = open_model(model, revision=revision)
        pixels = preprocess(image, ckpt.config.preprocess)[None]  # bad images fail before loading weights
        _check_prompt_fits(ckpt, question, system_prompt, opts["max_tokens"])
        pipeline = Understanding.from_checkpoint(ckpt, quantize=quantize, dtype=dtype_of(dtype),
                                                 low_memory=low_memory)
    else:
        pixels = pipeline.encoder.pixels(image)
    check_length(len(pipeline.prompt(question, system_prompt)), opts["max_tokens"], pipeline.context_length)
    if verbose:
        v = pipeline.config.vision
        print(f"model: {pipeline.source}; quantize: {pipeline.quantize or 'float'}; "
              f"dtype: {dtype_name(pipeline.llm.dtype)}; image {v.image_size}x{v.image_size} -> "
              f"{v.num_tokens} tokens; loaded in {pipeline.load_seconds:.2f}s", file=out)
    print("=" * 10, file=out)
    text, r = "", None
    for r in pipeline.stream(pixels[0], question, system_prompt=system_prompt, seed=seed, **opts):
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


def _check_prompt_fits(ckpt, question: str, system_prompt: str | None, max_tokens: int) -> None:
    """The prompt's length from the tokenizer alone, before any weights are read."""
    from mlx_model.components.multimodal import MultimodalPrompt
    from mlx_model.support.tokenizer import Tokenizer
    from mlx_model.pipelines.understanding import prompt_text

    cfg = ckpt.config
    prompt = MultimodalPrompt.build(Tokenizer.from_checkpoint(ckpt), prompt_text(question, system_prompt),
                                    cfg.vision.num_tokens)
    check_length(len(prompt), max_tokens, cfg.llm.max_position_embeddings)


def _run(a) -> str:
    image, question = a.image, a.question
    if a.image_flag is not None:
        if question is None and image is not None:
            question, image = image, None  # mobileo-understand --image photo.jpg "What is it?"
        if image is not None and image != a.image_flag:
            raise MobileOError(f"the image is given twice: as an argument ({image!r}) and with --image "
                               f"({a.image_flag!r}).", fix="pass it once.")
        image = a.image_flag
    if image == "-":
        raise MobileOError("the image cannot be read from stdin ('-'); only the question can.",
                           fix="pass the image as a file path.")
    question = cc.pick_text(question, a.question_flag, "question", example="What is in the picture?")
    if question is None:
        raise MobileOError("no question given.", fix="mobileo-understand photo.jpg \"What is in the picture?\".")
    return understand(image, question, model=a.model, revision=a.revision, quantize=a.quantize, dtype=a.dtype,
                      low_memory=a.low_memory, **decoding_options(a), system_prompt=a.system_prompt, seed=a.seed,
                      verbose=a.verbose)


def main(argv: list[str] | None = None) -> None:
    cc.run_command(parser(), lambda p, a, argv: _run(a), argv)


if __name__ == "__main__":
    main()
