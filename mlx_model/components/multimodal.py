"""Prompts with an image: the placeholder becomes the projected image embeddings.

As Mobile-O (LLaVA) does it (docs/model-facts.md section 6): the templated prompt is split on
``<image>`` (:data:`weights.core.prompts.IMAGE_PLACEHOLDER`), each piece is tokenized on its own,
and the pieces' token embeddings are joined with the ``num_tokens`` projected image
embeddings.  Shared by understanding and editing.

    enc = ImageEncoder.from_checkpoint(ckpt)
    image = enc(pixels)                                    # [1, N, hidden]
    prompt = MultimodalPrompt.build(llm.tokenizer, understanding_prompt(q), N)
    embeds = prompt.embed(llm, image)                      # [1, L, hidden]
"""

from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx
import numpy as np

from weights.core.prompts import IMAGE_PLACEHOLDER, IMAGE_TOKEN, MAX_PROMPT_TOKENS

from mlx_model.support.preprocess import preprocess
from mlx_model.components.projector import Projector
from mlx_model.support.tokenizer import PromptError
from mlx_model.components.vision import VisionTower


def check_no_placeholder(text: str, what: str = "question") -> None:
    """User text must not hold ``<image>``: the template places the one image.  Checked before
    anything is loaded or printed (and again by :meth:`MultimodalPrompt.build`)."""
    if IMAGE_PLACEHOLDER in (text or ""):
        raise PromptError(f"the {what} holds {IMAGE_PLACEHOLDER}; Mobile-O takes exactly one image, which "
                          "the prompt template places itself.",
                          fix=f"remove {IMAGE_PLACEHOLDER} from the {what}.")


@dataclass(frozen=True)
class MultimodalPrompt:
    pieces: tuple[tuple[int, ...], ...]  # token ids before and after the image
    num_image_tokens: int
    image_token_id: int  # stands in for each image position in :meth:`ids` (never embedded)

    @classmethod
    def build(cls, tokenizer, text: str, num_image_tokens: int,
              max_tokens: int = MAX_PROMPT_TOKENS, image: bool = True) -> "MultimodalPrompt":
        """``text``: a templated prompt holding exactly one ``<image>`` (none when not
        ``image``: a text-only prompt is one piece); with the image's tokens it must fit
        ``max_tokens`` (the Core ML prefill's longest length too)."""
        parts = text.split(IMAGE_PLACEHOLDER)
        if len(parts) != (2 if image else 1):
            raise PromptError(f"the prompt holds {len(parts) - 1} {IMAGE_PLACEHOLDER} placeholders; "
                              "Mobile-O takes exactly one image.",
                              fix=f"remove {IMAGE_PLACEHOLDER} from the question or instruction.")
        prompt = cls(tuple(tuple(tokenizer.encode(p)) for p in parts), num_image_tokens,
                     tokenizer.token_id(IMAGE_TOKEN))
        if len(prompt) > max_tokens:
            raise PromptError(f"the prompt is {len(prompt)} tokens with its template and the "
                              f"{num_image_tokens} image tokens; the limit is {max_tokens}.",
                              fix="shorten the question or instruction.")
        return prompt

    def __len__(self) -> int:
        return sum(map(len, self.pieces)) + self.num_image_tokens * (len(self.pieces) - 1)

    def ids(self) -> list[int]:
        """The flat sequence with ``image_token_id`` in the image positions."""
        out = list(self.pieces[0])
        for piece in self.pieces[1:]:
            out += [self.image_token_id] * self.num_image_tokens + list(piece)
        return out

    def image_positions(self) -> slice:
        start = len(self.pieces[0])
        return slice(start, start + self.num_image_tokens * (len(self.pieces) - 1))

    def keys(self, image_key: str = "") -> list:
        """One hashable key per position, for prompt-cache reuse: text positions are their
        token ids, image positions ``(image_key, i)`` (so another image never matches)."""
        out = list(self.ids())
        pos = self.image_positions()
        out[pos] = [(image_key, i) for i in range(pos.stop - pos.start)]
        return out

    def embed(self, llm, image_embeds: mx.array) -> mx.array:
        """[1, len(self), D]: text embeddings with ``image_embeds`` [1, N, D] spliced in."""
        if image_embeds.shape[:2] != (1, self.num_image_tokens):
            raise ValueError(f"expected image embeddings [1, {self.num_image_tokens}, D], got {image_embeds.shape}")
        parts = []
        for i, piece in enumerate(self.pieces):
            if i:
                parts.append(image_embeds.astype(llm.dtype))
            if piece:
                parts.append(llm.embed(mx.array([piece])))
        return mx.concatenate(parts, axis=1)


class ImageEncoder:
    """Pixels -> FastViTHD -> mlp2x_gelu projector: the image tokens the LLM reads."""

    def __init__(self, vision: VisionTower, projector: Projector, config):
        self.vision = vision
        self.projector = projector
        self.config = config  # MobileOConfig

    @classmethod
    def from_checkpoint(cls, ckpt, quantize: int = 0, group_size: int | None = None) -> "ImageEncoder":
        """The ``vision_encoder`` component (weights.core.components): checkpoint parts
        ``vision`` and ``projector``, from a checkpoint or an MLX folder; ``quantize``: ``-q``
        (the tower's matmul layers: :meth:`VisionTower.from_checkpoint`)."""
        return cls(VisionTower.from_checkpoint(ckpt, quantize, group_size), Projector.from_checkpoint(ckpt),
                   ckpt.config)

    @property
    def num_tokens(self) -> int:
        return self.config.vision.num_tokens

    def pixels(self, image) -> np.ndarray:
        """A path, PIL image or uint8 array -> [1, S, S, 3] float32 (Mobile-O preprocessing)."""
        return preprocess(image, self.config.preprocess)[None]

    def __call__(self, pixels) -> mx.array:
        """[B, S, S, 3] pixels -> [B, N, llm hidden] (fp32)."""
        return self.projector(self.vision(mx.array(pixels, dtype=mx.float32)))

    def encode(self, image) -> mx.array:
        """An image (path, PIL image, uint8 array) or float pixels [S, S, 3] / [1, S, S, 3]
        already preprocessed -> [1, N, hidden]."""
        if isinstance(image, np.ndarray) and np.issubdtype(image.dtype, np.floating):
            s = self.config.preprocess.size
            if image.shape not in ((s, s, 3), (1, s, s, 3)):
                raise ValueError(f"preprocessed pixels must be [{s}, {s}, 3], got {list(image.shape)}")
            return self(image.reshape(1, s, s, 3))
        return self(self.pixels(image))
