"""``mobileo-server`` on a loopback port with the demo model, called with the official
``openai`` client (and raw HTTP where a client would not send such a request)."""

import base64
import io
import re
import select
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from mlx_model.support.image_settings import ImageSettings
from metrics import within
from PIL import Image

import openai
import httpx
import fastapi  # noqa: F401

MAX_QUEUE = 4
MAX_BODY_MB = 2


class Server:
    def __init__(self, proc, url, log):
        self.proc, self.url, self.log = proc, url, log
        self.client = openai.OpenAI(base_url=url, api_key="none", max_retries=0, timeout=120)

    def health(self) -> dict:
        return httpx.get(self.url.removesuffix("/v1") + "/health", timeout=30).json()

    def post(self, path, **kw):
        return httpx.post(self.url + path, timeout=60, **kw)


def start_server(tmp_path_factory, *args):
    log = tmp_path_factory.mktemp("server") / "stderr.log"
    with open(log, "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "mlx_model.server", "--model", "demo", "-q", "0", "--port", "0",
                                 *args], stdout=subprocess.PIPE, stderr=err, text=True)
    ready, _, _ = select.select([proc.stdout], [], [], 300)
    line = proc.stdout.readline() if ready else ""
    m = re.search(r"(http://\S+/v1)", line)
    if not m:
        proc.kill()
        pytest.fail(f"the server did not start: {line!r} {log.read_text()[-2000:]}")
    return Server(proc, m.group(1), log)


def stop_server(s: Server):
    s.proc.terminate()
    try:
        code = s.proc.wait(60)
    finally:
        if s.proc.poll() is None:  # never leave a server running, whatever the assertion says
            s.proc.kill()
            s.proc.wait(10)
    assert code == 0, s.log.read_text()[-2000:]  # a clean exit after SIGTERM
    assert "Traceback" not in s.log.read_text()  # no request ended in an unhandled error


@pytest.fixture(scope="module")
def server(tmp_path_factory, photo):
    s = start_server(tmp_path_factory, "--max-queue", str(MAX_QUEUE), "--max-body-mb", str(MAX_BODY_MB),
                     "--allow-local-images", str(photo.parent))
    yield s
    stop_server(s)


def data_url(path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode()


def ask(question, url):
    return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                         {"type": "text", "text": question}]}]


def cli_answer(photo, question, **kw) -> str:
    from mlx_model.understand import understand

    return understand(photo, question, model="demo", quantize=0, out=io.StringIO(), **kw)


def pixels(png: bytes) -> np.ndarray:
    return np.array(Image.open(io.BytesIO(png)))


# ------------------------------------------------------------------ the routes
def test_models_and_health(server):
    assert [m.id for m in server.client.models.list()] == ["demo"]
    h = server.health()
    assert h["status"] == "ok" and h["queue"]["limit"] == MAX_QUEUE


def test_chat_with_an_image_is_the_cli_answer(server, photo):
    q = "What is in the picture?"
    r = server.client.chat.completions.create(model="demo", messages=ask(q, data_url(photo)), temperature=0,
                                              max_tokens=12, seed=3)
    cli = cli_answer(photo, q, temp=0, max_tokens=12, seed=3)
    assert r.choices[0].message.content == cli
    assert r.usage.completion_tokens == 12 or r.choices[0].finish_reason == "stop"
    # a local path works as well as a data URL
    r2 = server.client.chat.completions.create(model="demo", messages=ask(q, str(photo)), temperature=0,
                                               max_tokens=12, seed=3)
    assert r2.choices[0].message.content == cli


def test_streaming_is_token_identical_to_the_cli(server, photo):
    q = "Describe it."
    chunks = list(server.client.chat.completions.create(model="demo", messages=ask(q, data_url(photo)),
                                                        temperature=0, max_tokens=16, seed=0, stream=True,
                                                        stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == cli_answer(photo, q, temp=0, max_tokens=16, seed=0)
    assert chunks[0].choices[0].delta.role == "assistant"
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish in (["length"], ["stop"])
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens <= 16


def test_multi_turn_and_stop_sequences(server, photo):
    msgs = ask("What is it?", data_url(photo))
    first = server.client.chat.completions.create(model="demo", messages=msgs, temperature=0, max_tokens=8)
    answer = first.choices[0].message.content
    msgs += [{"role": "assistant", "content": answer}, {"role": "user", "content": "And its colour?"}]
    second = server.client.chat.completions.create(model="demo", messages=msgs, temperature=0, max_tokens=8)
    assert second.usage.prompt_tokens > first.usage.prompt_tokens
    # a stop sequence cuts the answer before it (the text up to it is the unstopped answer's)
    full = first.choices[0].message.content
    stop = full[3:5]
    if stop:
        cut = server.client.chat.completions.create(model="demo", messages=ask("What is it?", data_url(photo)),
                                                    temperature=0, max_tokens=8, stop=[stop])
        assert cut.choices[0].finish_reason == "stop"
        assert cut.choices[0].message.content == full[:full.find(stop)]


@pytest.fixture(scope="module")
def und():
    from mlx_model.pipelines.understanding import Understanding

    return Understanding.from_pretrained("demo", quantize=0, low_memory=False)


def entries(choice) -> list:
    return choice.logprobs.content if choice.logprobs is not None else []


def test_logprobs_are_the_log_softmax_of_a_direct_forward_pass(server, photo, und):
    """``logprobs``/``top_logprobs`` as OpenAI shapes them (token, bytes, logprob, the most likely
    first), each value against log_softmax of the logits of one uncached forward pass (test_chat's
    reference), sampled (temperature 0.9) so that the chosen token is not always the top one."""
    from test_chat import reference_logprobs

    q, top = "What is in the picture?", 5
    r = server.client.chat.completions.create(model="demo", messages=ask(q, data_url(photo)), temperature=0.9,
                                              seed=7, max_tokens=12, logprobs=True, top_logprobs=top)
    got = entries(r.choices[0])
    assert len(got) == r.usage.completion_tokens > 0
    by_bytes = {und.tokenizer.token_bytes(i): i for i in range(und.config.llm.vocab_size)}
    tokens = [by_bytes[bytes(e.bytes)] for e in got]
    ref = reference_logprobs(und, photo, q, tokens)
    err = 0.0
    for k, e in enumerate(got):
        assert e.token == bytes(e.bytes).decode("utf-8", "backslashreplace")
        want = np.sort(ref[k])[::-1][:top]
        assert [t.logprob for t in e.top_logprobs] == sorted((t.logprob for t in e.top_logprobs), reverse=True)
        err = max(err, abs(e.logprob - ref[k, tokens[k]]), *(abs(t.logprob - w) for t, w in zip(e.top_logprobs, want)),
                  *(abs(t.logprob - ref[k, by_bytes[bytes(t.bytes)]]) for t in e.top_logprobs))
        assert len(e.top_logprobs) == top
    within(err, at_most=1e-4, what="max |logprob - reference|")
    assert b"".join(bytes(e.bytes) for e in got).decode("utf-8", "replace") == r.choices[0].message.content
    # without top_logprobs: each entry alone; without logprobs: null
    r = server.client.chat.completions.create(model="demo", messages=ask(q, data_url(photo)), temperature=0,
                                              max_tokens=4, logprobs=True)
    assert all(e.top_logprobs == [] for e in entries(r.choices[0])) and len(entries(r.choices[0])) == 4
    r = server.client.chat.completions.create(model="demo", messages=ask(q, data_url(photo)), max_tokens=2)
    assert r.choices[0].logprobs is None


def test_streamed_logprobs_go_with_their_text_and_stop_at_a_stop_sequence(server, photo):
    msgs, kw = ask("Describe it.", data_url(photo)), dict(temperature=0, max_tokens=12, logprobs=True, top_logprobs=2)
    whole = server.client.chat.completions.create(model="demo", messages=msgs, **kw).choices[0]
    chunks = [c.choices[0] for c in server.client.chat.completions.create(model="demo", messages=msgs, stream=True, **kw)
              if c.choices]
    streamed = [e for c in chunks for e in entries(c)]
    assert [e.bytes for e in streamed] == [e.bytes for e in entries(whole)]
    assert max(abs(a.logprob - b.logprob) for a, b in zip(streamed, entries(whole))) <= 1e-4
    assert "".join(c.delta.content or "" for c in chunks) == whole.message.content
    for c in chunks:  # every chunk's entries come with text, the closing chunk's at most with the end
        assert c.logprobs is None or c.delta.content or c.finish_reason
    # a stop sequence: the entries of the tokens before it, none of the tokens inside it
    text = whole.message.content
    stop = text[len(text) // 2:len(text) // 2 + 2]
    cut = server.client.chat.completions.create(model="demo", messages=msgs, stop=[stop], **kw).choices[0]
    assert cut.finish_reason == "stop" and cut.message.content == text[:text.find(stop)]
    kept = entries(cut)
    assert [e.bytes for e in kept] == [e.bytes for e in entries(whole)[:len(kept)]]
    spelled = b"".join(bytes(e.bytes) for e in kept).decode("utf-8", "replace")
    assert spelled.startswith(cut.message.content) and len(spelled) - len(cut.message.content) < len(stop) + 4
    assert len(kept) < len(entries(whole))


def test_logprob_entries_go_with_the_text_that_reaches_them():
    from mlx_model.server.openai_api import LogprobsByText

    lps = LogprobsByText()
    lps.add("half", "")  # the first byte of a character: no text yet
    lps.add("rest", "é")
    assert lps.take(0) == []
    assert lps.take(1) == ["half", "rest"]  # sent with the character
    lps.add("x", "xy")
    lps.add("stop", "zz")
    assert lps.take(2) == ["x"]  # a stop sequence "zz" cut at 3 characters: its token never goes
    lps.add("special", "")
    assert lps.take(3, everything=True) == ["stop", "special"]  # an answer that ended without a stop sequence


def test_an_image_after_an_assistant_greeting(server, photo):
    msgs = [{"role": "assistant", "content": "Hi! Send me a picture."}] + ask("What is it?", data_url(photo))
    r = server.client.chat.completions.create(model="demo", messages=msgs, temperature=0, max_tokens=3)
    assert r.choices[0].message.role == "assistant"


def test_text_only_chat_and_system_prompt(server):
    r = server.client.chat.completions.create(
        model="demo", messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}],
        temperature=0, max_tokens=4)
    assert r.choices[0].message.role == "assistant"


def test_image_generation_is_the_cli_image(server, tmp_path):
    from mlx_model.generate import generate

    r = server.client.images.generate(model="demo", prompt="a red cup", n=2, size="64x64",
                                      response_format="b64_json", extra_body={"seed": 5, "steps": 2})
    assert len(r.data) == 2
    paths = generate(ImageSettings("a red cup", steps=2, seed=5, n_images=2), model="demo", quantize=0, output=tmp_path / "cli.png",
                     log=lambda m: None)
    for d, p in zip(r.data, paths):
        assert np.array_equal(pixels(base64.b64decode(d.b64_json)), np.array(Image.open(p)))


def test_image_edit_is_the_cli_edit(server, photo, tmp_path):
    from mlx_model.edit import edit

    with open(photo, "rb") as f:
        r = server.client.images.edit(model="demo", image=f, prompt="make it blue", response_format="b64_json",
                                      extra_body={"seed": 2, "steps": 2})
    (path,) = edit(photo, ImageSettings("make it blue", steps=2, seed=2), model="demo", quantize=0, output=tmp_path / "e.png",
                   log=lambda m: None)
    assert np.array_equal(pixels(base64.b64decode(r.data[0].b64_json)), np.array(Image.open(path)))


# ------------------------------------------------------------------ bad requests: 4xx with OpenAI's error body
def error_of(fn):
    with pytest.raises(openai.APIStatusError) as e:
        fn()
    return e.value.status_code, e.value.body


@pytest.mark.parametrize("kw, status, code_or_param", [
    (dict(model="nope"), 404, "model_not_found"),
    (dict(messages=[{"role": "user", "content": "   "}]), 400, "empty_prompt"),
    (dict(messages=ask("hi", "data:image/png;base64," + base64.b64encode(b"not an image").decode())), 400,
     "invalid_image"),
    (dict(messages=ask("hi", "data:image/png;base64,@@@")), 400, "messages[0].content[0]"),
    (dict(messages=ask("hi", "https://example.com/cat.png")), 400, "remote_url_refused"),
    (dict(messages=ask("hi", "/no/such/file.png")), 400, "local_image_refused"),
    (dict(max_tokens=2040), 400, "context_length_exceeded"),
    (dict(max_tokens=100_000), 400, "max_tokens"),
    (dict(temperature="hot"), 400, "temperature"),
    (dict(seed=-1), 400, "seed"),
    (dict(seed=2**64), 400, "seed"),
    (dict(temperature=0.5, extra_body={"top_k": 10**7}), 400, "top_k"),
    (dict(temperature=-1), 400, "temperature"),
    (dict(n=2), 400, "n"),
    (dict(messages=[{"role": "assistant", "content": "hi"}]), 400, "messages"),
    (dict(messages=[{"role": "tool", "content": "hi"}]), 400, "messages[0].role"),
    (dict(top_logprobs=3), 400, "top_logprobs"),  # without logprobs: true
    (dict(logprobs=True, top_logprobs=21), 400, "top_logprobs"),  # OpenAI's limit is 20
    (dict(extra_body={"logprobs": "yes"}), 400, "logprobs"),
    (dict(stop=["a", "b", "c", "d", "e"]), 400, "stop"),
    (dict(stream_options={"include_usage": 1}, stream=True), 400, "stream_options.include_usage"),
])
def test_chat_errors(server, photo, kw, status, code_or_param):
    args = dict(model="demo", messages=ask("What is it?", data_url(photo)), max_tokens=4, **{})
    args.update(kw)
    got, body = error_of(lambda: server.client.chat.completions.create(**args))
    assert got == status
    assert code_or_param in (body["code"], body["param"])
    if kw.get("max_tokens") == 2040:  # a bad setting names the API parameter, in ``param`` and in the text
        assert body["param"] == "max_tokens" and "'max_tokens' 2040" in body["message"] and "--" not in body["message"]
    assert body["type"] == "invalid_request_error" and body["message"]


def test_two_images_in_a_conversation(server, photo):
    msgs = ask("What is it?", data_url(photo)) + [{"role": "assistant", "content": "x"}] + ask("And this?", str(photo))
    got, body = error_of(lambda: server.client.chat.completions.create(model="demo", messages=msgs, max_tokens=4))
    assert got == 400 and "one image" in body["message"]


@pytest.mark.parametrize("kw, param", [
    (dict(prompt=""), "prompt"),
    (dict(size="100x100"), "size"),
    (dict(size="4096x4096"), "size"),
    (dict(size="big"), "size"),
    (dict(n=9), "n"),
    (dict(response_format="url"), "response_format"),
    (dict(extra_body={"steps": 0}), "steps"),
    (dict(extra_body={"seed": -1}), "seed"),
])
def test_image_errors(server, kw, param):
    args = dict(model="demo", prompt="a red cup", extra_body={"steps": 1})
    args.update(kw)
    got, body = error_of(lambda: server.client.images.generate(**args))
    assert got == 400 and body["param"] == param, body


def test_edit_errors(server, photo):
    got, body = error_of(lambda: server.client.images.edit(model="demo", image=io.BytesIO(b"junk"), prompt="blue"))
    assert got == 400 and body["code"] == "invalid_image"
    with open(photo, "rb") as f, open(photo, "rb") as m:
        got, body = error_of(lambda: server.client.images.edit(model="demo", image=f, mask=m, prompt="blue"))
    assert got == 400 and body["param"] == "mask"


def test_raw_http_errors(server):
    r = server.post("/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    r = server.post("/chat/completions", content=b"[1, 2]", headers={"content-type": "application/json"})
    assert r.status_code == 400
    r = server.post("/chat/completions", content=b"x" * ((MAX_BODY_MB << 20) + 1),
                    headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    r = httpx.get(server.url + "/chat/completions")
    assert r.status_code == 405 and "error" in r.json()
    r = httpx.get(server.url + "/nothing")
    assert r.status_code == 404 and "error" in r.json()


# ------------------------------------------------------------------ cancellation and load
def wait_for(server, pred, seconds=60):
    t = time.time()
    while time.time() - t < seconds:
        h = server.health()
        if pred(h):
            return h
        time.sleep(0.2)
    raise AssertionError(f"timed out: {server.health()}")


def test_a_client_that_leaves_cancels_its_work(server, photo):
    before = server.health()["jobs"]
    # an image request of many steps, abandoned by its client after a second
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server.url + "/images/generations", json={"model": "demo", "prompt": "slow", "steps": 900},
                   timeout=httpx.Timeout(60, read=1.5))
    after = wait_for(server, lambda h: h["jobs"]["cancelled"] > before["cancelled"])
    assert after["jobs"]["done"] == before["done"]  # it never finished
    # a stream abandoned after its first pieces
    body = {"model": "demo", "messages": ask("Tell me everything.", data_url(photo)), "max_tokens": 1900,
            "temperature": 0, "stream": True}
    with httpx.stream("POST", server.url + "/chat/completions", json=body, timeout=60) as r:
        lines = r.iter_lines()
        got = [next(lines) for _ in range(6)]
    assert any(line.startswith("data: {") for line in got)
    done = after["jobs"]["done"]
    h = wait_for(server, lambda h: h["jobs"]["cancelled"] + h["jobs"]["done"] > after["jobs"]["cancelled"] + done
                 and not h["queue"]["running"])
    assert h["jobs"]["cancelled"] == after["jobs"]["cancelled"] + 1
    # and the server answers the next request
    assert server.client.chat.completions.create(model="demo", messages=ask("Hi", data_url(photo)), max_tokens=2)


def test_load_every_request_answered_or_503_and_memory_flat(server, photo, capsys):
    url = data_url(photo)

    def one(i):
        try:
            if i % 5 == 0:
                chunks = list(server.client.chat.completions.create(
                    model="demo", messages=ask(f"Question {i}?", url), max_tokens=6, stream=True))
                return "ok" if chunks else "empty"
            server.client.chat.completions.create(model="demo", messages=ask(f"Question {i}?", url), max_tokens=6)
            return "ok"
        except openai.APIStatusError as e:
            if e.status_code == 503 and int(e.response.headers["retry-after"]) >= 1:
                return "503"
            return f"{e.status_code}"

    with ThreadPoolExecutor(8) as pool:  # warm-up: allocator pools, caches
        list(pool.map(one, range(8)))
    rss0 = server.health()["memory"]["rss_bytes"]
    results = []
    for _ in range(3):
        with ThreadPoolExecutor(50) as pool:
            results += list(pool.map(one, range(50)))
    h = server.health()
    rss1 = h["memory"]["rss_bytes"]
    counts = {k: results.count(k) for k in set(results)}
    with capsys.disabled():
        print(f"\nload: 150 requests in 3 waves of 50 -> {counts}; server RSS {rss0 / 1e6:.1f} MB -> "
              f"{rss1 / 1e6:.1f} MB; jobs {h['jobs']}")
    assert set(counts) <= {"ok", "503"} and counts.get("ok", 0) >= MAX_QUEUE
    assert counts.get("503", 0) > 0  # the bound was reached, and answered as such
    assert rss1 - rss0 < 64e6  # flat: no growth with the number of requests served
    assert server.client.chat.completions.create(model="demo", messages=ask("Still there?", url), max_tokens=2)


def test_the_readme_example_runs(server, capsys):
    """README's "start the server, call it with the openai client" block, against this server."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = re.search(r"<!-- server-example[^>]*-->\s*```python\n(.*?)```", readme, re.S).group(1)
    assert "mobileo-server --model demo --port 8080" in block
    code = block.replace("http://127.0.0.1:8080/v1", server.url)
    assert code != block
    exec(compile(code, "README.md", "exec"), {})
    assert capsys.readouterr().out.strip()  # it printed the answer


def test_worker_stop_cancels_waiting_and_running_jobs():
    """Shutdown: the queue is emptied, the running job stops at its next check, the thread ends."""
    import asyncio
    import threading

    from mlx_model.server.worker import Job, Worker

    started = threading.Event()

    def slow(state, job):
        started.set()
        for _ in range(600):
            job.check()
            time.sleep(0.05)
        return "finished"

    loop = asyncio.new_event_loop()
    worker = Worker(lambda: "state", max_queue=4)
    worker.start()
    running, waiting = Job(slow, loop), Job(slow, loop)
    worker.submit(running)
    worker.submit(waiting)
    assert started.wait(10)
    worker.stop()
    assert worker.stopped  # the model released; the thread parked (done == 0 below: nothing ran to its end)
    assert running.cancelled.is_set() and waiting.cancelled.is_set()
    assert worker.stats["cancelled"] == 2 and worker.stats["done"] == 0
    loop.close()
    Job(slow, loop).emit("delta", "x")  # a closed loop: nobody to tell, no error


@pytest.mark.parametrize("args, words", [(["--port", "99999"], "--port 99999 is out of range"),
                                         (["--max-queue", "0"], "--max-queue 0 is out of range"),
                                         (["--model", "/no/such/folder"], "does not exist")])
def test_server_cli_bad_flags_are_one_line(capsys, args, words):
    from mlx_model.server import main

    with pytest.raises(SystemExit) as e:
        main(["--port", "0", *args])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and words in err and "Traceback" not in err
