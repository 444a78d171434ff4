"""One image request's settings: what decides the pixels besides the model, the inputs (an
image to edit, starting latents) and how the weights run (quantization, dtype).

:class:`ImageSettings` is built from command-line flags, a batch line, a server request or an
image's metadata, and each of those only translates into it.  It checks itself (the one place
for ranges, NaN, seeds and sizes; errors are :class:`~weights.core.errors.SettingError` naming
the setting), fills the model's defaults once (:meth:`ImageSettings.resolved`), draws a missing
seed one way (:func:`draw_seed`) and renders its own metadata (:meth:`ImageSettings.metadata`).
:meth:`GenerationPipeline.generate <mlx_model.pipelines.generation.GenerationPipeline.generate>`
takes it.  Imports neither MLX nor torch.
"""

from __future__ import annotations

import math
import numbers
import secrets
from dataclasses import dataclass, replace

from weights.core.configs import GenerationDefaults
from weights.core.samplers import DEFAULT_SAMPLER, SAMPLERS
from weights.core.errors import MobileOError, SettingError

__all__ = ["ImageSettings", "SEED_LIMIT", "MAX_STEPS", "MAX_SIDE_FACTOR", "draw_seed", "check_seed",
           "check_several_seeds", "latent_shape", "size_multiple", "refuse_nonfinite"]

SEED_LIMIT = 2**64  # seeds are unsigned 64-bit (mx.random.key)
DRAWN_SEEDS = 2**31  # a seed nobody gave is drawn below this (short to type back)
MAX_STEPS = 1000  # the scheduler's training timesteps
MAX_SIDE_FACTOR = 8  # width/height up to 8x the model's own image size


def draw_seed() -> int:
    """The seed of a request that gave none (the one way every entry point draws it)."""
    return secrets.randbelow(DRAWN_SEEDS)


def _whole(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def check_seed(seed, n_images: int = 1) -> None:
    """A seed is a whole number in [0, 2**64) with ``seed + n_images - 1`` in range too."""
    top = SEED_LIMIT - max(n_images, 1)
    if not _whole(seed) or not 0 <= seed <= top:
        extra = f" (image {n_images} of {n_images} uses seed + {n_images - 1})" if n_images > 1 else ""
        raise SettingError("seed", f"{{name}} {seed} is out of range: seeds are whole numbers from 0 to {top}{extra}.",
                           fix="pass a seed in that range, e.g. {name} 42.")


def size_multiple(config) -> int:
    """Image sides must be multiples of this: the DC-AE's spatial compression times the DiT's patch."""
    return config.vae.spatial_compression * config.dit.patch_size


def latent_shape(config, height: int | None = None, width: int | None = None) -> tuple[int, int, int]:
    """(C, h, w) of one latent for a ``height`` x ``width`` image (None: the model's own size).

    SANA's DiT has no positional embedding and the DC-AE is convolutional, so any side that is a
    multiple of :func:`size_multiple` works up to ``MAX_SIDE_FACTOR`` times the training size;
    quality is best near it."""
    c, h, w = config.latent_shape
    f, m = config.vae.spatial_compression, size_multiple(config)
    top = MAX_SIDE_FACTOR * config.image_size
    for name, side in (("height", height), ("width", width)):
        if side is None:
            continue
        if not _whole(side) or side < m or side % m:
            near = max(m, round(side / m) * m) if _whole(side) else config.image_size
            raise SettingError(name, f"{{name}} {side} is not a positive multiple of {m} (this model's DC-AE "
                               f"compresses {f}x{f} pixels into one latent).",
                               fix=f"pass a multiple of {m}, e.g. {{name}} {near}.")
        if side > top:
            raise SettingError(name, f"{{name}} {side} is larger than {top} pixels ({MAX_SIDE_FACTOR}x the "
                               f"{config.image_size} px this model was trained at).", fix=f"pass {{name}} {top} or less.")
    return (c, h if height is None else int(height) // f, w if width is None else int(width) // f)


@dataclass(frozen=True)
class ImageSettings:
    """The settings of one generation (or edit: ``prompt`` is then the instruction).

    ``None`` means "the model's default" until :meth:`resolved` fills it in; ``seed`` None with
    no starting latents is drawn there.  Image ``i`` of ``n_images`` uses ``seed + i``, so any
    image can be remade alone."""

    prompt: str
    steps: int | None = None
    guidance: float | None = None
    seed: int | None = None
    n_images: int = 1
    height: int | None = None
    width: int | None = None
    scheduler: str = DEFAULT_SAMPLER

    def check(self, config=None) -> ImageSettings:
        """Every setting in range (sizes against ``config`` when given); returns ``self``."""
        from mlx_model.support.tokenizer import PromptError

        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise PromptError("the prompt is empty.", fix="pass a non-empty prompt, e.g. \"a red cup\".")
        if self.steps is not None and (not _whole(self.steps) or not 1 <= self.steps <= MAX_STEPS):
            raise SettingError("steps", f"{{name}} must be from 1 to {MAX_STEPS}, got {self.steps}.",
                               fix="pass e.g. {name} 20.")
        if self.guidance is not None and (isinstance(self.guidance, bool) or not isinstance(self.guidance, numbers.Real)
                                          or not math.isfinite(self.guidance)):
            raise SettingError("guidance", f"{{name}} must be a finite number, got {self.guidance}.",
                               fix="pass e.g. {name} 1.5.")
        if not _whole(self.n_images) or self.n_images < 1:
            raise SettingError("n_images", f"{{name}} must be at least 1, got {self.n_images}.",
                               fix="pass {name} 1 or more.")
        if self.seed is not None:
            check_seed(self.seed, self.n_images)
        if self.scheduler not in SAMPLERS:
            raise SettingError("scheduler", f"unknown {{name}} {self.scheduler!r}.", fix=f"use one of {sorted(SAMPLERS)}.")
        if config is not None:
            latent_shape(config, self.height, self.width)
        return self

    def resolved(self, config, *, draw: bool = True) -> ImageSettings:
        """Checked, with the model's defaults filled in (steps, guidance, size) and a drawn seed
        where none was given; ``draw=False`` (starting latents given): no seed at all, since the
        latents, not a seed, make the image."""
        self.check(config)
        d = config.defaults
        return replace(self, steps=d.steps if self.steps is None else int(self.steps),
                       guidance=float(d.guidance if self.guidance is None else self.guidance),
                       height=config.image_size if self.height is None else int(self.height),
                       width=config.image_size if self.width is None else int(self.width),
                       seed=(draw_seed() if self.seed is None else self.seed) if draw else None)

    def latent_shape(self, config) -> tuple[int, int, int]:
        return latent_shape(config, self.height, self.width)

    def metadata(self, index: int = 0, edit: bool = False) -> dict:
        """What image ``index`` of these (resolved) settings carries: the keys mobileo-generate
        and mobileo-edit write, which ``--config-from-metadata`` reads back."""
        text = {"task": "edit", "instruction": self.prompt} if edit else {"prompt": self.prompt}
        return {**text, "steps": self.steps, "guidance": self.guidance, "scheduler": self.scheduler,
                "n_images": self.n_images, "index": index,
                "seed": None if self.seed is None else self.seed + index, "size": [self.height, self.width]}


def check_several_seeds(seeds, n_images: int = 1) -> list[int] | None:
    """Several seeds (one image each, as mflux's ``--seed 1 2 3``): each checked, none repeated,
    not together with several images per seed.  None: draw one."""
    if seeds is None:
        return None
    seeds = [seeds] if _whole(seeds) or not isinstance(seeds, (list, tuple)) else list(seeds)
    if not seeds:
        raise SettingError("seed", "{name} needs at least one value.",
                           fix="pass e.g. {name} 42, or leave it out for a random seed.")
    for s in seeds:
        check_seed(s, n_images)
    seeds = [int(s) for s in seeds]
    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    if repeated:
        raise SettingError("seed", f"{{name}} {repeated[0]} is given more than once.", fix="pass each seed once.")
    if len(seeds) > 1 and n_images != 1:
        raise SettingError("seed", f"several {{name}} values and --n-images {n_images} together: each seed "
                           "already makes one image.", fix="pass several seeds, or one seed with --n-images.")
    return seeds


def refuse_nonfinite(latents, guidance) -> None:
    """Final latents holding NaN or infinity (a diverged run) are an error, never an image."""
    import numpy as np

    if not np.isfinite(np.asarray(latents)).all():
        raise MobileOError(f"sampling diverged: the final latents hold NaN or infinity (guidance {guidance}).",
                           fix=f"lower the guidance (Mobile-O uses {GenerationDefaults().guidance}).")
