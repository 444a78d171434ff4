"""The OpenAI wire format: request bodies checked and turned into Mobile-O calls, answers and
errors shaped as OpenAI's (https://platform.openai.com/docs/api-reference).

Every bad request becomes an :class:`APIError` (status, message, ``param``, ``code``) with
OpenAI's error body; nothing here touches MLX.  Extensions beyond OpenAI's fields, named as
mlx-lm's server names them: ``top_k``, ``min_p``, ``repetition_penalty`` (chat), ``seed``,
``steps``, ``guidance`` (images).

``logprobs``/``top_logprobs`` (chat) are OpenAI's: per answered token its text, its UTF-8
``bytes`` and its log-probability, with the ``top_logprobs`` most likely tokens (0 to 20,
most likely first), in ``choices[0].logprobs.content``, streamed with each chunk's text.  The
probabilities are mlx-lm's: log_softmax of the logits after the repetition penalty, before
temperature, top-k, top-p and min-p.
"""

from __future__ import annotations

import base64
import binascii
import re
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated
from urllib.parse import unquote, urlparse

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from weights.core.errors import MobileOError, SettingError

from mlx_model.support.image_settings import SEED_LIMIT, ImageSettings

__all__ = ["APIError", "ChatRequest", "ImageRequest", "StopMatcher", "error_body", "from_mobileo_error",
           "parse_chat", "parse_image_request", "parse_size", "chat_completion", "chat_chunk", "check_image_bytes",
           "check_unicode", "image_url_bytes", "token_logprob", "LogprobsByText"]

MAX_STOP = 4  # OpenAI: up to 4 stop sequences
MAX_BODY_BYTES = 32 << 20  # a request body, and a local image named by image_url (mobileo-server --max-body-mb)
MAX_IMAGES_PER_REQUEST = 4
MAX_TOP_LOGPROBS = 20  # OpenAI's limit


class APIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type or ("invalid_request_error" if status < 500 else "server_error")
        self.headers = headers or {}


def error_body(e: APIError) -> dict:
    return {"error": {"message": e.message, "type": e.type, "param": e.param, "code": e.code}}


# the API's name of a library setting where the two differ (SettingError.param -> parameter)
API_NAMES = {"temp": "temperature", "n_images": "n", "width": "size", "height": "size"}


def from_mobileo_error(e: MobileOError) -> APIError:
    """A library error (bad setting, empty or over-long prompt, bad image) as a 400; a bad
    setting names the API's parameter, in the message and in ``param``."""
    from mlx_model.pipelines.understanding import ContextLengthError

    param, message = None, str(e)
    if isinstance(e, SettingError):
        param = API_NAMES.get(e.param, e.param)
        message = e.named(f"'{param}'")
    code = "context_length_exceeded" if isinstance(e, ContextLengthError) else None
    return APIError(400, message, param=param, code=code)


# ------------------------------------------------------------------ values
# A body's fields, as pydantic models: JSON types strictly (bool is never a number, "1" never
# an integer), numbers finite and within what MLX casts to a C++ number; multipart fields
# (always strings) are read laxly.  The library checks the ranges it owns (temperature >= 0,
# steps, sizes, ...); these say only what the API itself limits.
Whole = Annotated[int, Field(ge=-2**53, le=2**53)]
Number = Annotated[float, Field(allow_inf_nan=False, ge=-2**53, le=2**53)]


class Fields(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")  # messages, prompt, ...: read by hand

    @classmethod
    def read(cls, body: dict, form: bool = False):
        try:
            return cls.model_validate(body, strict=False if form else None)
        except ValidationError as e:
            raise from_validation(cls, e) from None


def from_validation(model: type[BaseModel], e: ValidationError) -> APIError:
    """The first field a pydantic model refused, as a 400 naming it (a union's members each
    report: the first names the field, and its description says what it takes)."""
    err = e.errors()[0]
    param = ".".join(str(p) for p in err["loc"][:2 if err["loc"][0] == "stream_options" else 1])
    info = model.model_fields.get(str(err["loc"][0]))
    value = err.get("input")
    shown = json_type(value) if not isinstance(value, (int, float, str)) or isinstance(value, bool) else repr(value)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    if info is not None and info.description:
        return APIError(400, f"'{param}' must be {info.description}, got {shown}.", param=param)
    return APIError(400, f"'{param}': {err['msg'][0].lower()}{err['msg'][1:]}, got {shown}.", param=param)


class StreamOptions(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")
    include_usage: bool | None = None


class ChatFields(Fields):
    n: Annotated[int, Field(ge=1, le=1)] | None = Field(None, description="1 (one answer per request)")
    max_tokens: Whole | None = None
    max_completion_tokens: Whole | None = None
    temperature: Number | None = None
    top_p: Number | None = None
    top_k: Whole | None = None
    min_p: Number | None = None
    repetition_penalty: Number | None = None
    seed: Annotated[int, Field(ge=0, lt=SEED_LIMIT)] | None = Field(
        None, description=f"an integer from 0 to {SEED_LIMIT - 1}")
    stop: Annotated[str, Field(min_length=1)] | Annotated[list[Annotated[str, Field(min_length=1)]],
                                                           Field(max_length=MAX_STOP)] | None = Field(
        None, description=f"a non-empty string or up to {MAX_STOP} of them")
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=MAX_TOP_LOGPROBS)] | None = Field(
        None, description=f"an integer from 0 to {MAX_TOP_LOGPROBS}")


class ImageFields(Fields):
    n: Annotated[int, Field(ge=1, le=MAX_IMAGES_PER_REQUEST)] | None = Field(
        None, description=f"an integer from 1 to {MAX_IMAGES_PER_REQUEST}")
    steps: Whole | None = None
    guidance: Number | None = None
    seed: Whole | None = None
    scheduler: str | None = None
    size: str | None = None
    response_format: str | None = None


def json_type(v) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "an array",
            dict: "an object", type(None): "null"}.get(type(v), type(v).__name__)


def check_model(body: dict, model_id: str) -> None:
    model = body.get("model")
    if model is not None and model != model_id:
        raise APIError(404, f"The model '{model}' does not exist; this server serves '{model_id}'.",
                       param="model", code="model_not_found")


# ------------------------------------------------------------------ text
def check_unicode(value, param: str = "") -> None:
    """Every string in a parsed body (keys too) is valid Unicode: JSON may carry a lone
    surrogate (``"\ud800"``), which no tokenizer (and no UTF-8 encoder) accepts."""
    if isinstance(value, str):
        from mlx_model.support.tokenizer import surrogate_at

        at = surrogate_at(value)
        if at is not None:
            raise APIError(400, f"'{param or 'the body'}' holds a lone surrogate (\\u{ord(value[at]):04x} at "
                           f"character {at}), which is not Unicode text; send UTF-8 text.", param=param or None,
                           code="invalid_text")
    elif isinstance(value, dict):
        for k, v in value.items():
            check_unicode(k, param)
            check_unicode(v, f"{param}.{k}" if param else str(k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            check_unicode(v, f"{param}[{i}]")


# ------------------------------------------------------------------ images in requests
def check_image_bytes(raw: bytes, param: str, max_pixels: int) -> bytes:
    """``raw`` if its header names an image format Pillow reads, of at most ``max_pixels``;
    nothing is decoded here (the worker decodes, one image at a time).  Runs off the loop."""
    import io
    import warnings

    from PIL import Image

    from mlx_model.support.preprocess import READ_FORMATS

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(raw), formats=READ_FORMATS) as im:
                width, height = im.size
    except Image.DecompressionBombError:
        width = height = None
    except Exception as e:  # Pillow raises many kinds on a bad header
        why = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise APIError(400, f"cannot read the image in '{param}' ({why}); send a PNG, JPEG, WebP, ... file.",
                       param=param, code="invalid_image") from None
    if width is None or width * height > max_pixels:
        size = "over Pillow's limit" if width is None else f"{width}x{height} ({width * height / 1e6:.0f} megapixels)"
        raise APIError(400, f"the image in '{param}' is {size}, more than the {max_pixels / 1e6:.0f} megapixels "
                       "this server decodes (mobileo-server --max-image-megapixels); downscale it (Mobile-O sees "
                       "it at 1024x1024 anyway).", param=param, code="image_too_large")
    if width < 1 or height < 1:
        raise APIError(400, f"the image in '{param}' is empty (0 pixels).", param=param, code="invalid_image")
    return raw


def image_url_bytes(url: str, param: str, local_images: Path | None) -> bytes:
    """An ``image_url``'s encoded bytes: a base64 data URL, or (only with ``--allow-local-images
    DIR``) a file inside DIR.  Remote URLs are refused: the server never fetches from the
    network.  A path outside DIR gets the same answer whether or not it exists."""
    if url[:5].lower() == "data:":
        head, sep, data = url.partition(",")
        if not sep or not head.lower().endswith(";base64"):
            raise APIError(400, "an image data URL must be base64: data:image/png;base64,<data>.", param=param)
        try:
            return base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise APIError(400, "the image data URL is not valid base64.", param=param) from None
    scheme = urlparse(url).scheme.lower()
    if scheme not in ("", "file") and not (len(scheme) == 1 and url[1:3] in (":\\", ":/")):  # C:\ is a path
        raise APIError(400, f"remote image URLs are not fetched ({scheme}://...); this server reads images "
                       "sent inline. Send a data URL (data:image/png;base64,...).", param=param,
                       code="remote_url_refused")
    if local_images is None:
        raise APIError(400, "this server does not read image paths from its disk; send the image inline as a data "
                       "URL (data:image/png;base64,...), or start the server with --allow-local-images DIR.",
                       param=param, code="local_image_refused")
    import os
    import stat

    root = os.path.realpath(local_images)
    name = unquote(urlparse(url).path) if scheme == "file" else url
    path = os.path.realpath(os.path.join(root, os.path.expanduser(name)))
    if os.path.commonpath([root, path]) != root:
        raise APIError(400, f"image paths must be inside the folder this server was started with "
                       f"(--allow-local-images {local_images}); send the image inline as a data URL instead.",
                       param=param, code="local_image_refused")
    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_BODY_BYTES:  # no FIFO, device or huge file
            why = "not a regular file" if not stat.S_ISREG(info.st_mode) else f"over {MAX_BODY_BYTES >> 20} MB"
            raise APIError(400, f"cannot read the image {name!r} in the allowed folder ({why}).", param=param,
                           code="invalid_image")
        with open(path, "rb") as f:
            return f.read(MAX_BODY_BYTES + 1)
    except OSError as e:
        raise APIError(400, f"cannot read the image {name!r} in the allowed folder ({e.strerror}).", param=param,
                       code="invalid_image") from None


# ------------------------------------------------------------------ chat
@dataclass
class ChatRequest:
    turns: list[tuple[str, str]]
    image_ref: tuple[str, str] | None = None  # (image_url, its parameter), read by the server off the loop
    image: bytes | None = None  # the image's encoded bytes, in the first user turn (decoded on the worker)
    system_prompt: str | None = None
    stream: bool = False
    include_usage: bool = False
    stop: list[str] = field(default_factory=list)
    options: dict = field(default_factory=dict)  # Understanding.stream_chat's decoding keywords
    logprobs: bool = False  # answer each token's log-probability
    top_logprobs: int = 0  # ... and that of the most likely tokens at its place


def _text_of(content, i: int, images: list) -> str:
    """A message's content (a string or parts) -> its text; image parts go to ``images``."""
    param = f"messages[{i}].content"
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise APIError(400, f"'{param}' must be a string or an array of parts, got {json_type(content)}.",
                       param=param)
    texts = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "image_url":
            ref = part.get("image_url")
            url = ref.get("url") if isinstance(ref, dict) else ref
            if not isinstance(url, str):
                raise APIError(400, f"'{param}[{j}].image_url.url' must be a string.", param=f"{param}[{j}]")
            images.append((url, f"{param}[{j}]"))
        else:
            raise APIError(400, f"'{param}[{j}]' must be a text or an image_url part.", param=f"{param}[{j}]")
    return "\n".join(texts)


# OpenAI's chat parameters this server does not honour, each with the values that ask for nothing
# (the official client and most tools send those): anything else is a 400 naming the parameter
UNSUPPORTED = {
    "tools": lambda v: v in (None, []), "tool_choice": lambda v: v in (None, "none"),
    "functions": lambda v: v in (None, []), "function_call": lambda v: v in (None, "none"),
    "parallel_tool_calls": lambda v: True,  # meaningless without tools
    "logit_bias": lambda v: v in (None, {}), "presence_penalty": lambda v: v in (None, 0, 0.0),
    "frequency_penalty": lambda v: v in (None, 0, 0.0),
    "response_format": lambda v: v is None or v == {"type": "text"},
    "modalities": lambda v: v in (None, ["text"]), "audio": lambda v: v is None, "prediction": lambda v: v is None,
    "web_search_options": lambda v: v is None,
}


def check_unsupported(body: dict) -> None:
    for name, harmless in UNSUPPORTED.items():
        if name in body and not harmless(body[name]):
            raise APIError(400, f"'{name}' is not supported by this server (Mobile-O answers in plain text, "
                           "one answer per request, without tools, penalties or logit biases); leave it out.",
                           param=name, code="unsupported_parameter")


def parse_chat(body: dict, model_id: str, max_tokens_limit: int) -> ChatRequest:
    """A ``/v1/chat/completions`` body -> :class:`ChatRequest`: the messages read here (the image
    as a reference, read later off the loop), the other fields by :class:`ChatFields`; the
    library checks the decoding options' ranges."""
    check_model(body, model_id)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise APIError(400, "'messages' must be a non-empty array.", param="messages")
    turns, systems, images = [], [], []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise APIError(400, f"'messages[{i}]' must be an object.", param=f"messages[{i}]")
        role = m.get("role")
        if role not in ("system", "developer", "user", "assistant"):
            raise APIError(400, f"'messages[{i}].role' {role!r} is not supported: use system, user or assistant.",
                           param=f"messages[{i}].role")
        seen = len(images)
        text = _text_of(m.get("content"), i, images)
        if role != "user" and len(images) > seen:
            raise APIError(400, f"'messages[{i}]': only user messages can hold images.", param=f"messages[{i}]")
        if role in ("system", "developer"):
            systems.append(text)
        else:
            turns.append((role, text))
    if len(images) > 1:
        raise APIError(400, f"the conversation holds {len(images)} images; Mobile-O takes one image per "
                       "conversation (its template places it in the first user turn).", param="messages")
    if not turns or turns[-1][0] != "user":
        raise APIError(400, "the last message must be the user's.", param="messages")
    if not turns[-1][1].strip():
        raise APIError(400, "the last user message has no text; ask something.", param="messages",
                       code="empty_prompt")
    check_unsupported(body)
    f = ChatFields.read(body)
    max_tokens = f.max_completion_tokens if f.max_completion_tokens is not None else f.max_tokens
    if max_tokens is not None and max_tokens > max_tokens_limit:
        raise APIError(400, f"'max_tokens' {max_tokens} is more than this server's limit of {max_tokens_limit}.",
                       param="max_tokens")
    if f.top_logprobs and not f.logprobs:
        raise APIError(400, "'top_logprobs' needs 'logprobs': true.", param="top_logprobs")
    options = {"max_tokens": max_tokens, "temp": _or(f.temperature, 0.0), "top_p": _or(f.top_p, 1.0),
               "top_k": _or(f.top_k, 0), "min_p": _or(f.min_p, 0.0), "repetition_penalty": f.repetition_penalty,
               "seed": f.seed}
    return ChatRequest(turns, images[0] if images else None, None, "\n".join(systems) if systems else None,
                       bool(f.stream), bool(f.stream_options and f.stream_options.include_usage),
                       [f.stop] if isinstance(f.stop, str) else list(f.stop or []), options, bool(f.logprobs),
                       f.top_logprobs or 0)


def _or(value, default):
    return default if value is None else value


class LogprobsByText:
    """Token entries handed out with the answer's text: an entry goes with the first piece of
    text that reaches its token's text; tokens wholly inside a cut stop sequence are never sent."""

    def __init__(self):
        self.pending: list[tuple[int, dict]] = []  # (where the token's text starts in the answer, entry)
        self.fed = 0  # characters of the answer made so far, sent or held back

    def add(self, entry: dict, text: str) -> None:
        self.pending.append((self.fed, entry))
        self.fed += len(text)

    def take(self, sent: int, everything: bool = False) -> list[dict]:
        """The entries whose text has begun within the ``sent`` characters sent so far (all of
        them with ``everything``: the answer ended without a stop sequence)."""
        ready = [e for start, e in self.pending if everything or start < sent]
        self.pending = [] if everything else [(start, e) for start, e in self.pending if start >= sent]
        return ready


class StopMatcher:
    """Cuts the answer at the first stop sequence; text that may be the start of one is held
    back until it is known not to be."""

    def __init__(self, stops: list[str]):
        self.stops = stops
        self.pending = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """(text safe to send, stopped?)"""
        if not self.stops:
            return text, False
        self.pending += text
        cut = min((i for i in (self.pending.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            out, self.pending = self.pending[:cut], ""
            return out, True
        hold = max((k for s in self.stops for k in range(1, len(s)) if self.pending.endswith(s[:k])), default=0)
        out = self.pending[:len(self.pending) - hold]
        self.pending = self.pending[len(out):]
        return out, False

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex[:24]}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def token_logprob(token: bytes, logprob: float, top: list[tuple[bytes, float]] | None = None) -> dict:
    """One entry of ``logprobs.content``: the token's text (bytes that are part of a UTF-8
    character written as ``\\xNN``), its bytes, its log-probability and (``top``) the most
    likely tokens at its place."""
    def one(b: bytes, lp: float) -> dict:
        return {"token": b.decode("utf-8", "backslashreplace"), "logprob": lp, "bytes": list(b)}

    return {**one(token, logprob), "top_logprobs": [one(b, lp) for b, lp in top or []]}


def logprobs_of(entries: list[dict] | None) -> dict | None:
    """A choice's ``logprobs``: None unless asked for."""
    return None if entries is None else {"content": entries, "refusal": None}


def chat_completion(cid: str, model: str, text: str, finish: str, prompt_tokens: int, completion_tokens: int,
                    logprobs: list[dict] | None = None) -> dict:
    return {"id": cid, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish,
                         "logprobs": logprobs_of(logprobs)}],
            "usage": usage(prompt_tokens, completion_tokens)}


def chat_chunk(cid: str, model: str, delta: dict, finish: str | None = None, usage_: dict | None = None,
               logprobs: list[dict] | None = None) -> dict:
    out = {"id": cid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
           "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": logprobs_of(logprobs)}]
           if delta is not None else []}
    if usage_ is not None:
        out["usage"] = usage_
    return out


# ------------------------------------------------------------------ images
@dataclass
class ImageRequest:
    settings: ImageSettings
    image: bytes | None = None  # editing: the upload's encoded bytes (decoded on the worker)


def parse_size(size, param: str = "size") -> tuple[int | None, int | None]:
    """OpenAI's ``"WIDTHxHEIGHT"`` (or ``"auto"``/absent: the model's own size) -> (height, width)."""
    if size is None or size == "auto":
        return None, None
    m = re.fullmatch(r"(\d{1,5})x(\d{1,5})", size) if isinstance(size, str) else None
    if not m:
        raise APIError(400, f"'size' must be \"WIDTHxHEIGHT\" (e.g. \"512x512\") or \"auto\", got {size!r}.",
                       param=param)
    return int(m.group(2)), int(m.group(1))


def parse_image_request(body: dict, model_id: str, form: bool = False) -> ImageRequest:
    """A ``/v1/images/generations`` JSON body, or (``form``) the fields of a
    ``/v1/images/edits`` upload, -> :class:`ImageRequest` (the edit's image is added by the caller)."""
    f = ImageFields.read(body, form)
    check_model(body, model_id)
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise APIError(400, "'prompt' must be a non-empty string.", param="prompt", code="empty_prompt")
    fmt = f.response_format or "b64_json"
    if fmt != "b64_json":
        raise APIError(400, f"'response_format' {fmt!r} is not supported: this server returns images inline "
                       "(\"b64_json\"); it hosts no files to point a URL at.", param="response_format")
    height, width = parse_size(f.size)
    settings = ImageSettings(prompt, steps=f.steps, guidance=f.guidance, seed=f.seed, n_images=_or(f.n, 1),
                             height=height, width=width, scheduler=_or(f.scheduler, ImageSettings.scheduler))
    try:
        return ImageRequest(settings.check())
    except MobileOError as e:
        raise from_mobileo_error(e) from None
