"""``mobileo-server``'s flags and start-up: load the model on the worker thread, bind the port,
serve until Ctrl-C (or SIGTERM), then release the model on its own thread.

Shutdown (SIGINT or SIGTERM): stop accepting, answer every waiting and running request with an
OpenAI-shaped 503, let uvicorn close the connections, release the model on the worker thread
and exit 0 (uvicorn would re-raise the signal: SIGTERM's default action would end the process
before the model is released).  A second Ctrl-C forces the exit."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import sys
from pathlib import Path

from weights.core.errors import MobileOError

from mlx_model import cli_common as cc
from mlx_model.support.platform import dtype_of

__all__ = ["main", "parser"]

LOOPBACK = ("127.0.0.1", "localhost", "::1")
API_KEY_ENV = "MOBILEO_API_KEY"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mobileo-server",
                                description="Serve Mobile-O (chat, image generation, editing) with an "
                                            "OpenAI-compatible API, with MLX.")
    cc.add_model_options(p)
    g = p.add_argument_group("server")
    g.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only)")
    g.add_argument("--port", type=int, default=8080, help="port (default 8080; 0 = any free port)")
    g.add_argument("--max-queue", type=int, default=8,
                   help="requests waiting at most; more get 503 with Retry-After (default 8)")
    g.add_argument("--max-body-mb", type=int, default=32, help="largest request body in MB (default 32)")
    g.add_argument("--max-tokens-limit", type=int, default=4096,
                   help="largest max_tokens a chat request may ask for (default 4096)")
    g.add_argument("--max-image-megapixels", type=float, default=50,
                   help="largest uploaded image (width x height, read from its header before decoding; default 50)")
    s = p.add_argument_group("security")
    s.add_argument("--allowed-hosts", nargs="+", default=[], metavar="NAME",
                   help="Host header names accepted besides the loopback names and --host ('*': any; "
                        "e.g. the machine's name on your network)")
    s.add_argument("--cors-origins", nargs="+", default=[], metavar="ORIGIN",
                   help="web origins allowed to call the API from a browser (default: none but this "
                        "server's own page)")
    s.add_argument("--allow-local-images", type=Path, default=None, metavar="DIR",
                   help="let image_url name files inside DIR (default: images only inline, as data URLs)")
    s.add_argument("--api-key", default=os.environ.get(API_KEY_ENV),
                   help=f"require 'Authorization: Bearer KEY' on /v1/ (default: ${API_KEY_ENV}, else no key)")
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
    if not 0 < a.max_image_megapixels <= 1000:
        raise MobileOError(f"--max-image-megapixels {a.max_image_megapixels} is out of range.",
                           fix="pass a number above 0 and at most 1000.")
    if a.allow_local_images is not None and not a.allow_local_images.is_dir():
        raise MobileOError(f"--allow-local-images {a.allow_local_images} is not a folder.",
                           fix="pass an existing folder whose images requests may name.")
    if a.api_key is not None and not a.api_key.strip():
        raise MobileOError("the API key is empty.", fix=f"pass --api-key KEY (or set {API_KEY_ENV}) with a non-empty key.")


def _security(a):
    from mlx_model.server.app import Security

    hosts = tuple(dict.fromkeys([*LOOPBACK, a.host.strip("[]").lower(), *(h.lower() for h in a.allowed_hosts)]))
    return Security(allowed_hosts=hosts, cors_origins=tuple(a.cors_origins), local_images=a.allow_local_images,
                    api_key=a.api_key)


def _uvicorn_server(config, on_signal):
    """uvicorn's server, which tells ``on_signal`` first and does not re-raise the signal after
    its graceful shutdown (we exit ourselves, after the model is released)."""
    import uvicorn

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame):
            if not self.should_exit:
                on_signal()
            super().handle_exit(sig, frame)

        @contextlib.contextmanager
        def capture_signals(self):
            handled = (signal.SIGINT, signal.SIGTERM)
            original = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
            try:
                yield
            finally:
                for sig, handler in original.items():
                    signal.signal(sig, handler)

    return Server(config)


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
    from mlx_model.server.app import Limits, Server, create_app
    from mlx_model.server.worker import Worker

    _check(a)
    sock = _bind(a.host, a.port)  # a taken port fails before the model loads
    if a.host not in LOOPBACK and a.api_key is None:
        print(f"warning: listening on {a.host}: anyone who can reach it can use the model (no --api-key).",
              file=sys.stderr)
    dtype = dtype_of(a.dtype)

    def load():
        model = MobileO.from_pretrained(a.model, quantize=a.quantize, dtype=dtype, revision=a.revision,
                                        low_memory=a.low_memory)
        return model, PromptCache()

    worker = Worker(load, max_queue=a.max_queue)
    worker.start()  # MobileOError (no weights, ...) surfaces here as one line
    limits = Limits(max_body_bytes=a.max_body_mb << 20, max_tokens=a.max_tokens_limit,
                    max_image_pixels=int(a.max_image_megapixels * 1e6))
    security = _security(a)
    server = Server(worker, a.model, limits, security)
    app = create_app(worker, a.model, limits, security, server=server)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    print(f"mobileo-server: serving {a.model} on http://{shown}:{port}/v1, its page on http://{shown}:{port}/ "
          "(Ctrl-C stops)", flush=True)
    config = uvicorn.Config(app, log_level=a.log_level, timeout_graceful_shutdown=5)
    try:
        _uvicorn_server(config, server.shutdown).run(sockets=[sock])
    finally:
        server.shutdown()
        worker.stop()
        server.decoder.shutdown(wait=False, cancel_futures=True)


def main(argv: list[str] | None = None) -> None:
    cc.run_command(parser(), lambda p, a, argv: _run(a), argv)
