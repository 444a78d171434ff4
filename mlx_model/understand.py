"""``python -m mlx_model.understand IMAGE "question"``: Mobile-O answers a question about an
image, streamed, with MLX only (no torch).  Loads the LLM, the vision tower and the projector
(no DiT, no VAE).

Python use:

    from mlx_model.understand import Understanding
    model = Understanding.from_pretrained("demo", quantize=0)
    print(model.answer("photo.jpg", "What is in the picture?", temp=0))
    for r in model.stream("photo.jpg", "Describe it."):
        print(r.text, end="", flush=True)

Decoding runs mlx-lm's Qwen2 with its KV cache and its sampler (``make_sampler``):
temperature 0 is greedy, ``top_p`` 1.0 is off; it stops at the end-of-turn token.  Defaults are Mobile-O's
(:class:`weights.configs.GenerationDefaults`: temperature 0.8, no top-p, 256 new tokens).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from typing import Iterator

import mlx.core as mx

from weights.hub import DEFAULT_MODEL
from weights.configs import GenerationDefaults
from weights.errors import MobileOError, run_cli
from weights.prompts import understanding_prompt

from . import cli_common as cc
from .cli_common import QUANT_GROUP_SIZE
from .llm import LanguageModel
from .multimodal import ImageEncoder, MultimodalPrompt
from .tokenizer import PromptError

__all__ = ["Understanding", "Response", "main"]

COMPONENTS = ("llm", "vision", "projector")  # what understanding loads


@dataclass
class Response:
    """One streamed piece, as mlx-lm's ``GenerationResponse``."""

    text: str  # new text since the previous response (may be empty)
    token: int | None  # None on the closing response
    prompt_tokens: int
    prompt_tps: float
    generation_tokens: int
    generation_tps: float
    peak_memory: float  # GB
    image_seconds: float  # preprocessing + vision tower + projector
    finish_reason: str | None = None  # "stop" (end of turn), "length", or None while streaming


class Detokenizer:
    """Incremental decoding that never emits half of a multi-byte character."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.emitted = 0
        self.text = ""

    def add(self, token: int) -> str:
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids)
        if text.endswith("\ufffd"):  # wait for the rest of the character
            return ""
        new, self.text = text[len(self.text):], text
        return new

    def finish(self) -> str:
        text = self.tokenizer.decode(self.ids)
        new, self.text = text[len(self.text):], text
        return new


def check_options(max_tokens: int, temp: float, top_p: float) -> None:
    if max_tokens < 1:
        raise MobileOError(f"--max-tokens must be at least 1, got {max_tokens}.", fix="pass --max-tokens 1 or more.")
    if temp < 0:
        raise MobileOError(f"--temp must be >= 0, got {temp}.", fix="pass --temp 0 for greedy decoding.")
    if not 0 < top_p <= 1:
        raise MobileOError(f"--top-p must be in (0, 1], got {top_p}.", fix="pass --top-p 1.0 to turn it off.")


def decode_steps(llm: LanguageModel, embeds: mx.array, sampler, max_tokens: int) -> Iterator[int]:
    """Prefill ``embeds`` [1, L, D] into a fresh KV cache, then sample one token at a time
    (the next step is queued before the current token is handed out, as mlx-lm does)."""
    from mlx_lm.models.cache import make_prompt_cache

    cache = make_prompt_cache(llm.model)

    def step(logits):
        logits = logits[:, -1, :]
        return sampler(logits - mx.logsumexp(logits, axis=-1, keepdims=True))

    y = step(llm(embeds, cache=cache))
    mx.async_eval(y)
    for n in range(max_tokens):
        nxt = step(llm(llm.embed(y[:, None]), cache=cache)) if n + 1 < max_tokens else None
        if nxt is not None:
            mx.async_eval(nxt)
        yield y.item()
        y = nxt


class Understanding:
    def __init__(self, llm: LanguageModel, encoder: ImageEncoder, config, *, quantize: int = 0, source: str = ""):
        self.llm = llm
        self.encoder = encoder
        self.config = config
        self.quantize = quantize
        self.source = source
        self.load_seconds = 0.0

    @classmethod
    def from_checkpoint(cls, ckpt, quantize: int = 4, dtype=None, group_size: int = QUANT_GROUP_SIZE) -> "Understanding":
        """``quantize`` 0 (float), 4 or 8 bits for the LLM's Linear layers."""
        from .platform import default_dtype

        if quantize not in cc.QUANTIZE_CHOICES:
            raise MobileOError(f"quantize must be one of {cc.QUANTIZE_CHOICES}, got {quantize!r}.",
                               fix="use -q 0 (float), 4 or 8.")
        t = time.perf_counter()
        dtype = default_dtype() if dtype is None else dtype
        llm = LanguageModel.from_checkpoint(ckpt, quantize or None, group_size, dtype)
        out = cls(llm, ImageEncoder.from_checkpoint(ckpt), ckpt.config, quantize=quantize, source=str(ckpt.folder))
        out.load_seconds = time.perf_counter() - t
        return out

    @classmethod
    def from_pretrained(cls, model: str = DEFAULT_MODEL, quantize: int = 4, dtype=None,
                        revision: str | None = None) -> "Understanding":
        from weights.hub import open_model

        return cls.from_checkpoint(open_model(model, revision=revision), quantize=quantize, dtype=dtype)

    # ------------------------------------------------------------------ stages
    def prompt(self, question: str) -> MultimodalPrompt:
        if not question or not question.strip():
            raise PromptError("the question is empty.", fix="ask something, e.g. \"What is in the picture?\".")
        return MultimodalPrompt.build(self.llm.tokenizer, understanding_prompt(question), self.encoder.num_tokens)

    def embed(self, image, question: str) -> tuple[MultimodalPrompt, mx.array]:
        """The prompt and its input embeddings [1, L, D] with the image spliced in."""
        prompt = self.prompt(question)
        return prompt, prompt.embed(self.llm, self.encoder.encode(image))

    # ------------------------------------------------------------------ decoding
    def stream(self, image, question: str, *, max_tokens: int | None = None, temp: float | None = None,
               top_p: float | None = None, seed: int | None = None, stop_at_eos: bool = True) -> Iterator[Response]:
        """Yield the answer piece by piece; the last response has ``finish_reason`` set."""
        from mlx_lm.sample_utils import make_sampler

        d = self.config.defaults
        max_tokens = d.max_new_tokens if max_tokens is None else max_tokens
        temp = d.temperature if temp is None else temp
        top_p = d.top_p if top_p is None else top_p
        check_options(max_tokens, temp, top_p)

        mx.reset_peak_memory()
        t0 = time.perf_counter()
        prompt, embeds = self.embed(image, question)
        mx.eval(embeds)
        image_seconds = time.perf_counter() - t0
        if seed is not None:
            mx.random.seed(seed)
        eos = self.llm.tokenizer.eos_id
        detok = Detokenizer(self.llm.tokenizer)
        n_prompt = len(prompt)
        steps = decode_steps(self.llm, embeds, make_sampler(temp, top_p), max_tokens)

        def response(text, token, n, finish=None):
            gen_time = max(time.perf_counter() - t_gen, 1e-9)
            return Response(text, token, n_prompt, prompt_tps, n, n / gen_time if n else 0.0,
                            mx.get_peak_memory() / 1e9, image_seconds, finish)

        t1 = time.perf_counter()
        prompt_tps, t_gen, n, finish = 0.0, t1, 0, "length"
        for token in steps:
            if n == 0:
                t_gen = time.perf_counter()
                prompt_tps = n_prompt / max(t_gen - t1, 1e-9)
            if stop_at_eos and token == eos:
                finish = "stop"
                break
            n += 1
            yield response(detok.add(token), token, n)
        yield response(detok.finish(), None, n, finish)

    def answer(self, image, question: str, **kw) -> str:
        return "".join(r.text for r in self.stream(image, question, **kw))


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
    g.add_argument("--seed", type=int, default=None, help="random seed for sampling (default: random)")
    p.add_argument("-v", "--verbose", action="store_true", help="print model and image details")
    return p


def understand(image, question: str, *, model: str = DEFAULT_MODEL, revision: str | None = None, quantize: int = 4,
               dtype: str | None = None, max_tokens: int | None = None, temp: float | None = None,
               top_p: float | None = None, seed: int | None = None, verbose: bool = False,
               out=None, pipeline: Understanding | None = None) -> str:
    """Stream the answer to ``out`` (stdout) and close with mlx-lm's statistics lines."""
    from weights.hub import open_model

    from .preprocess import preprocess

    out = out or sys.stdout
    d = GenerationDefaults()
    check_options(d.max_new_tokens if max_tokens is None else max_tokens,
                  d.temperature if temp is None else temp, d.top_p if top_p is None else top_p)
    if not question or not question.strip():
        raise PromptError("the question is empty.", fix="ask something, e.g. \"What is in the picture?\".")
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
    for r in pipeline.stream(pixels[0], question, max_tokens=max_tokens, temp=temp, top_p=top_p, seed=seed):
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
                               dtype=a.dtype, max_tokens=a.max_tokens, temp=a.temp, top_p=a.top_p, seed=a.seed,
                               verbose=a.verbose))


if __name__ == "__main__":
    main()
