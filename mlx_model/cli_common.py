"""Pieces shared by the MLX command lines (``generate``, ``edit``): options, output names
that never overwrite, PNG metadata, the rich progress bar and the closing timing line.
Imports neither torch nor (at module level) MLX."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Iterable

from weights.configs import DEFAULT_SAMPLER, SAMPLERS, GenerationDefaults
from weights.hub import DEMO

from .quant import QUANTIZE_CHOICES

DTYPES = ("float32", "bfloat16", "float16")
METADATA_KEY = "mobileo"  # PNG text chunk holding the generation settings (JSON)


# ------------------------------------------------------------------ options
def add_model_options(p: argparse.ArgumentParser) -> None:
    from weights.hub import DEFAULT_MODEL

    g = p.add_argument_group("model")
    g.add_argument("--model", default=DEFAULT_MODEL,
                   help=f"hub id, local folder, or '{DEMO}' (tiny random weights). Default {DEFAULT_MODEL}")
    g.add_argument("--revision", default=None, help="hub revision (branch, tag or commit)")
    g.add_argument("-q", "--quantize", type=int, choices=QUANTIZE_CHOICES, default=4,
                   help="bits for the LLM and DiT Linear layers, group 64 (0 = float). Default 4")
    g.add_argument("--dtype", choices=DTYPES, default=None,
                   help="weights/activations dtype (default: float32 on CPU, bfloat16 on Metal)")


def add_sampling_options(p: argparse.ArgumentParser, defaults: GenerationDefaults = GenerationDefaults()) -> None:
    g = p.add_argument_group("sampling")
    g.add_argument("--steps", type=int, default=defaults.steps, help=f"denoising steps (default {defaults.steps})")
    g.add_argument("--guidance", type=float, default=defaults.guidance,
                   help=f"classifier-free guidance scale (default {defaults.guidance})")
    g.add_argument("--seed", type=int, default=None, help="seed of the initial noise; image i of --n-images uses seed + i (default: random)")
    g.add_argument("--n-images", type=int, default=1, help="images to make (default 1)")
    g.add_argument("--latents", default=None, metavar="FILE.npy",
                   help="start from this noise, shape (n-images, C, h, w), instead of a seeded one")
    g.add_argument("--scheduler", choices=tuple(SAMPLERS), default=DEFAULT_SAMPLER,
                   help="dpm: DPM-Solver++ 2M with flow sigmas (Mobile-O's); euler: flow Euler")


def add_output_options(p: argparse.ArgumentParser, default: str = "image.png") -> None:
    g = p.add_argument_group("output")
    g.add_argument("--output", default=default, help=f"PNG path; never overwritten (_1, _2, ...). Default {default}")
    g.add_argument("--metadata", action="store_true", help="also write the settings as JSON beside each image")
    g.add_argument("-v", "--verbose", action="store_true", help="print model, prompt and per-phase details")


def dtype_of(name: str | None):
    if name is None:
        return None
    import mlx.core as mx

    return getattr(mx, name)


def dtype_name(dtype) -> str:
    return str(dtype).rsplit(".", 1)[-1]


# ------------------------------------------------------------------ outputs
def unique_path(path: str | Path, taken: Iterable[Path] = ()) -> Path:
    """``path`` if free, else ``stem_1.ext``, ``stem_2.ext``, ... (never an existing file)."""
    path = Path(path)
    if path.suffix == "":
        path = path.with_suffix(".png")
    taken = set(taken)
    candidate, i = path, 0
    while candidate.exists() or candidate.with_suffix(".json").exists() or candidate in taken:
        i += 1
        candidate = path.with_name(f"{path.stem}_{i}{path.suffix}")
    return candidate


def output_paths(path: str | Path, n: int) -> list[Path]:
    out: list[Path] = []
    for _ in range(n):
        out.append(unique_path(path, out))
    return out


def save_png(image, path: Path, metadata: dict, write_json: bool = False) -> Path:
    """Write a uint8 [H, W, 3] image with ``metadata`` in a PNG text chunk (and beside it).

    The file is written whole under a temporary name, then claimed with a hard link, which
    fails if the name exists: a file that appeared meanwhile (another run) is never
    overwritten; the next free name is taken instead.  Returns the path written."""
    import os
    import tempfile

    import numpy as np
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    path.parent.mkdir(parents=True, exist_ok=True)
    info = PngInfo()
    text = json.dumps(metadata, sort_keys=True)
    info.add_text(METADATA_KEY, text)
    info.add_text("parameters", text)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".png.partial", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            Image.fromarray(np.asarray(image, dtype=np.uint8)).save(f, format="PNG", pnginfo=info)
        while True:
            try:
                os.link(tmp, path)
                break
            except FileExistsError:
                path = unique_path(path)
    finally:
        os.unlink(tmp)
    if write_json:
        sidecar = path.with_suffix(".json")
        tmp_json = sidecar.with_name(f".{sidecar.name}.partial")
        tmp_json.write_text(json.dumps(metadata, indent=2, sort_keys=True) + "\n")
        tmp_json.replace(sidecar)
    return path


def read_png_metadata(path: str | Path) -> dict:
    from PIL import Image

    with Image.open(path) as im:
        return json.loads(im.text[METADATA_KEY])


# ------------------------------------------------------------------ progress and timing
class StepProgress:
    """A rich progress bar over denoising steps (on stderr); ``update(step, total)``."""

    def __init__(self, total: int, description: str = "denoising", enabled: bool = True):
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.enabled = enabled
        self._progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                  TextColumn("{task.fields[rate]}"), TimeRemainingColumn(),
                                  console=Console(stderr=True), transient=False, disable=not enabled)
        self._task = self._progress.add_task(description, total=total, rate="")
        self._t0 = None

    def __enter__(self):
        import time

        self._progress.start()
        self._t0 = time.perf_counter()
        return self

    def update(self, step: int, total: int):
        import time

        dt = (time.perf_counter() - self._t0) / max(step, 1)
        self._progress.update(self._task, completed=step, total=total, rate=f"{dt:.2f} s/step")

    def __exit__(self, *exc):
        self._progress.stop()


def format_bytes(n: float) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def closing_line(timings: dict[str, float], peaks: dict[str, float], steps: int | None = None) -> str:
    """e.g. ``load 1.20s | text 0.05s | denoise 3.10s (0.155 s/step) | decode 0.40s | peak memory 1.83 GB``"""
    parts = []
    for name, sec in timings.items():
        extra = f" ({sec / steps:.3f} s/step)" if name == "denoise" and steps else ""
        parts.append(f"{name} {sec:.2f}s{extra}")
    parts.append(f"peak memory {format_bytes(max(peaks.values(), default=0.0))}")
    return " | ".join(parts)


# ------------------------------------------------------------------ one run of an image command
GENERATOR = "mobileo-deploy mlx_model"


def latents_arg(latents):
    """``--latents``: (array or None, file name or None); a path is read now, before any loading."""
    if isinstance(latents, (str, Path)):
        from .pipeline import load_latents

        return load_latents(latents), str(latents)
    return latents, None


def run_and_save(pipeline, prompt: str, *, image=None, meta: dict, steps: int | None, guidance: float | None, seed: int | None,
                 n_images: int, latents, scheduler: str, output: str | Path, metadata: bool,
                 verbose: bool, progress: bool, log) -> list[Path]:
    """Sample with a progress bar, save each image with its settings, print the closing line.

    ``prompt`` (and ``image``, when editing) go to the pipeline's ``generate``; ``meta``
    holds the command's own settings (prompt, image, model, latents file, ...); ``latents`` is an array or None (see :func:`latents_arg`); ``steps`` / ``guidance`` None
    take the model's defaults.
    """
    defaults = pipeline.config.defaults
    steps = defaults.steps if steps is None else steps
    guidance = defaults.guidance if guidance is None else guidance
    bar = StepProgress(steps, enabled=progress)
    with bar:
        out = pipeline.generate(prompt, image=image, steps=steps, guidance=guidance, seed=seed,
                                n_images=n_images, latents=latents, scheduler=scheduler, progress=bar.update)
    if verbose:
        log(f"prompt: {out.prompt_tokens} tokens; seed: {out.seed}")
    paths = output_paths(output, n_images)
    for i, (img, path) in enumerate(zip(out.images, paths)):
        settings = {**meta, "steps": steps, "guidance": guidance, "n_images": n_images, "index": i,
                    "seed": None if out.seed is None else out.seed + i, "scheduler": scheduler,
                    "quantize": pipeline.quantize, "dtype": dtype_name(pipeline.dtype),
                    "size": list(img.shape[:2]), "generator": GENERATOR}
        path = paths[i] = save_png(img, path, settings, write_json=metadata)
        log(f"saved {path}")
    timings = {"load": pipeline.load_seconds, **out.timings}
    peaks = {"load": pipeline.load_peak_memory, **out.peak_memory}
    if verbose:
        log("peak memory by phase: " + ", ".join(f"{k} {format_bytes(v)}" for k, v in peaks.items()))
    log(closing_line(timings, peaks, steps))
    return paths
