"""One Mobile-O loaded once for everything it does: understanding (chat about an image),
generation and editing share the LLM, the vision tower, the projector and the tokenizer.
Used by the chat REPL (:mod:`mlx_model.chat`) and the server (:mod:`mlx_model.server`).

    m = MobileO.from_pretrained("demo", quantize=0)
    m.understanding.answer("photo.jpg", "What is it?", temp=0)
    m.generation.generate(ImageSettings("a red cup", seed=0)).images
    m.generation.edit("photo.jpg", ImageSettings("make it snowy", seed=0))

The DiT and the DC-AE are loaded by the first image made (a chat that only talks never
loads them); with ``low_memory`` every component is dropped after its phase, as in
:mod:`mlx_model.pipelines.generation`.
"""

from __future__ import annotations

from weights.loading.hub import DEFAULT_MODEL

from mlx_model.pipelines.generation import GenerationPipeline
from mlx_model.pipelines.understanding import Understanding
from mlx_model.support.quant import DEFAULT_QUANTIZE

__all__ = ["MobileO"]


class MobileO:
    def __init__(self, understanding: Understanding, generation: GenerationPipeline, name: str = ""):
        self.understanding = understanding
        self.generation = generation
        self.name = name  # the --model it was opened as

    @property
    def config(self):
        return self.understanding.config

    @classmethod
    def from_checkpoint(cls, ckpt, quantize: int = DEFAULT_QUANTIZE, dtype=None, low_memory: bool | None = None,
                        name: str = "") -> "MobileO":
        und = Understanding.from_checkpoint(ckpt, quantize=quantize, dtype=dtype, low_memory=low_memory)
        shared = {"llm": und.parts["llm"], "encoder": und.parts["encoder"]}
        # loaded lazily (low_memory=True loads nothing), then kept or dropped as `und` is
        gen = GenerationPipeline.from_checkpoint(ckpt, quantize=quantize, dtype=dtype, edit=True, low_memory=True,
                                                 shared=shared, tokenizer=und.tokenizer)
        gen.low_memory = und.low_memory
        return cls(und, gen, name or str(ckpt.folder))

    @classmethod
    def from_pretrained(cls, model: str = DEFAULT_MODEL, quantize: int = DEFAULT_QUANTIZE, dtype=None, revision: str | None = None,
                        low_memory: bool | None = None) -> "MobileO":
        from mlx_model.support.mlx_folder import open_model

        return cls.from_checkpoint(open_model(model, revision=revision), quantize=quantize, dtype=dtype,
                                   low_memory=low_memory, name=model)
