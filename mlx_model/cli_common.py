"""The CLI kit of the MLX commands (``generate``, ``edit``, ``understand``, ``chat``,
``convert``, the server's command line): options, output paths, the rich progress bar, the
closing timing line and one run of an image command.  The settings themselves and their
checks are library code (:mod:`mlx_model.support.image_settings`); nothing below the
commands imports this module.  Imports neither torch nor (at module level) MLX."""

from __future__ import annotations

import argparse
import os
import re
import sys
from dataclasses import replace
from pathlib import Path
from typing import Sequence

from weights.core.configs import GenerationDefaults
from weights.core.samplers import DEFAULT_SAMPLER, SAMPLERS, sampler_help
from weights.core.errors import MobileOError
from weights.loading.hub import DEMO

from mlx_model.interrupt import ready
from mlx_model.pipelines.peers import DEFAULT_PEER_TIMEOUT, end_process
from mlx_model.support.image_files import (IMAGE_FORMATS, check_writable_folder, output_paths, run_metadata,
                                           save_image, unique_path)
from mlx_model.support.image_settings import SEED_LIMIT, ImageSettings, check_several_seeds
from mlx_model.support.quant import DEFAULT_QUANTIZE, QUANT_GROUP_SIZE, QUANTIZE_CHOICES

DTYPES = ("float32", "bfloat16", "float16")


# ------------------------------------------------------------------ a command's main()
# flags of mflux and mlx-lm these commands do not take, each with what to use instead
FOREIGN_FLAGS = {
    "-m": "use --model (e.g. --model demo).",
    "--path": "use --model FOLDER.",
    "--base-model": "use --model (Mobile-O has one base model).",
    "--auto-seeds": "use --seed S --n-images N (seeds S, S+1, ...), or several --seed values.",
    "--negative-prompt": "Mobile-O takes no negative prompt: say what you want in the prompt, or lower --guidance.",
    "--low-ram": "use --low-memory.",
    "--image-path": "give the image to mobileo-edit (mobileo-edit photo.jpg \"make it snowy\").",
    "--init-image-path": "use mobileo-edit photo.jpg \"instruction\" (Mobile-O edits by instruction).",
    "--image-strength": "use mobileo-edit (Mobile-O edits by instruction, not by strength).",
    "--lora-paths": "LoRA adapters are not supported.",
    "--mlx-cache-limit-gb": "not needed: use --low-memory to keep memory down.",
    "--max-tokens": "this command makes images; mobileo-understand and mobileo-chat take --max-tokens.",
    "--temp": "this command makes images; mobileo-chat takes --temperature.",
}


def check_foreign_flags(p: argparse.ArgumentParser, argv: Sequence[str]) -> None:
    """A flag of mflux or mlx-lm that ``p`` does not take: one error saying what to use instead."""
    for tok in argv:
        if tok == "--":
            return
        name = tok.split("=", 1)[0]
        if name in FOREIGN_FLAGS and name not in p._option_string_actions:
            raise MobileOError(f"{p.prog} has no {name} option.", fix=FOREIGN_FLAGS[name])


class SeedsAction(argparse.Action):
    """``--seed S [S ...]``: the whole numbers that follow; the first word that is not one (a
    prompt, an image path) is kept for the positional arguments (:func:`parse`), so
    ``--seed 1 "a red cup"`` works as mflux users type it."""

    def __call__(self, parser, namespace, values, option_string=None):
        seeds, rest = [], []
        for v in values:
            if not rest and re.fullmatch(r"[+-]?\d+", v.strip()):
                seeds.append(int(v))
            else:
                rest.append(v)
        if not seeds:
            raise MobileOError(f"--seed {values[0]!r} is not a whole number.", fix="pass e.g. --seed 3.")
        setattr(namespace, self.dest, seeds)
        setattr(namespace, "spilled_positionals", [*getattr(namespace, "spilled_positionals", []), *rest])


def parse(p: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """``p.parse_args(argv)``, with the words ``--seed`` passed on (:class:`SeedsAction`) given
    to the positional arguments left empty, in order; a word too many is an error."""
    check_foreign_flags(p, argv)
    a = p.parse_args(argv)
    spilled = list(getattr(a, "spilled_positionals", []))
    for action in p._actions:
        if spilled and not action.option_strings and action.nargs == "?" and getattr(a, action.dest) is None:
            setattr(a, action.dest, spilled.pop(0))
    if spilled:
        raise MobileOError(f"unexpected argument {spilled[0]!r} after --seed.",
                           fix="quote a prompt with spaces as one argument, or pass it with --prompt.")
    if hasattr(a, "spilled_positionals"):
        del a.spilled_positionals
    return a


def run_command(p: argparse.ArgumentParser, run, argv: list[str] | None = None) -> None:
    """Parse ``argv`` (None: the command line, the process prepared first: OpenBLAS, malloc) and call
    ``run(p, args, argv)``; project errors end as one ``error: ... Fix: ...`` line, exit 2."""
    from weights.core.errors import run_cli

    from mlx_model.support.platform import prepare_cpu_process

    if argv is None:
        prepare_cpu_process()
    argv = sys.argv[1:] if argv is None else list(argv)
    ready()  # from here run_cli says "interrupted"
    try:
        run_cli(lambda: run(p, parse(p, argv), argv))
    except SystemExit as e:
        end_process(e.code)  # a batch rank that gave up on its group (peers.end_process)
        raise
    end_process(0)


# ------------------------------------------------------------------ options
def add_model_options(p: argparse.ArgumentParser) -> None:
    from weights.loading.hub import DEFAULT_MODEL

    g = p.add_argument_group("model")
    g.add_argument("--model", default=DEFAULT_MODEL,
                   help=f"hub id, local folder, or '{DEMO}' (tiny random weights). Default {DEFAULT_MODEL}")
    g.add_argument("--revision", default=None, help="hub revision (branch, tag or commit)")
    g.add_argument("-q", "--quantize", type=int, choices=QUANTIZE_CHOICES, default=DEFAULT_QUANTIZE,
                   help=f"bits for the LLM and DiT Linear layers, group {QUANT_GROUP_SIZE} (0 = float). "
                        f"Default {DEFAULT_QUANTIZE}")
    g.add_argument("--dtype", choices=DTYPES, default=None,
                   help="weights/activations dtype (default: float32 on CPU, bfloat16 on Metal)")
    g.add_argument("--low-memory", action=argparse.BooleanOptionalAction, default=None,
                   help="load each component just before its phase and drop it after "
                        "(default: on below 16 GB of RAM, or as MOBILEO_LOW_MEMORY=1/0 says)")


def add_text_argument(p: argparse.ArgumentParser, name: str, help: str, flags: Sequence[str] = ("--prompt", "-p")) -> None:
    """``name`` as an optional positional and as ``--prompt`` (mflux's and mlx-lm's flag); ``-`` reads stdin.
    Resolve with :func:`pick_text`."""
    p.add_argument(name, nargs="?", default=None, help=f"{help} ('-' reads it from stdin)")
    p.add_argument(*flags, dest=f"{name}_flag", default=None, metavar=name.upper(),
                   help=f"the {name}, as a flag (instead of the argument)")


def pick_text(positional: str | None, flag: str | None, what: str, flag_name: str = "--prompt",
              example: str = "a red cup", stdin=None) -> str | None:
    """One text from an argument or its flag (None when neither); ``-`` is read from stdin."""
    if positional is not None and flag is not None and positional != flag:
        raise MobileOError(f"the {what} is given twice: as an argument ({positional!r}) and with {flag_name} "
                           f"({flag!r}).", fix=f"pass it once, e.g. {flag_name} \"{example}\".")
    text = flag if flag is not None else positional
    if text == "-":
        text = (stdin or sys.stdin).read().rstrip("\n")
    return text


def add_sampling_options(p: argparse.ArgumentParser, defaults: GenerationDefaults = GenerationDefaults()) -> None:
    g = p.add_argument_group("sampling")
    g.add_argument("--steps", type=int, default=None, help=f"denoising steps (default: the model's, {defaults.steps})")
    g.add_argument("--guidance", type=float, default=None,
                   help=f"classifier-free guidance scale (default: the model's, {defaults.guidance})")
    g.add_argument("--seed", action=SeedsAction, nargs="+", default=None, metavar="SEED",
                   help="seed(s) of the initial noise. Several seeds make one image each, the seed in its "
                   "name (image_seed_3.png); with one seed, image i of --n-images uses seed + i. "
                   f"0 to {SEED_LIMIT - 1} (default: random)")
    g.add_argument("--n-images", type=int, default=1, help="images to make (default 1)")
    g.add_argument("--width", type=int, default=None,
                   help="image width in pixels, a multiple of 32 for Mobile-O (default: the model's, 512)")
    g.add_argument("--height", type=int, default=None,
                   help="image height in pixels, a multiple of 32 for Mobile-O (default: the model's, 512)")
    g.add_argument("--latents", default=None, metavar="FILE.npy",
                   help="start from this noise, shape (n-images, C, h, w), instead of a seeded one")
    g.add_argument("--scheduler", choices=tuple(SAMPLERS), default=DEFAULT_SAMPLER, help=sampler_help())
    g.add_argument("--config-from-metadata", default=None, metavar="IMAGE",
                   help="take every setting (prompt, seed, size, model, ...) from an image this tool wrote "
                   "(PNG, JPEG, WebP or its .json sidecar); flags given as well override it")


def settings_of(a: argparse.Namespace, text: str) -> ImageSettings:
    """The image settings :func:`add_sampling_options`' flags ask for (``--seed``'s values go
    to the command as its ``seeds``: one run per seed when there are several)."""
    return ImageSettings(text, steps=a.steps, guidance=a.guidance, n_images=a.n_images, height=a.height,
                         width=a.width, scheduler=a.scheduler)


def add_output_options(p: argparse.ArgumentParser, default: str = "image.png") -> None:
    g = p.add_argument_group("output")
    g.add_argument("--output", default=default,
                   help="image path; the extension picks the format: .png (default), .jpg/.jpeg or .webp. "
                   f"Never overwritten (_1, _2, ...). Default {default}")
    g.add_argument("--metadata", action="store_true", help="also write the settings as JSON beside each image")
    g.add_argument("--stepwise-image-output-dir", default=None, metavar="DIR",
                   help="also save the decoded latents after every step here (slower: one decode per step)")
    g.add_argument("-v", "--verbose", action="store_true", help="print model, prompt and per-phase details")


def add_batch_options(p: argparse.ArgumentParser) -> None:
    """``--prompts-file`` / ``--output-dir``: many prompts, one process or many (:mod:`mlx_model.pipelines.batch`)."""
    g = p.add_argument_group("batch (docs/batch-generation.md)")
    g.add_argument("--prompts-file", default=None, metavar="FILE",
                   help="make an image for every prompt of FILE (one per line, or .jsonl objects with \"prompt\" "
                   "and optional seed/steps/guidance/width/height/n_images) into --output-dir; under "
                   "`mlx.launch -n N` the prompts are shared among the N processes. --seed S (default 0): "
                   "prompt k without its own seed uses S + k")
    g.add_argument("--output-dir", default=None, metavar="DIR",
                   help="folder for --prompts-file's images ({prompt:05d}_{seed}.png) and index.jsonl; a rerun "
                   "keeps the images already there (whole, same settings) and remakes damaged ones")
    g.add_argument("--peer-timeout", type=float, default=None, metavar="SECONDS",
                   help="under mlx.launch: how long a process waits for the others (to start, or beyond the "
                   f"work it expects of them) before it names them and goes on alone (default {DEFAULT_PEER_TIMEOUT:g})")


def check_batch_command(*, text: str | None, output: str | None, seed, latents, stepwise_dir,
                        config_from_metadata, prompts_file: str | None, output_dir: str | None) -> None:
    """``--prompts-file`` with the options it cannot take (a prompt, --output, --latents, ...)."""
    if prompts_file is None:
        if output_dir is not None:
            raise MobileOError("--output-dir is for --prompts-file.",
                               fix="pass --prompts-file FILE as well, or use --output for one image.")
        return
    fix = "drop it: each prompt of the file gets its own image in --output-dir."
    for given, flag in ((text, "a prompt"), (output, "--output"), (latents, "--latents"),
                        (stepwise_dir, "--stepwise-image-output-dir"), (config_from_metadata, "--config-from-metadata")):
        if given is not None:
            raise MobileOError(f"--prompts-file and {flag} together.", fix=fix)
    if seed is not None and len(seed) > 1:
        raise MobileOError("--prompts-file takes one --seed (the base: prompt k without its own seed uses "
                           "seed + k).", fix="pass one --seed, or give per-prompt seeds in a .jsonl file.")
    if output_dir is None:
        raise MobileOError("--prompts-file needs --output-dir.", fix="pass e.g. --output-dir images/.")


def output_target(output: str | Path, flag: str = "--output") -> Path:
    """``--output`` checked before anything runs: the extension picks PNG, JPEG or WebP (none: .png),
    a folder is refused, and the nearest existing parent must be a writable folder."""
    text = str(output)
    path = Path(text).expanduser()
    if text.endswith(("/", os.sep)) or path.is_dir():
        raise MobileOError(f"{flag} {text} is a folder.",
                           fix=f"name a file in it, e.g. {flag} {path / 'image.png'}.")
    if path.suffix == "":
        path = path.with_suffix(".png")
    for p in (Path(text).expanduser(), path):
        if p.exists() and not p.is_file():  # a device (/dev/full, /dev/null), a pipe, a socket
            raise MobileOError(f"{flag} {text}: {p} is not a regular file (a device, pipe or socket).",
                               fix=f"name an image file, e.g. {flag} image.png.")
    if str(path.resolve().parent) == "/dev" or str(path.parent) == "/dev":
        raise MobileOError(f"{flag} {text}: /dev holds devices, not images.", fix=f"name an image file, e.g. {flag} image.png.")
    if path.suffix.lower() not in IMAGE_FORMATS:
        raise MobileOError(f"{flag} {text}: cannot write {path.suffix} images.",
                           fix=f"end the name with .png, .jpg or .webp, e.g. {flag} {path.with_suffix('.png')}.")
    check_writable_folder(path.parent, f"{flag} {text}")
    return path


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
def latents_arg(latents):
    """``--latents``: (array or None, file name or None); a path is read now, before any loading."""
    if isinstance(latents, (str, Path)):
        from mlx_model.pipelines.generation import load_latents

        return load_latents(latents), str(latents)
    return latents, None


def image_runs(settings: ImageSettings, seeds=None, latents=None) -> list[ImageSettings]:
    """The runs of one image command: ``settings`` once, or once per seed of several (one image
    each, named by its seed, as mflux does).  Everything is checked before any loading."""
    settings.check()
    several = check_several_seeds(seeds, settings.n_images)
    if several and len(several) > 1:
        if latents is not None:
            raise MobileOError("several --seed values and --latents together: the latents replace the seeds.",
                               fix="pass one of them.")
        return [replace(settings, seed=s, n_images=1) for s in several]
    return [replace(settings, seed=several[0]) if several else settings]


def check_output_options(output, stepwise_dir=None) -> Path:
    """``--output`` and ``--stepwise-image-output-dir`` before anything runs; returns the output path."""
    path = output_target(output)
    if stepwise_dir is not None:
        d = Path(stepwise_dir).expanduser()
        if d.exists() and not d.is_dir():
            raise MobileOError(f"--stepwise-image-output-dir {stepwise_dir} is a file.", fix="pass a folder.")
        check_writable_folder(d, f"--stepwise-image-output-dir {stepwise_dir}")
    return path


def open_checkpoint(model: str, revision: str | None, runs: Sequence[ImageSettings] = ()):
    """The checkpoint or MLX folder (config only, no weights yet) with each run's size checked against it."""
    from mlx_model.support.mlx_folder import open_model

    ckpt = open_model(model, revision=revision)
    for s in runs:
        s.check(ckpt.config)
    return ckpt


def _stepwise_saver(pipeline, folder: Path, stem: str, settings: ImageSettings, meta: dict, edit: bool, log):
    """``on_step`` for the pipeline: decode the latents after each step into ``folder``."""
    import numpy as np

    width = len(str(settings.steps))
    seed = settings.seed

    def on_step(step: int, latents) -> None:
        images = np.array(pipeline.decode(latents))
        for i, img in enumerate(images):
            tag = f"seed_{seed + i}" if seed is not None else f"{i}"
            path = unique_path(folder / f"{stem}_{tag}_step{step:0{width}d}of{settings.steps}.png")
            save_image(img, path, {**meta, **settings.metadata(i, edit), "step": step})
        if step == settings.steps:
            log(f"saved {settings.steps} step images{'' if seed is None else f' of seed {seed}'} in {folder}")

    return on_step


def run_and_save(pipeline, runs: Sequence[ImageSettings], *, image=None, meta: dict, latents, output: str | Path,
                 metadata: bool, verbose: bool, progress: bool, log, stepwise_dir: str | Path | None = None) -> list[Path]:
    """Sample each of ``runs`` (:func:`image_runs`) with a progress bar, save each image with its
    settings, print the closing line.

    ``image``: the pixels to edit (``runs``' prompts are then instructions); ``meta``: the
    command's own fields besides the settings (model, revision, latents file, input image);
    ``latents``: an array or None (:func:`latents_arg`).  Nothing is written unless the run
    succeeds."""
    output = output_target(output)
    edit = image is not None
    by_seed = len(runs) > 1
    run_meta = run_metadata(quantize=pipeline.quantize, dtype=pipeline.dtype, source=pipeline.source)
    results, timings, peaks = [], {}, {}
    for settings in runs:
        settings = settings.resolved(pipeline.config, draw=latents is None)
        on_step = None
        if stepwise_dir is not None:
            on_step = _stepwise_saver(pipeline, Path(stepwise_dir).expanduser(), output.stem, settings,
                                      {**meta, **run_meta}, edit, log)
        bar = StepProgress(settings.steps, description=f"seed {settings.seed}" if by_seed else "denoising",
                           enabled=progress)
        with bar:
            out = pipeline.generate(settings, image=image, latents=latents, progress=bar.update, on_step=on_step)
        if verbose:
            log(f"prompt: {out.prompt_tokens} tokens; seed: {out.settings.seed}")
        results.append(out)
        for k, v in out.timings.items():
            timings[k] = timings.get(k, 0.0) + v
        for k, v in out.peak_memory.items():
            peaks[k] = max(peaks.get(k, 0.0), v)
    seeds = [None if out.settings.seed is None else out.settings.seed + i
             for out in results for i in range(out.settings.n_images)]
    named = len(seeds) > 1 and None not in seeds  # several images: each named by its seed, as mflux does
    paths = output_paths(output, len(seeds), seeds if named else None)
    k = 0
    for out in results:
        for i, img in enumerate(out.images):
            path = paths[k] = save_image(img, paths[k], {**meta, **run_meta, **out.settings.metadata(i, edit)},
                                         write_json=metadata)
            log(f"saved {path}")
            k += 1
    timings = {"load": pipeline.load_seconds, **timings}
    peaks = {"load": pipeline.load_peak_memory, **peaks}
    if verbose:
        log("peak memory by phase: " + ", ".join(f"{k} {format_bytes(v)}" for k, v in peaks.items()))
    log(closing_line(timings, peaks, sum(out.settings.steps for out in results)))
    return paths
