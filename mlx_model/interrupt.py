"""Ctrl-C while a command is still importing (MLX, numpy, ... before ``run_cli`` takes over):
one word and exit 130, never a traceback.  Standard library only, so a command imports it
first; :func:`ready` hands Ctrl-C back to Python once the command's own handler is in place."""

from __future__ import annotations

import os
import signal
import sys


def quiet_while_importing(module_name: str) -> None:
    """From a command module's first lines: when it is the program (``python -m`` or a
    ``mobileo-*`` console script), Ctrl-C prints "interrupted" and exits 130 until :func:`ready`."""
    if module_name == "__main__" or os.path.basename(sys.argv[0]).startswith("mobileo-"):
        signal.signal(signal.SIGINT, lambda *_: (print("interrupted", file=sys.stderr, flush=True), os._exit(130)))


def ready() -> None:
    """Ctrl-C raises KeyboardInterrupt again (``run_cli`` turns it into "interrupted", exit 130)."""
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        signal.signal(signal.SIGINT, signal.default_int_handler)
