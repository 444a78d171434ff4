"""``mobileo-server``'s flags and start-up: load the model on the worker thread, bind the port,
serve until Ctrl-C (or SIGTERM), then release the model on its own thread."""

from __future__ import annotations

import argparse
import socket
import sys

from weights.core.errors import MobileOError

from mlx_model import cli_common as cc
from mlx_model.support.platform import dtype_of

__all__ = ["main", "parser"]

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mobileo-server",
                                description="Serve Mobile-O (chat, image generation, editing) with an "
                                            "OpenAI-compatible API, with MLX.")
    cc.add_model_options(p)
    g = p.add_argument_group("server")
    g.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; there is no authentication)")
    g.add_argument("--port", type=int, default=8080, help="port (default 8080; 0 = any free port)")
    g.add_argument("--max-queue", type=int, default=8,
                   help="requests waiting at most; more get 503 with Retry-After (default 8)")
    g.add_argument("--max-body-mb", type=int, default=32, help="largest request body in MB (default 32)")
    g.add_argument("--max-tokens-limit", type=int, default=4096,
                   help="largest max_tokens a chat request may ask for (default 4096)")
    g.add_argument("--log-level", default="warning", choices=("critical", "error", "warning", "info", "debug"),
                   help="uvicorn's log level (default warning)")
    return p


def _check(a) -> None:
    if not 0 <= a.port <= 65535:
        raise MobileOError(f"--port {a.port} is out of range.", fix="pass a port from 1 to 65535 (0: any free port).")
    for name, value in (("--max-queue", a.max_queue), ("--max-body-mb", a.max_body_mb),
                        ("--max-tokens-limit", a.max_tokens_limit)):
        if value < 1:
            raise MobileOError(f"{name} {value} is out of range.", fix=f"pass {name} 1 or more.")


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise MobileOError(f"cannot listen on {host}:{port} ({e.strerror}).",
                           fix="pick another --port (0 = any free port), or stop what uses it.") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def _run(a) -> None:
    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError as e:
        raise MobileOError(f"the server needs FastAPI and uvicorn ({e.name} is not installed).",
                           fix="pip install 'mobileo-deploy[server]'") from None
    from mlx_model.pipelines.conversation import PromptCache
    from mlx_model.pipelines.mobileo import MobileO
    from mlx_model.server.app import Limits, create_app
    from mlx_model.server.worker import Worker

    _check(a)
    sock = _bind(a.host, a.port)  # a taken port fails before the model loads
    if a.host not in LOOPBACK:
        print(f"warning: listening on {a.host}: anyone who can reach it can use the model (no authentication).",
              file=sys.stderr)
    dtype = dtype_of(a.dtype)

    def load():
        model = MobileO.from_pretrained(a.model, quantize=a.quantize, dtype=dtype, revision=a.revision,
                                        low_memory=a.low_memory)
        return model, PromptCache()

    worker = Worker(load, max_queue=a.max_queue)
    worker.start()  # MobileOError (no weights, ...) surfaces here as one line
    app = create_app(worker, a.model, Limits(max_body_bytes=a.max_body_mb << 20, max_tokens=a.max_tokens_limit))
    host, port = sock.getsockname()[:2]
    print(f"mobileo-server: serving {a.model} on http://{host}:{port}/v1 (Ctrl-C stops)", flush=True)
    try:
        uvicorn.Server(uvicorn.Config(app, log_level=a.log_level, timeout_graceful_shutdown=5)).run(sockets=[sock])
    finally:
        worker.stop()


def main(argv: list[str] | None = None) -> None:
    cc.run_command(parser(), lambda p, a, argv: _run(a), argv)
