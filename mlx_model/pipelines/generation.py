"""Mobile-O image generation and editing in MLX: prompt (and, for editing, the image through
the vision tower and projector) -> Qwen2 hidden states -> MCP -> SANA DiT sampling -> DC-AE
decode (docs/model-facts.md section 7).

    pipe = GenerationPipeline.from_pretrained("demo", quantize=0)
    out = pipe.generate(ImageSettings("a red cup", steps=20, guidance=1.5, seed=0))
    out.images          # uint8 [n, H, W, 3]

    pipe = GenerationPipeline.from_pretrained("demo", quantize=0, edit=True)
    out = pipe.edit("photo.jpg", ImageSettings("make it snowy", seed=0))

Editing is the same pipeline with another conditioning source: the image and the
instruction go through the LLM with the editing template; everything after the LLM's hidden
states (CFG batch, MCP, sampler, decoder) is shared.

Phase-wise residency (``low_memory``, as Apple's ml-stable-diffusion ``reduceMemory``): each
component is loaded just before its phase and dropped after it -- the vision tower after
encoding the image (editing), the LLM after the conditioning, the DiT after denoising, the
DC-AE after decoding -- so at most one of them is resident at a time; the next ``generate``
loads them again.  Default: on when the machine has less than 16 GB of RAM, or as
``MOBILEO_LOW_MEMORY=1``/``0`` says (:func:`mlx_model.support.platform.low_memory_default`).

Sampling is a generator over steps (``sample``) driven by any ``denoise(latents, t)``, so
numpy callers (golden vectors, Swift parity) can run the very same loop.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import mlx.core as mx
import numpy as np

from weights.loading.hub import DEFAULT_MODEL
from weights.core.components import for_task, slots_done_after
from weights.core.errors import MobileOError
from weights.core.prompts import editing_prompt, generation_prompt

from mlx_model.components.dcae import AutoencoderDC
from mlx_model.components.dit import SanaTransformer
from mlx_model.components.llm import LanguageModel
from mlx_model.components.mcp import MCP
from mlx_model.support.image_settings import ImageSettings, refuse_nonfinite
from mlx_model.support.platform import Component, part, resolve_low_memory
from mlx_model.components.multimodal import ImageEncoder, MultimodalPrompt
from mlx_model.support.quant import DEFAULT_QUANTIZE, QUANT_GROUP_SIZE, check_bits
from mlx_model.support.scheduler import SCHEDULERS, classifier_free_guidance
from mlx_model.support.tokenizer import PromptError



class LatentsError(MobileOError):
    """A --latents file that cannot be used."""


def sample(denoise: Callable, latents, scheduler) -> Iterator:
    """Yield the latents after each step; ``denoise(latents, t) -> velocity`` (CFG already applied)."""
    for i, t in enumerate(scheduler.timesteps):
        latents = scheduler.step(denoise(latents, t), latents, i)
        yield latents


def cfg_batch(hidden_states: list) -> list:
    """Mobile-O's CFG input: each hidden state h -> concat([zeros_like(h), h]) (uncond first)."""
    return [mx.concatenate([mx.zeros_like(h), h], axis=0) for h in hidden_states]


@dataclass
class Generation:
    images: np.ndarray  # uint8 [n, H, W, 3]
    latents: np.ndarray  # final latents [n, C, h, w] (scaled, before decoding)
    initial_latents: np.ndarray
    settings: ImageSettings  # resolved: the model's defaults filled in, the seed drawn (None with given latents)
    prompt_tokens: int
    timings: dict[str, float] = field(default_factory=dict)  # phase -> seconds
    peak_memory: dict[str, float] = field(default_factory=dict)  # phase -> bytes (loading included)
    load_seconds: dict[str, float] = field(default_factory=dict)  # phase -> seconds of it spent loading


def _phase(name: str, timings: dict, peaks: dict, loads: dict | None = None, parts: dict | None = None):
    """Time and peak memory of one phase; with ``parts`` (name -> Component), also the seconds
    spent loading components in it (residency loads lazily, inside the phase)."""
    def loaded():
        return sum(p.load_seconds for p in (parts or {}).values())

    class _P:
        def __enter__(self):
            mx.reset_peak_memory()
            self.l0 = loaded()
            self.t = time.perf_counter()

        def __exit__(self, *exc):
            timings[name] = time.perf_counter() - self.t
            peaks[name] = float(mx.get_peak_memory())
            if loads is not None:
                loads[name] = loaded() - self.l0

    return _P()


# the components residency loads and drops, by slot (weights.core.components; the MCP is tiny: kept):
# ("llm", "dit", "vae", "encoder") -- the run order of generation, the image encoder (editing) last
PARTS = tuple(c.slot for c in for_task("generation") if c.slot) + tuple(
    c.slot for c in for_task("editing") if c.slot and c not in for_task("generation"))


class GenerationPipeline:
    llm = part("llm")
    dit = part("dit")
    vae = part("vae")
    encoder = part("encoder")

    def __init__(self, llm: LanguageModel | Component, mcp: MCP, dit: SanaTransformer | Component,
                 vae: AutoencoderDC | Component, config, *, encoder: ImageEncoder | Component | None = None,
                 quantize: int = 0, dtype=mx.float32, source: str = "", low_memory: bool = False,
                 tokenizer=None):
        """``encoder`` (vision tower + projector) is needed for editing only.  Each of ``llm``,
        ``dit``, ``vae``, ``encoder`` is a module or a :class:`~mlx_model.support.platform.Component`
        (loaded on first use); with ``low_memory`` the components are dropped after their phase.
        ``tokenizer``: the prompt tokenizer (default: the LLM's)."""
        self.parts: dict[str, Component] = {}
        self.llm, self.dit, self.vae, self.encoder = llm, dit, vae, encoder
        self.mcp = mcp
        self.config = config
        self.quantize = quantize
        self.dtype = dtype
        self.source = source
        self.low_memory = low_memory
        self._tokenizer = tokenizer
        self.load_seconds = 0.0
        self.load_peak_memory = 0.0

    @property
    def tokenizer(self):
        return self._tokenizer if self._tokenizer is not None else self.llm.tokenizer

    @property
    def can_edit(self) -> bool:
        p = self.parts["encoder"]
        return p.resident or p.loader is not None

    def resident(self) -> list[str]:
        """The components held in memory now."""
        return [n for n in PARTS if self.parts[n].resident]

    def release(self, *names: str) -> None:
        """Drop ``names`` (default: all) when they can be loaded again."""
        for n in names or PARTS:
            self.parts[n].release()

    def _done_with(self, name: str) -> None:
        if self.low_memory:
            self.parts[name].release()

    @classmethod
    def from_checkpoint(cls, ckpt, quantize: int = DEFAULT_QUANTIZE, dtype=None, group_size: int = QUANT_GROUP_SIZE,
                        dequantize: bool | None = None, edit: bool = False, low_memory: bool | None = None,
                        shared: dict[str, Component] | None = None, tokenizer=None):
        """``quantize`` 0 (float), 4 or 8 bits for the LLM and DiT Linear layers; ``dtype`` of
        weights and activations (default: :func:`mlx_model.support.platform.default_dtype`);
        ``dequantize`` quantized layers for float compute (default: on CPU, see
        :func:`mlx_model.support.quant.quantize_linears`); ``edit`` also loads the image encoder;
        ``low_memory``: phase-wise residency (None: :func:`mlx_model.support.platform.low_memory_default`)
        -- then nothing but the tokenizer and the MCP is loaded here, each component is loaded
        by the phase that needs it (its time and memory counted there).  ``shared``: components
        (``llm``, ``encoder``) another pipeline already holds, used instead of loading their own
        (:class:`mlx_model.pipelines.mobileo.MobileO`: one LLM for understanding and generation)."""
        from mlx_model.support.platform import default_dtype
        from mlx_model.support.tokenizer import Tokenizer

        check_bits(quantize)
        dtype = default_dtype() if dtype is None else dtype
        low_memory = resolve_low_memory(low_memory)
        mx.reset_peak_memory()
        t = time.perf_counter()
        tokenizer = Tokenizer.from_checkpoint(ckpt) if tokenizer is None else tokenizer

        def load_llm():
            # generation only looks embedding rows up: the table stays bf16 when a folder stores it so
            llm = LanguageModel.from_checkpoint(ckpt, quantize, group_size, dtype, dequantize,
                                                tokenizer=tokenizer, embed_as_stored=True)
            if "lm_head" in llm.model:  # generation reads hidden states only: free the vocab projection
                llm.model.pop("lm_head")
            return llm

        parts = {
            "llm": Component("llm", loader=load_llm),
            "dit": Component("dit", loader=lambda: SanaTransformer.from_checkpoint(
                ckpt, quantize, group_size, dtype, dequantize=dequantize)),
            "vae": Component("vae", loader=lambda: AutoencoderDC.from_checkpoint(
                ckpt, dtype=dtype, encoder=False, quantize=quantize, group_size=group_size)),
            "encoder": Component("encoder", loader=(lambda: ImageEncoder.from_checkpoint(
                ckpt, quantize, group_size)) if edit else None),
        }
        parts.update(shared or {})
        mcp = MCP.from_checkpoint(ckpt, dtype=mx.float32)  # tiny; Mobile-O casts its output to fp32
        pipe = cls(parts["llm"], mcp, parts["dit"], parts["vae"], ckpt.config, encoder=parts["encoder"],
                   quantize=quantize, dtype=dtype, source=str(ckpt.folder), low_memory=low_memory,
                   tokenizer=tokenizer)
        if not low_memory:  # everything resident from the start, as before
            for p in parts.values():
                p.get()
        pipe.load_seconds = time.perf_counter() - t
        pipe.load_peak_memory = float(mx.get_peak_memory())
        return pipe

    @classmethod
    def from_pretrained(cls, model: str = DEFAULT_MODEL, quantize: int = DEFAULT_QUANTIZE, dtype=None, revision: str | None = None,
                        edit: bool = False, low_memory: bool | None = None):
        """``model``: a hub id, a local folder, or ``demo`` (tiny random checkpoint)."""
        from mlx_model.support.mlx_folder import open_model

        return cls.from_checkpoint(open_model(model, revision=revision), quantize=quantize, dtype=dtype, edit=edit,
                                   low_memory=low_memory)

    # ------------------------------------------------------------------ conditioning
    def edit_prompt(self, instruction: str) -> MultimodalPrompt:
        """The editing template around ``instruction``, with room for the image's tokens."""
        if not instruction or not instruction.strip():
            raise PromptError("the instruction is empty.", fix="say what to change, e.g. \"make it snowy\".")
        if not self.can_edit:
            raise MobileOError("this pipeline was loaded without the image encoder, so it cannot edit.",
                               fix="load it with edit=True.")
        return MultimodalPrompt.build(self.tokenizer, editing_prompt(instruction), self.config.vision.num_tokens)

    def prompt_ids(self, prompt: str, image=None) -> list[int]:
        """Token ids of the templated prompt; with ``image``, the editing prompt (the image's
        positions hold the image token id)."""
        if image is None:
            return self.tokenizer.encode_prompt(prompt, generation_prompt)
        return self.edit_prompt(prompt).ids()

    def prompt_embeds(self, prompt: str, image=None) -> tuple[int, mx.array]:
        """(token count, [1, L, D] LLM input embeddings) of the generation prompt, or with
        ``image`` (path, PIL image, uint8 array or preprocessed pixels) of the editing prompt
        with the projected image spliced in (the image is encoded first; with ``low_memory``
        the vision tower is dropped before the LLM is loaded)."""
        if image is None:
            ids = self.prompt_ids(prompt)
            return len(ids), self.llm.embed(mx.array([ids]))
        mm = self.edit_prompt(prompt)
        projected = self.encoder.encode(image)
        if self.low_memory:
            mx.eval(projected)
            self._done_with("encoder")
        return len(mm), mm.embed(self.llm, projected)

    def condition(self, embeds: mx.array) -> mx.array:
        """[2, L, caption_channels]: row 0 unconditional (MCP of zeros), row 1 the prompt."""
        hidden = self.llm.hidden_states(embeds, self.config.mcp.num_layers)
        return self.mcp([h.astype(mx.float32) for h in cfg_batch(hidden)])

    def encode_prompt(self, prompt: str, image=None) -> mx.array:
        """The DiT's encoder_hidden_states for ``prompt`` (and ``image`` when editing)."""
        return self.condition(self.prompt_embeds(prompt, image)[1])

    def denoiser(self, context: mx.array, guidance: float, n: int) -> Callable:
        """``denoise(latents [n,C,h,w], t) -> CFG velocity``; the DiT runs one CFG pair
        (batch 2) per image, so an image's numbers never depend on ``n`` (BLAS kernels may
        block a matmul differently for another row count)."""
        ctx = context.astype(self.dtype)  # [uncond, cond]
        ts = mx.full((2,), 0.0, dtype=mx.float32)

        def denoise(latents, t):
            out = []
            for i in range(latents.shape[0]):
                x = mx.concatenate([latents[i:i + 1], latents[i:i + 1]], axis=0).astype(self.dtype)
                v = self.dit(x, ctx, ts + float(t)).astype(mx.float32)
                out.append(classifier_free_guidance(v[:1], v[1:], guidance))
            return out[0] if len(out) == 1 else mx.concatenate(out, axis=0)

        return denoise

    def initial_latents(self, n: int, seed: int | None = None, latents=None,
                        shape: tuple[int, int, int] | None = None) -> mx.array:
        """N(0, 1) latents [n, C, h, w] (fp32), image i seeded with ``seed + i`` (so any image of
        a batch can be remade alone); or ``latents`` checked against that shape.  ``shape``
        (C, h, w): see :func:`mlx_model.support.image_settings.latent_shape` (default: the model's own size)."""
        shape = (n, *(shape or self.config.latent_shape))
        if latents is None:
            keys = [mx.random.key(seed + i) if seed is not None else None for i in range(n)]
            return mx.stack([mx.random.normal(shape[1:], dtype=mx.float32, key=k) for k in keys])
        arr = np.asarray(latents)
        if tuple(arr.shape) != shape:
            raise LatentsError(f"the initial latents have shape {list(arr.shape)} but this model, this "
                               f"image size and --n-images {n} need {list(shape)}.",
                               fix=f"save an array of shape {shape} (numpy .npy), or change --n-images, "
                               "--width or --height.")
        if not np.issubdtype(arr.dtype, np.floating) or not np.isfinite(arr).all():
            raise LatentsError(f"the initial latents must be finite floats (got {arr.dtype}).",
                               fix="save float32 noise, e.g. np.random.randn(...).astype('float32').")
        return mx.array(arr.astype(np.float32))

    def decode(self, latents: mx.array) -> mx.array:
        """Scaled latents -> uint8 images [n, H, W, 3]."""
        x = self.vae.decode(latents / self.config.vae.scaling_factor).astype(mx.float32)
        x = mx.clip(x / 2 + 0.5, 0, 1)
        return mx.round(x * 255).astype(mx.uint8).transpose(0, 2, 3, 1)

    def scheduler(self, name: str, steps: int):
        if name not in SCHEDULERS:
            raise MobileOError(f"unknown scheduler {name!r}.", fix=f"use one of {sorted(SCHEDULERS)}.")
        return SCHEDULERS[name](self.config.scheduler, steps)

    # ------------------------------------------------------------------ all together
    def generate(self, settings: ImageSettings, *, image=None, latents=None,
                 progress: Callable[[int, int], None] | None = None,
                 on_step: Callable[[int, mx.array], None] | None = None) -> Generation:
        """Whole pipeline for ``settings``; with ``image`` (pixels), ``settings.prompt`` is an
        editing instruction for it.  ``latents``: starting noise [n_images, C, h, w] instead of
        the seeded one.  ``progress(step, total)`` is called after every denoising step,
        ``on_step(step, latents)`` with the latents after it (for previews: :meth:`decode` them).
        The result's ``settings`` are the resolved ones (defaults filled, the seed drawn)."""
        s = settings.resolved(self.config, draw=latents is None)
        timings, peaks, loads = {}, {}, {}
        with _phase("text", timings, peaks, loads, self.parts):
            sched = self.scheduler(s.scheduler, s.steps)
            n_tokens, embeds = self.prompt_embeds(s.prompt, image)
            context = self.condition(embeds)
            x0 = self.initial_latents(s.n_images, s.seed, latents, s.latent_shape(self.config))
            mx.eval(context, x0)
            for slot in slots_done_after("text"):
                self._done_with(slot)
        with _phase("denoise", timings, peaks, loads, self.parts):
            x = x0
            for i, x in enumerate(sample(self.denoiser(context, s.guidance, s.n_images), x0, sched)):
                mx.eval(x)
                if on_step is not None:
                    on_step(i + 1, x)
                if progress is not None:
                    progress(i + 1, s.steps)
            for slot in slots_done_after("denoise"):
                self._done_with(slot)
        refuse_nonfinite(x, s.guidance)
        with _phase("decode", timings, peaks, loads, self.parts):
            images = self.decode(x)
            mx.eval(images)
            for slot in slots_done_after("decode"):
                self._done_with(slot)
        return Generation(images=np.array(images), latents=np.array(x), initial_latents=np.array(x0),
                          settings=s, prompt_tokens=n_tokens, timings=timings, peak_memory=peaks, load_seconds=loads)

    def edit(self, image, settings: ImageSettings, **kw) -> Generation:
        """:meth:`generate` conditioned on ``image`` (a path, PIL image or array): ``settings.prompt``
        is the instruction."""
        return self.generate(settings, image=image, **kw)


def load_latents(path: str | Path) -> np.ndarray:
    """A ``--latents`` file (numpy .npy) with one clear error for unreadable files."""
    path = Path(path)
    if not path.is_file():
        raise LatentsError(f"--latents file {path} does not exist.", fix="pass an existing .npy file.")
    try:
        return np.load(path, allow_pickle=False)
    except Exception as e:  # numpy raises ValueError/OSError/UnpicklingError variants
        raise LatentsError(f"--latents file {path} is not a numpy .npy array ({type(e).__name__}).",
                           fix="write it with numpy.save(path, array).") from None
