"""The HTTP side of ``mobileo-server`` (FastAPI on uvicorn): OpenAI's routes over one
:class:`~mlx_model.pipelines.mobileo.MobileO` held by one :class:`~mlx_model.server.worker.Worker`.

    POST /v1/chat/completions   text and image_url parts, streaming (SSE) or not
    POST /v1/images/generations prompt, n, size, seed -> b64_json PNGs
    POST /v1/images/edits       multipart: image + prompt -> b64_json PNGs
    GET  /v1/models, GET /v1/models/{id}, GET /health, GET / (the web page, static/index.html)

Every error is OpenAI's error body with a 4xx status (a 503 with ``Retry-After`` when the
queue is full, a 503 to every waiting and running request when the server shuts down); a
client that goes away cancels its work (waiting or running).

Safe defaults (:class:`Security`, :class:`Guard`): the Host header must name this machine (a
DNS-rebinding page cannot reach it), POST bodies must be JSON (multipart for edits: a plain
web form cannot start work), no CORS unless asked, no local image paths unless a folder is
allowed, and an optional bearer key.  Uploaded images are checked from their header (pixels)
off the event loop and queued encoded; the worker decodes one at a time.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
import sys
import time
import traceback
from urllib.parse import urlsplit
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.sse import EventSourceResponse, format_sse_event
from starlette.exceptions import HTTPException

from weights.core.errors import MobileOError
from weights.core.memory import peak_rss_bytes, rss_bytes

from mlx_model.server import openai_api as api
from mlx_model.server.worker import Job, QueueFull, Worker

__all__ = ["Limits", "Security", "create_app"]

POLL_SECONDS = 0.25  # how often a waiting request looks for its client


LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")
PAGE = Path(__file__).with_name("static") / "index.html"
PAGE_POLICY = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
               "img-src 'self' data: blob:; connect-src 'self'; frame-ancestors 'none'; form-action 'none'")


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = api.MAX_BODY_BYTES
    max_tokens: int = 4096  # per answer
    max_image_pixels: int = 50_000_000  # an uploaded image's width x height, read from its header


@dataclass(frozen=True)
class Security:
    allowed_hosts: tuple[str, ...] = LOOPBACK_NAMES  # Host header names accepted ("*": any)
    cors_origins: tuple[str, ...] = ()  # browser origins allowed to call the API (none: same origin only)
    local_images: Path | None = None  # image_url may name files inside this folder (None: no paths)
    api_key: str | None = None  # required as "Authorization: Bearer <key>" on /v1/ (None: no key)


def host_name(host: str) -> str:
    """A Host header without its port: ``[::1]:8080`` -> ``::1``, ``Localhost:80`` -> ``localhost``."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


class Guard:
    """ASGI middleware, before any route: Host allow-list, bearer key, POST content types."""

    def __init__(self, app, security: Security, counted):
        self.app, self.security, self.counted = app, security, counted

    def problem(self, scope) -> api.APIError | None:
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        sec, path, method = self.security, scope["path"], scope["method"]
        if "*" not in sec.allowed_hosts and host_name(headers.get("host", "")) not in sec.allowed_hosts:
            return api.APIError(403, f"the Host header {headers.get('host', '')!r} is not one of this server's "
                                "names; start it with --allowed-hosts NAME to accept it.", code="host_not_allowed")
        origin = headers.get("origin")
        if method == "POST" and origin is not None and origin not in sec.cors_origins \
                and host_name(urlsplit(origin).netloc) != host_name(headers.get("host", "")):
            # a form post from another site needs no preflight (multipart is CORS-safelisted): refuse it,
            # as Ollama checks Origin; the page at / is same-origin, API clients send no Origin
            return api.APIError(403, f"requests from the web page at {origin!r} are not allowed; start the server "
                                "with --cors-origins ORIGIN to allow it.", code="origin_not_allowed")
        if sec.api_key is not None and path.startswith("/v1/") and method != "OPTIONS":
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(given, f"Bearer {sec.api_key}".encode()):
                return api.APIError(401, "a valid API key is required: send 'Authorization: Bearer <key>' "
                                    "(the key given by --api-key or MOBILEO_API_KEY).", code="invalid_api_key",
                                    type="authentication_error")
        if method == "POST":
            kind = headers.get("content-type", "").split(";")[0].strip().lower()
            want = "multipart/form-data" if path.rstrip("/").endswith("/images/edits") else "application/json"
            if kind != want:
                return api.APIError(415, f"the body must be {want} (got {kind or 'no Content-Type'}).",
                                    code="unsupported_media_type")
        return None

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            e = self.problem(scope)
            if e is not None:
                self.counted(e)
                return await JSONResponse(api.error_body(e), status_code=e.status)(scope, receive, send)
        return await self.app(scope, receive, send)


class BodyLimit:  # FastAPI's max_body_size answers a declared length with plain text, not OpenAI's shape
    """ASGI middleware: a body over ``limit`` bytes is a 413, whether or not it declares its length."""

    def __init__(self, app, limit: int):
        self.app = app
        self.limit = limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        too_large = api.APIError(413, f"the request body is over this server's limit of {self.limit >> 20} MB "
                                 "(mobileo-server --max-body-mb).", code="request_too_large")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await JSONResponse(api.error_body(too_large), status_code=413)(scope, receive, send)
        seen = 0

        async def limited():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise too_large
            return message

        return await self.app(scope, limited, send)


def rss() -> dict:
    """This process's resident memory now and at its peak, in bytes (None where unknown)."""
    return {"rss_bytes": rss_bytes(), "peak_rss_bytes": peak_rss_bytes()}


# ------------------------------------------------------------------ the work, on the worker thread
def decoded(raw: bytes | None, name: str):
    """An upload's encoded bytes -> upright RGB (on the worker, one image at a time)."""
    from mlx_model.support.preprocess import decode_image, load_image

    return None if raw is None else load_image(decode_image(raw, name))


def chat_job(req: api.ChatRequest, stream: bool):
    """Answer ``req``; ``stream``: emit ("delta", (text, logprob entries or None)) pieces.
    Nothing is emitted before the first token, so a bad request (too long, bad option) still
    gets a 4xx."""

    def run(state, job: Job) -> dict:
        model, cache = state
        und = model.understanding
        pieces = und.stream_chat(req.turns, image=decoded(req.image, "the image in the message"),
                                 system_prompt=req.system_prompt, prompt_cache=cache, logprobs=req.logprobs,
                                 **req.options)
        stopper, text, r, finish = api.StopMatcher(req.stop), "", None, "length"
        lps, kept = (api.LogprobsByText(), []) if req.logprobs else (None, None)
        try:
            for i, r in enumerate(pieces):
                job.check()
                if i == 0:
                    job.emit("start")
                if lps is not None and r.token is not None:
                    lps.add(logprob_entry(und.tokenizer, r, req.top_logprobs), r.text)
                out, stopped = stopper.feed(r.text)
                done = r.finish_reason is not None or stopped
                if done:
                    out += "" if stopped else stopper.flush()
                    finish = "stop" if stopped else r.finish_reason
                text += out
                ready = lps.take(len(text), everything=done and not stopped) if lps is not None else None
                if stream and (out or ready):
                    job.emit("delta", (out, ready))
                elif ready:
                    kept += ready
                if done:
                    break
        finally:
            pieces.close()
        return {"text": text, "finish": finish, "prompt_tokens": r.prompt_tokens if r else 0,
                "completion_tokens": r.generation_tokens if r else 0, "logprobs": kept}

    return run


def logprob_entry(tokenizer, r, top: int) -> dict:
    """``r.token``'s entry of ``logprobs.content`` from the log-probabilities it was sampled
    from, with the ``top`` most likely tokens (most likely first; ties by token id).  Read with
    numpy: an MLX op here would wait for the next token, already queued."""
    import numpy as np

    lp = np.asarray(r.logprobs)
    top = min(top, lp.size)
    best = np.argpartition(-lp, top - 1)[:top] if top else np.zeros(0, np.int64)
    best = sorted(best.tolist(), key=lambda i: (-lp[i], i))
    return api.token_logprob(tokenizer.token_bytes(r.token), float(lp[r.token]),
                             [(tokenizer.token_bytes(i), float(lp[i])) for i in best])


def image_job(req: api.ImageRequest, model_id: str):
    """Make (or edit) ``req.settings.n_images`` images; (PNG bytes with the settings inside, as
    the CLIs write them, and those settings) per image.  The step reached is ``job.progress``."""

    def run(state, job: Job) -> list[tuple[bytes, dict]]:
        from mlx_model.support.image_files import encode_image, run_metadata

        def progress(step, total):
            job.progress = {"step": step, "total": total}
            job.check()

        pipe = state[0].generation
        edit = req.image is not None
        image = decoded(req.image, "the uploaded image")
        out = pipe.generate(req.settings, image=pipe.encoder.pixels(image) if edit else None, progress=progress)
        meta = {"model": model_id, **run_metadata(quantize=pipe.quantize, dtype=pipe.dtype, source=pipe.source)}
        return [(encode_image(img, "PNG", {**meta, **out.settings.metadata(i, edit)}), out.settings.metadata(i, edit))
                for i, img in enumerate(out.images)]

    return run


# ------------------------------------------------------------------ the app
@dataclass
class Server:
    """The routes over one worker: each route is a method; :func:`create_app` registers them."""

    worker: Worker
    model_id: str
    limits: Limits = Limits()
    security: Security = Security()
    started: int = field(default_factory=lambda: int(time.time()))
    client_errors: int = 0  # answers with a 4xx status (the jobs' "invalid" among them), apart from failures
    closing: bool = False  # shutting down: every request gets a 503
    decoder: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(2, "mobileo-upload"))

    def counted(self, e: api.APIError) -> None:
        if 400 <= e.status < 500:
            self.client_errors += 1

    def shutdown(self) -> None:
        """Stop taking work; every waiting and running job is answered with a 503 (called from
        the signal handler, on the event loop's thread)."""
        self.closing = True
        for job in self.worker.cancel_all():
            job.emit("shutdown")

    async def json_body(self, request: Request) -> dict:
        try:
            body = json.loads(await request.body())
        except RecursionError:
            raise api.APIError(400, "the body is nested too deeply to read.", code="invalid_json") from None
        except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError, an integer of over 4300 digits
            why = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
            raise api.APIError(400, f"the body is not valid JSON ({why}).", code="invalid_json") from None
        if not isinstance(body, dict):
            raise api.APIError(400, "the body must be a JSON object.", code="invalid_json")
        api.check_unicode(body)
        return body

    def submit(self, fn, kind: str) -> Job:
        if self.closing:
            raise shutting_down()
        job = Job(fn, asyncio.get_running_loop(), kind)
        try:
            self.worker.submit(job)
        except QueueFull as e:
            raise api.APIError(503, f"{e}.", type="server_busy", code="queue_full",
                               headers={"Retry-After": str(e.retry_after)}) from None
        return job

    async def next_event(self, job: Job, request: Request):
        """The job's next event; the job is cancelled if its client goes away meanwhile."""
        while True:
            try:
                kind, value = await asyncio.wait_for(job.events.get(), POLL_SECONDS)
            except asyncio.TimeoutError:
                if await request.is_disconnected():
                    job.cancel()
                    raise api.APIError(499, "the client closed the request.", code="client_closed") from None
                continue
            except asyncio.CancelledError:  # the request itself was cancelled (server shutdown)
                job.cancel()
                raise
            if kind == "shutdown":
                raise shutting_down()
            return kind, value

    def failure(self, e: BaseException) -> api.APIError:
        if isinstance(e, api.APIError):
            return e
        if isinstance(e, MobileOError):
            return api.from_mobileo_error(e)
        print(getattr(e, "worker_traceback", "") or "".join(traceback.format_exception(e)), file=sys.stderr, end="")
        return api.APIError(500, "internal server error (see the server's log).")

    async def outcome(self, job: Job, request: Request):
        """Wait for the job's result (a streaming job's "start" counts as accepted)."""
        kind, value = await self.next_event(job, request)
        if kind == "error":
            raise self.failure(value)
        return kind, value

    async def upload(self, raw: bytes, param: str) -> bytes:
        """``raw`` checked from its header (format, pixels) off the event loop; still encoded."""
        limit = self.limits.max_image_pixels
        return await asyncio.get_running_loop().run_in_executor(self.decoder, api.check_image_bytes, raw, param,
                                                                limit)

    async def image_of(self, ref: tuple[str, str] | None) -> bytes | None:
        if ref is None:
            return None
        url, param = ref
        raw = await asyncio.get_running_loop().run_in_executor(self.decoder, api.image_url_bytes, url, param,
                                                               self.security.local_images)
        return await self.upload(raw, param)

    # -------------------------------------------------------------- routes
    async def page(self):
        return HTMLResponse(PAGE.read_text(encoding="utf-8"),
                            headers={"Content-Security-Policy": PAGE_POLICY, "X-Content-Type-Options": "nosniff",
                                     "Referrer-Policy": "no-referrer", "Cache-Control": "no-cache"})

    async def health(self):
        import mlx.core as mx

        current = self.worker.current
        return {"status": "closing" if self.closing else "ok", "model": self.model_id,
                "uptime_seconds": int(time.time()) - self.started,
                "queue": {"waiting": self.worker.waiting(), "limit": self.worker.max_queue,
                          "running": current is not None,
                          "progress": getattr(current, "progress", None) if current is not None else None},
                "jobs": dict(self.worker.stats), "client_errors": self.client_errors,
                "memory": {**rss(), "mlx_active_bytes": mx.get_active_memory()}}

    def model_card(self) -> dict:
        return {"id": self.model_id, "object": "model", "created": self.started, "owned_by": "mobileo-deploy"}

    async def models(self):
        return {"object": "list", "data": [self.model_card()]}

    async def model(self, model_id: str):
        api.check_model({"model": model_id}, self.model_id)
        return self.model_card()

    async def chat(self, request: Request):
        req = api.parse_chat(await self.json_body(request), self.model_id, self.limits.max_tokens)
        req.image = await self.image_of(req.image_ref)
        job = self.submit(chat_job(req, req.stream), "chat")
        cid = api.completion_id()
        kind, value = await self.outcome(job, request)
        if not req.stream:
            while kind == "start":
                kind, value = await self.outcome(job, request)
            return api.chat_completion(cid, self.model_id, value["text"], value["finish"], value["prompt_tokens"],
                                       value["completion_tokens"], value["logprobs"])
        return EventSourceResponse(self.chat_events(req, job, cid, (kind, value), request),
                                   headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def chat_events(self, req: api.ChatRequest, job: Job, cid: str, first, request: Request):
        finished = False
        try:
            yield sse(api.chat_chunk(cid, self.model_id, {"role": "assistant", "content": ""}))
            kind, value = first
            while kind != "result":
                if kind == "delta":
                    yield sse(api.chat_chunk(cid, self.model_id, {"content": value[0]}, logprobs=value[1]))
                elif kind == "error":
                    yield sse(api.error_body(self.failure(value)))
                    finished = True
                    return
                try:
                    kind, value = await self.next_event(job, request)
                except api.APIError as e:  # shutdown: the stream ends with OpenAI's error body
                    finished = e.status != 499
                    yield sse(api.error_body(e))
                    return
            finished = True
            yield sse(api.chat_chunk(cid, self.model_id, {}, value["finish"]))
            if req.include_usage:
                yield sse(api.chat_chunk(cid, self.model_id, None, usage_=api.usage(value["prompt_tokens"],
                                                                               value["completion_tokens"])))
            yield sse("[DONE]")
        finally:
            if not finished:  # the client went away: stop the work
                job.cancel()

    async def images(self, request: Request, req: api.ImageRequest) -> dict:
        job = self.submit(image_job(req, self.model_id), "image")
        _, made = await self.outcome(job, request)
        return {"created": int(time.time()),
                "data": [{"b64_json": base64.b64encode(png).decode("ascii"), "revised_prompt": req.settings.prompt,
                          "seed": meta["seed"]} for png, meta in made],
                "settings": {k: made[0][1][k] for k in ("steps", "guidance", "scheduler", "size")}}

    async def generations(self, request: Request):
        return await self.images(request, api.parse_image_request(await self.json_body(request), self.model_id))

    async def edits(self, request: Request):
        try:
            form = await request.form()
        except api.APIError:
            raise
        except Exception as e:  # a malformed multipart body
            raise api.APIError(400, f"could not read the form ({type(e).__name__}); send multipart/form-data "
                               "with 'image' and 'prompt'.", code="invalid_form") from None
        files = [f for key in ("image", "image[]") for f in form.getlist(key) if not isinstance(f, str)]
        if "mask" in form:
            raise api.APIError(400, "'mask' is not supported: Mobile-O edits the whole image by instruction.",
                               param="mask")
        if len(files) != 1:
            raise api.APIError(400, f"send exactly one 'image' file to edit (got {len(files)}).", param="image")
        fields = {k: v for k, v in form.items() if isinstance(v, str)}
        api.check_unicode(fields)
        req = api.parse_image_request(fields, self.model_id, form=True)
        req.image = await self.upload(await files[0].read(), "image")
        return await self.images(request, req)


def shutting_down() -> api.APIError:
    return api.APIError(503, "the server is shutting down; this request was not finished.", type="server_error",
                        code="server_shutting_down")


def handlers(server: Server):
    async def api_error(request: Request, e: api.APIError):
        server.counted(e)
        return JSONResponse(api.error_body(e), status_code=e.status, headers=e.headers)

    async def http_error(request: Request, e: HTTPException):  # unknown route, wrong method, body too large
        message = {404: f"no route {request.method} {request.url.path}; see GET /v1/models and the README.",
                   405: f"{request.method} is not allowed on {request.url.path}.",
                   413: f"the request body is over this server's limit of {server.limits.max_body_bytes >> 20} MB "
                        "(mobileo-server --max-body-mb)."}.get(e.status_code, str(e.detail))
        err = api.APIError(e.status_code, message, code="request_too_large" if e.status_code == 413 else None)
        server.counted(err)
        return JSONResponse(api.error_body(err), status_code=e.status_code)

    async def internal(request: Request, e: Exception):
        traceback.print_exception(e, file=sys.stderr)
        err = api.APIError(500, "internal server error (see the server's log).")
        return JSONResponse(api.error_body(err), status_code=500)

    return {api.APIError: api_error, HTTPException: http_error, Exception: internal}


def create_app(worker: Worker, model_id: str, limits: Limits = Limits(), security: Security = Security(),
               server: Server | None = None) -> FastAPI:
    server = server or Server(worker, model_id, limits, security)
    app = FastAPI(title="mobileo-server", docs_url=None, redoc_url=None, openapi_url=None,
                  exception_handlers=handlers(server))
    app.add_middleware(BodyLimit, limit=limits.max_body_bytes)
    app.add_middleware(Guard, security=security, counted=server.counted)
    if security.cors_origins:  # added last: outermost, so that preflights are answered before the guard
        from starlette.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(security.cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])
    app.add_api_route("/", server.page, methods=["GET"], include_in_schema=False)
    app.add_api_route("/health", server.health, methods=["GET"])
    app.add_api_route("/v1/models", server.models, methods=["GET"])
    app.add_api_route("/v1/models/{model_id:path}", server.model, methods=["GET"])
    app.add_api_route("/v1/chat/completions", server.chat, methods=["POST"])
    app.add_api_route("/v1/images/generations", server.generations, methods=["POST"])
    app.add_api_route("/v1/images/edits", server.edits, methods=["POST"])
    app.state.server = server
    return app


def sse(obj: dict | str) -> bytes:
    """One server-sent event in the framework's framing (OpenAI's stream ends with ``[DONE]``)."""
    return format_sse_event(data_str=obj if isinstance(obj, str) else json.dumps(obj, ensure_ascii=False))
