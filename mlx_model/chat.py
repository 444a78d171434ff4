"""``mobileo-chat [IMAGE]`` (or ``python -m mlx_model.chat``): a multi-turn chat with Mobile-O
about an image, with MLX only -- as ``mlx_lm.chat``, plus image commands.

The image's prefix (vision tower, projector and its prefill) is computed once and kept in the
KV cache across turns (:class:`mlx_model.pipelines.conversation.Conversation`); each turn prefills only
what is new.  Commands:

    /image PATH        talk about another image (a new conversation)
    /generate PROMPT   make an image with the same loaded model (saved in --output-dir)
    /reset             forget the conversation, keep the image
    /help              the commands
    /quit              leave (so does Ctrl-D)

As ``mlx_lm.chat``: each answer closes with a statistics line (``[N tokens, X tokens/s; prompt
Y tokens/s; peak Z GB]``).  Ctrl-C during an answer stops that answer and keeps the session:
the stopped answer stays in the history as far as it was shown (an answer stopped before its
first word is dropped with its question), and the KV cache stays usable, so the next question
continues the conversation.  Ctrl-C at the prompt clears the line; a second Ctrl-C in a row
leaves.  On a terminal, lines are edited with readline and the history is kept in memory; it
is read from and written to a file only with ``--history-file`` (or ``MOBILEO_CHAT_HISTORY``).

Decoding flags and defaults are ``mobileo-understand``'s (greedy unless ``--temp``), defined
once by :func:`mlx_model.understand.add_decoding_options`.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from weights.core.samplers import DEFAULT_SAMPLER, SAMPLERS, sampler_help
from weights.core.errors import MobileOError

from mlx_model import cli_common as cc
from mlx_model.support.image_files import check_writable_folder
from mlx_model.support.image_settings import ImageSettings, check_seed
from mlx_model.support.platform import dtype_of
from mlx_model.understand import add_decoding_options, decoding_options

__all__ = ["ChatREPL", "main", "stats_line"]

HISTORY_ENV = "MOBILEO_CHAT_HISTORY"  # a history file, as --history-file

HELP = """commands:
  /image PATH        talk about another image (starts a new conversation)
  /generate PROMPT   make an image (saved in the output folder)
  /reset             forget the conversation, keep the image
  /help              this list
  /quit              leave (Ctrl-D too)
Ctrl-C stops an answer (the chat goes on); at the prompt it clears the line, twice leaves."""


def stats_line(r, stopped: bool = False) -> str:
    """mlx-lm chat's closing line, from the last :class:`~mlx_model.pipelines.understanding.Response`."""
    head = "[stopped; " if stopped else "["
    if r is None:
        return head + "0 tokens]"
    return (f"{head}{r.generation_tokens} tokens, {r.generation_tps:.1f} tokens/s; "
            f"prompt {r.prompt_tps:.1f} tokens/s; peak {r.peak_memory:.2f} GB]")


class ChatREPL:
    """The loop, apart from the terminal: :meth:`handle` takes one input line."""

    def __init__(self, model, image=None, *, output_dir: str | Path = ".", system_prompt: str | None = None,
                 seed: int | None = None, scheduler: str = DEFAULT_SAMPLER, out=None,
                 history_file: str | Path | None = None, **decoding):
        from mlx_model.pipelines.conversation import Conversation

        self.model = model  # a MobileO
        self.out = out or sys.stdout
        self.output_dir = Path(output_dir).expanduser()
        self.seed = seed
        self.scheduler = scheduler  # /generate's sampler
        self.decoding = decoding
        self.history_file = None if history_file is None else Path(history_file).expanduser()
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
        except KeyboardInterrupt:  # /generate or /image stopped; an answer handles its own
            self.say("\n(stopped)")
        return True

    def ask(self, question: str) -> str:
        """Stream the answer, then the statistics line.  Ctrl-C stops the answer, not the chat."""
        before, text, last = list(self.chat.turns), "", None
        stream = self.chat.ask(question, seed=self.seed, **self.decoding)
        try:
            for r in stream:
                text, last = text + r.text, r  # before printing: what was shown is kept
                self.say(r.text, end="")
        except KeyboardInterrupt:
            stream.close()  # the KV cache records what it holds (stream_chat's finally)
            self._keep_stopped(before, question, text)
            self.say()
            self.say(stats_line(last, stopped=True))
            return text
        self.say()
        self.say(stats_line(last))
        return text

    def _keep_stopped(self, before: list, question: str, text: str) -> None:
        """The history after a stopped answer: the answer as far as it was shown, or neither it
        nor its question when nothing was shown.  A KV cache out of step with its keys (a
        second interrupt inside the bookkeeping) is dropped; the next turn recomputes it."""
        text = text.strip()
        self.chat.turns = before + [("user", question), ("assistant", text)] if text else before
        pc = self.chat.cache
        if pc.cache and pc.cache[0].offset != len(pc.keys):
            pc.clear()

    def generate(self, prompt: str) -> list[Path]:
        if not prompt:
            raise MobileOError("/generate needs a prompt.", fix="/generate a red cup")
        settings = ImageSettings(prompt, seed=self.seed, scheduler=self.scheduler)
        return cc.run_and_save(self.model.generation, [settings], meta={"model": self.model.name}, latents=None,
                               output=self.output_dir / "image.png", metadata=False, verbose=False, progress=False,
                               log=self.say)

    def run(self, stdin=None) -> None:
        """Read lines until /quit, Ctrl-D, two Ctrl-C in a row or the end of input; on a terminal
        with the prompt and readline's line editing (imported only then)."""
        stdin = stdin or sys.stdin
        tty = stdin.isatty()
        readline = _line_editing(self.history_file) if tty else None
        self.say(f"Mobile-O chat ({self.model.name}). Type a question, or /help.")
        try:
            self._loop(stdin, tty)
        finally:
            if readline is not None and self.history_file is not None:
                _save_history(readline, self.history_file)

    def _loop(self, stdin, tty: bool) -> None:
        interrupted = False
        while True:
            try:
                line = input("> ") if tty else stdin.readline()
            except EOFError:
                self.say()
                return
            except KeyboardInterrupt:
                if interrupted or not tty:
                    self.say()
                    return
                interrupted = True
                self.say("\n(line cleared; Ctrl-C again or Ctrl-D to leave)")
                continue
            interrupted = False
            if not tty and line == "":
                return
            if not self.handle(line):
                return


def _line_editing(history_file: Path | None):
    """Turn on readline for ``input()`` (line editing, history in memory); None where the
    platform has none.  A history file is read only when one is asked for."""
    try:
        import readline
    except ImportError:
        return None
    if history_file is not None and history_file.is_file():
        try:
            readline.read_history_file(str(history_file))
        except OSError:
            pass  # an unreadable history is no reason not to chat
    return readline


def _save_history(readline, path: Path, length: int = 1000) -> None:
    """Write the history file atomically (a temporary file, then a rename)."""
    readline.set_history_length(length)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        readline.write_history_file(str(tmp))
        os.replace(tmp, path)
    except OSError as e:
        print(f"warning: history not saved to {path}: {e}", file=sys.stderr)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mobileo-chat", description="Chat with Mobile-O about an image, with MLX.")
    p.add_argument("image", nargs="?", default=None, help="image to talk about (optional; /image changes it)")
    cc.add_model_options(p)
    g = add_decoding_options(p, "decoding (as mobileo-understand)")
    g.add_argument("--seed", type=int, default=None, help="random seed for sampling and /generate")
    p.add_argument("--scheduler", choices=tuple(SAMPLERS), default=DEFAULT_SAMPLER, help="/generate's sampler: " + sampler_help())
    p.add_argument("--output-dir", default=".", help="where /generate saves its images (default: here)")
    p.add_argument("--history-file", default=os.environ.get(HISTORY_ENV) or None, metavar="PATH",
                   help=f"read and save the line history there (default: ${HISTORY_ENV}, else kept in memory only)")
    return p


def _run(a) -> None:
    from mlx_model.pipelines.mobileo import MobileO
    from mlx_model.pipelines.understanding import check_options

    decoding = decoding_options(a)
    check_options(**decoding)
    if a.seed is not None:
        check_seed(a.seed)
    check_writable_folder(Path(a.output_dir).expanduser(), f"--output-dir {a.output_dir}")
    if a.history_file is not None:
        check_writable_folder(Path(a.history_file).expanduser().parent, f"--history-file {a.history_file}")
    if a.image is not None:
        from mlx_model.support.preprocess import load_image

        load_image(a.image)  # a bad image fails before loading weights
    model = MobileO.from_pretrained(a.model, quantize=a.quantize, dtype=dtype_of(a.dtype), revision=a.revision,
                                    low_memory=a.low_memory)
    repl = ChatREPL(model, a.image, output_dir=a.output_dir, system_prompt=a.system_prompt, seed=a.seed,
                    scheduler=a.scheduler, history_file=a.history_file, **decoding)
    repl.run()


def main(argv: list[str] | None = None) -> None:
    cc.run_command(parser(), lambda p, a, argv: _run(a), argv)


if __name__ == "__main__":
    main()
