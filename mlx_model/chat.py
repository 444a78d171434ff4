"""``mobileo-chat [IMAGE]`` (or ``python -m mlx_model.chat``): a multi-turn chat with Mobile-O
about an image, with MLX only -- as ``mlx_lm.chat``, plus image commands.

The image's prefix (vision tower, projector and its prefill) is computed once and kept in the
KV cache across turns (:class:`mlx_model.pipelines.conversation.Conversation`); each turn prefills only
what is new.  Commands:

    /image PATH        talk about another image (a new conversation)
    /generate PROMPT   make an image with the same loaded model (saved in --output-dir)
    /reset             forget the conversation, keep the image
    /help              the commands
    /quit              leave (so do Ctrl-D and Ctrl-C)

Decoding flags and defaults are ``mobileo-understand``'s (greedy unless ``--temp``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from weights.core.samplers import DEFAULT_SAMPLER, SAMPLERS, sampler_help
from weights.core.errors import MobileOError

from mlx_model import cli_common as cc
from mlx_model.support.image_files import check_writable_folder
from mlx_model.support.image_settings import ImageSettings, check_seed
from mlx_model.support.platform import dtype_of
from mlx_model.understand import CLI_DEFAULTS

__all__ = ["ChatREPL", "main"]

HELP = """commands:
  /image PATH        talk about another image (starts a new conversation)
  /generate PROMPT   make an image (saved in the output folder)
  /reset             forget the conversation, keep the image
  /help              this list
  /quit              leave (Ctrl-D too)"""


class ChatREPL:
    """The loop, apart from the terminal: :meth:`handle` takes one input line."""

    def __init__(self, model, image=None, *, output_dir: str | Path = ".", system_prompt: str | None = None,
                 seed: int | None = None, scheduler: str = DEFAULT_SAMPLER, out=None, **decoding):
        from mlx_model.pipelines.conversation import Conversation

        self.model = model  # a MobileO
        self.out = out or sys.stdout
        self.output_dir = Path(output_dir).expanduser()
        self.seed = seed
        self.scheduler = scheduler  # /generate's sampler
        self.decoding = decoding
        self.chat = Conversation(model.understanding, image, system_prompt=system_prompt)

    def say(self, text: str = "", end: str = "\n") -> None:
        print(text, end=end, file=self.out, flush=True)

    def handle(self, line: str) -> bool:
        """Run one line; False when the user asked to leave.  Errors are printed, not raised."""
        line = line.strip()
        if not line:
            return True
        command, _, rest = line.partition(" ") if line.startswith("/") else ("", "", line)
        rest = rest.strip()
        try:
            if command in ("/quit", "/exit", "/q"):
                return False
            if command == "/help":
                self.say(HELP)
            elif command == "/reset":
                self.chat.reset()
                self.say("(conversation reset)")
            elif command == "/image":
                if not rest:
                    raise MobileOError("/image needs a path.", fix="/image photo.jpg")
                self.chat.set_image(Path(rest).expanduser())
                self.say(f"(now talking about {rest}; new conversation)")
            elif command == "/generate":
                self.generate(rest)
            elif command:
                raise MobileOError(f"unknown command {command}.", fix="type /help for the commands.")
            else:
                self.ask(rest)
        except MobileOError as e:
            self.say(f"error: {e}")
        return True

    def ask(self, question: str) -> str:
        text = ""
        for r in self.chat.ask(question, seed=self.seed, **self.decoding):
            self.say(r.text, end="")
            text += r.text
        self.say()
        return text

    def generate(self, prompt: str) -> list[Path]:
        if not prompt:
            raise MobileOError("/generate needs a prompt.", fix="/generate a red cup")
        settings = ImageSettings(prompt, seed=self.seed, scheduler=self.scheduler)
        return cc.run_and_save(self.model.generation, [settings], meta={"model": self.model.name}, latents=None,
                               output=self.output_dir / "image.png", metadata=False, verbose=False, progress=False,
                               log=self.say)

    def run(self, stdin=None) -> None:
        """Read lines until /quit or end of input; the prompt is shown on a terminal only."""
        stdin = stdin or sys.stdin
        tty = stdin.isatty()
        self.say(f"Mobile-O chat ({self.model.name}). Type a question, or /help.")
        while True:
            try:
                line = input("> ") if tty else stdin.readline()
            except (EOFError, KeyboardInterrupt):
                self.say()
                return
            if not tty and line == "":
                return
            if not self.handle(line):
                return


def parser() -> argparse.ArgumentParser:
    d = CLI_DEFAULTS
    p = argparse.ArgumentParser(prog="mobileo-chat", description="Chat with Mobile-O about an image, with MLX.")
    p.add_argument("image", nargs="?", default=None, help="image to talk about (optional; /image changes it)")
    cc.add_model_options(p)
    g = p.add_argument_group("decoding (as mobileo-understand)")
    g.add_argument("--system-prompt", default=None, help="replaces Mobile-O's system message")
    g.add_argument("--max-tokens", "-m", type=int, default=d.max_tokens,
                   help=f"most tokens per answer (default {d.max_tokens})")
    g.add_argument("--temp", type=float, default=d.temperature, help=f"0 = greedy (default {d.temperature})")
    g.add_argument("--top-p", type=float, default=d.top_p, help=f"1.0 = off (default {d.top_p})")
    g.add_argument("--top-k", type=int, default=d.top_k, help=f"0 = off (default {d.top_k})")
    g.add_argument("--min-p", type=float, default=d.min_p, help=f"0 = off (default {d.min_p})")
    g.add_argument("--seed", type=int, default=None, help="random seed for sampling and /generate")
    p.add_argument("--scheduler", choices=tuple(SAMPLERS), default=DEFAULT_SAMPLER, help="/generate's sampler: " + sampler_help())
    p.add_argument("--output-dir", default=".", help="where /generate saves its images (default: here)")
    return p


def _run(a) -> None:
    from mlx_model.pipelines.mobileo import MobileO
    from mlx_model.pipelines.understanding import check_options

    check_options(a.max_tokens, a.temp, a.top_p, a.top_k, a.min_p)
    if a.seed is not None:
        check_seed(a.seed)
    check_writable_folder(Path(a.output_dir).expanduser(), f"--output-dir {a.output_dir}")
    if a.image is not None:
        from mlx_model.support.preprocess import load_image

        load_image(a.image)  # a bad image fails before loading weights
    model = MobileO.from_pretrained(a.model, quantize=a.quantize, dtype=dtype_of(a.dtype), revision=a.revision,
                                    low_memory=a.low_memory)
    repl = ChatREPL(model, a.image, output_dir=a.output_dir, system_prompt=a.system_prompt, seed=a.seed,
                    scheduler=a.scheduler,
                    max_tokens=a.max_tokens, temp=a.temp, top_p=a.top_p, top_k=a.top_k, min_p=a.min_p)
    repl.run()


def main(argv: list[str] | None = None) -> None:
    cc.run_command(parser(), lambda p, a, argv: _run(a), argv)


if __name__ == "__main__":
    main()
