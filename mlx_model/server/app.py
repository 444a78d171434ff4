"""The HTTP side of ``mobileo-server`` (FastAPI on uvicorn): OpenAI's routes over one
:class:`~mlx_model.pipelines.mobileo.MobileO` held by one :class:`~mlx_model.server.worker.Worker`.

    POST /v1/chat/completions   text and image_url parts, streaming (SSE) or not
    POST /v1/images/generations prompt, n, size, seed -> b64_json PNGs
    POST /v1/images/edits       multipart: image + prompt -> b64_json PNGs
    GET  /v1/models, GET /health

Every error is OpenAI's error body with a 4xx status (a 503 with ``Retry-After`` when the
queue is full); a client that goes away cancels its work (waiting or running).
"""

from __future__ import annotations

import asyncio
import base64
import json
import sys
import time
import traceback
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException

from weights.core.errors import MobileOError
from weights.core.memory import peak_rss_bytes, rss_bytes

from mlx_model.server import openai_api as api
from mlx_model.server.worker import Job, QueueFull, Worker

__all__ = ["Limits", "create_app"]

POLL_SECONDS = 0.25  # how often a waiting request looks for its client


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 32 << 20
    max_tokens: int = 4096  # per answer


class BodyLimit:
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
def chat_job(req: api.ChatRequest, stream: bool):
    """Answer ``req``; ``stream``: emit ("delta", text) pieces.  Nothing is emitted before the
    first token, so a bad request (too long, bad option) still gets a 4xx."""

    def run(state, job: Job) -> dict:
        model, cache = state
        pieces = model.understanding.stream_chat(req.turns, image=req.image, system_prompt=req.system_prompt,
                                                 prompt_cache=cache, **req.options)
        stopper, text, r, finish = api.StopMatcher(req.stop), "", None, "length"
        try:
            for i, r in enumerate(pieces):
                job.check()
                if i == 0:
                    job.emit("start")
                out, stopped = stopper.feed(r.text)
                if r.finish_reason is not None or stopped:
                    out += "" if stopped else stopper.flush()
                    finish = "stop" if stopped else r.finish_reason
                if out:
                    text += out
                    if stream:
                        job.emit("delta", out)
                if r.finish_reason is not None or stopped:
                    break
        finally:
            pieces.close()
        return {"text": text, "finish": finish, "prompt_tokens": r.prompt_tokens if r else 0,
                "completion_tokens": r.generation_tokens if r else 0}

    return run


def image_job(req: api.ImageRequest, model_id: str):
    """Make (or edit) ``req.settings.n_images`` images; PNG bytes with the settings inside, as the
    CLIs write them."""

    def run(state, job: Job) -> list[bytes]:
        from mlx_model.support.image_files import encode_image, run_metadata

        pipe = state[0].generation
        edit = req.image is not None
        out = pipe.generate(req.settings, image=pipe.encoder.pixels(req.image) if edit else None,
                            progress=lambda step, total: job.check())
        meta = {"model": model_id, **run_metadata(quantize=pipe.quantize, dtype=pipe.dtype, source=pipe.source)}
        return [encode_image(img, "PNG", {**meta, **out.settings.metadata(i, edit)}) for i, img in enumerate(out.images)]

    return run


# ------------------------------------------------------------------ the app
class Server:
    """The routes over one worker: each route is a method; :func:`create_app` registers them."""

    def __init__(self, worker: Worker, model_id: str, limits: Limits):
        self.worker, self.model_id, self.limits = worker, model_id, limits
        self.started = int(time.time())

    async def json_body(self, request: Request) -> dict:
        try:
            body = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise api.APIError(400, f"the body is not valid JSON ({e}).", code="invalid_json") from None
        if not isinstance(body, dict):
            raise api.APIError(400, "the body must be a JSON object.", code="invalid_json")
        return body

    def submit(self, fn, request: Request) -> Job:
        job = Job(fn, asyncio.get_running_loop())
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
                return await asyncio.wait_for(job.events.get(), POLL_SECONDS)
            except asyncio.TimeoutError:
                if await request.is_disconnected():
                    job.cancel()
                    raise api.APIError(499, "the client closed the request.", code="client_closed") from None
            except asyncio.CancelledError:  # the request itself was cancelled (server shutdown)
                job.cancel()
                raise

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

    # -------------------------------------------------------------- routes
    async def health(self):
        import mlx.core as mx

        return {"status": "ok", "model": self.model_id, "uptime_seconds": int(time.time()) - self.started,
                "queue": {"waiting": self.worker.waiting(), "limit": self.worker.max_queue,
                          "running": self.worker.current is not None},
                "jobs": dict(self.worker.stats), "memory": {**rss(), "mlx_active_bytes": mx.get_active_memory()}}

    async def models(self):
        return {"object": "list", "data": [{"id": self.model_id, "object": "model", "created": self.started,
                                            "owned_by": "mobileo-deploy"}]}

    async def chat(self, request: Request):
        req = api.parse_chat(await self.json_body(request), self.model_id, self.limits.max_tokens)
        job = self.submit(chat_job(req, req.stream), request)
        cid = api.completion_id()
        kind, value = await self.outcome(job, request)
        if not req.stream:
            while kind == "start":
                kind, value = await self.outcome(job, request)
            return api.chat_completion(cid, self.model_id, value["text"], value["finish"], value["prompt_tokens"],
                                       value["completion_tokens"])
        first = (kind, value)

        async def events():
            finished = False
            try:
                yield sse(api.chat_chunk(cid, self.model_id, {"role": "assistant", "content": ""}))
                kind, value = first
                while kind != "result":
                    if kind == "delta":
                        yield sse(api.chat_chunk(cid, self.model_id, {"content": value}))
                    elif kind == "error":
                        yield sse(api.error_body(self.failure(value)))
                        finished = True
                        return
                    kind, value = await self.next_event(job, request)
                finished = True
                yield sse(api.chat_chunk(cid, self.model_id, {}, value["finish"]))
                if req.include_usage:
                    yield sse(api.chat_chunk(cid, self.model_id, None, usage_=api.usage(value["prompt_tokens"],
                                                                                   value["completion_tokens"])))
                yield "data: [DONE]\n\n"
            finally:
                if not finished:  # the client went away: stop the work
                    job.cancel()

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def images(self, request: Request, req: api.ImageRequest) -> dict:
        job = self.submit(image_job(req, self.model_id), request)
        _, pngs = await self.outcome(job, request)
        return {"created": int(time.time()),
                "data": [{"b64_json": base64.b64encode(p).decode("ascii"), "revised_prompt": req.settings.prompt}
                         for p in pngs]}

    async def generations(self, request: Request):
        return await self.images(request, api.parse_image_request(await self.json_body(request), self.model_id))

    async def edits(self, request: Request):
        from mlx_model.support.preprocess import ImageError, decode_image, load_image

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
        req = api.parse_image_request(fields, self.model_id, form=True)
        try:
            req.image = load_image(decode_image(await files[0].read(), f"the uploaded image {files[0].filename!r}"))
        except ImageError as e:
            raise api.APIError(400, str(e), param="image", code="invalid_image") from None
        return await self.images(request, req)


async def api_error(request: Request, e: api.APIError):
    return JSONResponse(api.error_body(e), status_code=e.status, headers=e.headers)


async def http_error(request: Request, e: HTTPException):  # unknown route, wrong method
    message = {404: f"no route {request.method} {request.url.path}; see GET /v1/models and the README.",
               405: f"{request.method} is not allowed on {request.url.path}."}.get(e.status_code, str(e.detail))
    return JSONResponse(api.error_body(api.APIError(e.status_code, message)), status_code=e.status_code)


async def internal(request: Request, e: Exception):
    traceback.print_exception(e, file=sys.stderr)
    err = api.APIError(500, "internal server error (see the server's log).")
    return JSONResponse(api.error_body(err), status_code=500)


def create_app(worker: Worker, model_id: str, limits: Limits = Limits()) -> FastAPI:
    server = Server(worker, model_id, limits)
    app = FastAPI(title="mobileo-server", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(BodyLimit, limit=limits.max_body_bytes)
    app.add_exception_handler(api.APIError, api_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(Exception, internal)
    app.add_api_route("/health", server.health, methods=["GET"])
    app.add_api_route("/v1/models", server.models, methods=["GET"])
    app.add_api_route("/v1/chat/completions", server.chat, methods=["POST"])
    app.add_api_route("/v1/images/generations", server.generations, methods=["POST"])
    app.add_api_route("/v1/images/edits", server.edits, methods=["POST"])
    return app


def sse(obj: dict) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"
