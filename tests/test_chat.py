"""Multi-turn understanding (``mlx_model.pipelines.conversation``) and the ``mobileo-chat`` REPL, on the
tiny random checkpoint."""

import io
import re
import sys

import numpy as np
import pytest
from PIL import Image

from weights.core.prompts import conversation_prompt, understanding_prompt

from metrics import rel_err, within


@pytest.fixture(scope="module")
def und(tiny_ckpt):
    from mlx_model.pipelines.understanding import Understanding

    return Understanding.from_checkpoint(tiny_ckpt, quantize=0, low_memory=False)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    d = tmp_path_factory.mktemp("chat")
    rng = np.random.default_rng(0)
    out = []
    for i in range(2):
        p = d / f"photo{i}.png"
        Image.fromarray(rng.integers(0, 256, (48, 40 + 8 * i, 3), dtype=np.uint8)).save(p)
        out.append(p)
    return out


def tokens(stream) -> list[int]:
    return [r.token for r in stream if r.token is not None]


def test_template_is_mobileos_qwen_2_conversation():
    """Hand-written from Mobile-O's ``conv_qwen_2`` (``MO/mobileo/conversation.py`` in
    docs/upstream.md): system + sep, then role + message + sep per turn, the open assistant role
    last; the image as ``<image>\\n`` at the start of the first user message."""
    expected = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
                "<|im_start|>user\n<image>\nWhat is it?<|im_end|>\n"
                "<|im_start|>assistant\nA cup.<|im_end|>\n"
                "<|im_start|>user\nWhat colour?<|im_end|>\n"
                "<|im_start|>assistant\n")
    turns = [("user", "What is it?"), ("assistant", "A cup."), ("user", "What colour?")]
    assert conversation_prompt(turns, image_turn=0) == expected
    assert conversation_prompt(turns[:1], image_turn=0) == understanding_prompt("What is it?")
    with pytest.raises(ValueError):
        conversation_prompt(turns, image_turn=1)  # an assistant turn cannot hold the image


def test_reused_prefix_gives_the_logits_of_a_full_prefill(und, photos, parity):
    """Turn 2 prefilled on top of turn 1's cache == turn 2 prefilled from scratch."""
    from mlx_model.pipelines.conversation import PromptCache, image_digest

    llm, enc = und.llm, und.encoder
    pixels = enc.pixels(photos[0])
    key = image_digest(pixels[0])
    projected = enc.encode(pixels)
    p1 = und.chat_prompt([("user", "What is it?")])
    p2 = und.chat_prompt([("user", "What is it?"), ("assistant", "A cup."), ("user", "And its colour?")])
    e2 = p2.embed(llm, projected)
    full = llm(e2)[0, -1]

    pc = PromptCache()
    assert pc.reuse(p1.keys(key)) == 0
    llm(p1.embed(llm, projected), cache=pc.get(llm))
    pc.record(p1.keys(key), [])
    start = pc.reuse(p2.keys(key))
    cache = pc.get(llm)
    assert start > p2.image_positions().stop  # the system turn, the image and the question are reused
    reused = llm(e2[:, start:], cache=cache)[0, -1]
    err = rel_err(np.array(reused), np.array(full))
    parity("llm prompt-cache reuse", "mlx fp32", "max_rel_err logits", err, at_most=1e-5)


def test_second_turn_reuses_the_image_and_answers_as_from_scratch(und, photos, monkeypatch):
    from mlx_model.pipelines.conversation import Conversation

    chat = Conversation(und, photos[0])
    first = tokens(chat.ask("What is it?", temp=0, max_tokens=6))
    assert len(chat.turns) == 2 and chat.turns[0] == ("user", "What is it?")

    calls = []
    real = type(und.encoder).encode
    monkeypatch.setattr(type(und.encoder), "encode", lambda self, im: calls.append(1) or real(self, im))
    second = tokens(chat.ask("And its colour?", temp=0, max_tokens=6))
    assert calls == []  # the vision tower did not run again
    assert chat.cache.reused > und.chat_prompt(chat.turns[:1]).image_positions().stop

    fresh = und.stream_chat(chat.turns[:2] + [("user", "And its colour?")], image=und.encoder.pixels(photos[0])[0],
                            temp=0, max_tokens=6)
    assert second == tokens(fresh)
    assert first  # something was said


def test_another_image_is_never_matched_by_the_cache(und, photos):
    from mlx_model.pipelines.conversation import Conversation

    chat = Conversation(und, photos[0])
    tokens(chat.ask("What is it?", temp=0, max_tokens=3))
    chat.set_image(photos[1])
    assert chat.turns == []
    tokens(chat.ask("What is it?", temp=0, max_tokens=3))
    prompt = und.chat_prompt([("user", "What is it?")])
    assert chat.cache.reused == prompt.image_positions().start  # the system turn only


def test_text_only_and_rotating_cache(und):
    from mlx_model.pipelines.conversation import Conversation

    chat = Conversation(und)
    assert tokens(chat.ask("Hello?", temp=0, max_tokens=3))
    assert tokens(chat.ask("Again?", temp=0, max_tokens=3, max_kv_size=512))  # rotating: works, never reused
    assert chat.cache.reused == 0
    assert tokens(chat.ask("And now?", temp=0, max_tokens=3))  # nor is a rotating cache reused without one
    assert chat.cache.reused == 0 and chat.cache.max_kv_size is None


def test_a_cache_out_of_step_with_its_keys_is_dropped():
    """A token fed to the cache but never handed out (an interrupt between the two) leaves a
    position with no key: the cache must not be reused with the wrong positions."""
    from types import SimpleNamespace

    from mlx_model.pipelines.conversation import PromptCache

    pc = PromptCache()
    pc.cache = [SimpleNamespace(offset=6, is_trimmable=lambda: True)]
    pc.record([1, 2, 3], [4, 5])  # 5 known positions, 6 held
    assert pc.cache is None and pc.keys == []


def reference_logprobs(und, photo, question, tokens, penalty=None, context=20) -> np.ndarray:
    """log_softmax, in float64 numpy, of the logits of ONE uncached forward pass over the prompt
    and the answer's tokens (mlx-lm's repetition penalty applied by hand): [len(tokens), vocab]."""
    import mlx.core as mx

    prompt, embeds = und.embed(und.encoder.pixels(photo), question)
    embeds = mx.concatenate([embeds, und.llm.embed(mx.array([tokens[:-1]]))], axis=1)
    logits = np.array(und.llm(embeds)[0, len(prompt) - 1:].astype(mx.float32), np.float64)
    if penalty is not None:
        ids = list(prompt.ids()) + list(tokens)
        for k, row in enumerate(logits):
            seen = ids[:len(prompt) + k][-context:]
            row[seen] = np.where(row[seen] < 0, row[seen] * penalty, row[seen] / penalty)
    logits -= logits.max(axis=-1, keepdims=True)
    return logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))


@pytest.mark.parametrize("options", [dict(temp=0), dict(temp=0.9, seed=4), dict(temp=0, repetition_penalty=1.3)])
def test_each_token_carries_the_log_probabilities_it_was_sampled_from(und, photos, options):
    """``stream_chat(logprobs=True)``: every token's log-probabilities are mlx-lm's (log_softmax of
    the logits after the repetition penalty, before temperature), checked against one uncached
    forward pass over the prompt and the answer."""
    import mlx.core as mx

    question = "What is it?"
    out = [r for r in und.stream_chat([("user", question)], image=und.encoder.pixels(photos[0])[0], max_tokens=10,
                                      logprobs=True, **options) if r.token is not None]
    tokens = [r.token for r in out]
    ours = np.stack([np.array(r.logprobs.astype(mx.float32)) for r in out])
    ref = reference_logprobs(und, photos[0], question, tokens, options.get("repetition_penalty"))
    within(np.abs(ours - ref).max(), at_most=1e-4, what="max |logprob - reference|")
    if options["temp"] == 0:
        assert tokens == list(ref.argmax(axis=-1))  # greedy took the most likely token each time
    assert all(r.logprobs is None for r in und.stream_chat([("user", question)], max_tokens=2, temp=0))


@pytest.fixture(scope="module")
def mobileo(tiny_ckpt):
    from mlx_model.pipelines.mobileo import MobileO

    return MobileO.from_checkpoint(tiny_ckpt, quantize=0, low_memory=False, name="tiny")


def test_one_model_shares_the_llm_and_encoder(mobileo):
    u, g = mobileo.understanding, mobileo.generation
    assert g.parts["llm"] is u.parts["llm"] and g.parts["encoder"] is u.parts["encoder"]
    assert g.tokenizer is u.tokenizer
    assert not g.parts["dit"].resident  # loaded by the first image, not by a chat


def test_repl_commands(mobileo, photos, tmp_path):
    from mlx_model.chat import ChatREPL

    out = io.StringIO()
    repl = ChatREPL(mobileo, photos[0], output_dir=tmp_path, out=out, seed=1, temp=0, max_tokens=4)
    script = ["What is it?", "And then?", "/reset", "/image /no/such.png", "/image", "/bogus",
              f"/image {photos[1]}", "What now?", "/generate a red cup", "/generate", "/help"]
    for line in script:
        assert repl.handle(line)
    assert repl.handle("/quit") is False
    text = out.getvalue()
    assert "(conversation reset)" in text
    assert "error: image /no/such.png does not exist" in text
    assert "error: /image needs a path" in text and "error: unknown command /bogus" in text
    assert "error: /generate needs a prompt" in text and "/image PATH" in text
    assert repl.chat.turns[0] == ("user", "What now?")
    assert (tmp_path / "image.png").is_file()


def test_repl_reads_stdin_to_the_end(mobileo, photos):
    from mlx_model.chat import ChatREPL

    out = io.StringIO()
    ChatREPL(mobileo, photos[0], out=out, temp=0, max_tokens=2).run(io.StringIO("hi\n/reset\nhi\n"))
    assert out.getvalue().startswith("Mobile-O chat (tiny)")
    assert "(conversation reset)" in out.getvalue()


def test_chat_cli_checks_before_loading(capsys, tiny_ckpt_dir):
    from mlx_model.chat import main

    with pytest.raises(SystemExit) as e:
        main(["/no/such.png", "--model", str(tiny_ckpt_dir)])
    assert e.value.code == 2
    assert capsys.readouterr().err.startswith("error: image /no/such.png does not exist")
    with pytest.raises(SystemExit):
        main(["--model", str(tiny_ckpt_dir), "--temp", "-1"])
    assert "--temp must be >= 0" in capsys.readouterr().err


def test_low_memory_conversation_never_reloads_the_vision_tower(tiny_ckpt, photos):
    from mlx_model.pipelines.conversation import Conversation
    from mlx_model.pipelines.understanding import Understanding

    low = Understanding.from_checkpoint(tiny_ckpt, quantize=0, low_memory=True)
    chat = Conversation(low, photos[0])
    tokens(chat.ask("What is it?", temp=0, max_tokens=3))
    assert low.resident() == [] and low.parts["encoder"].loads == 1
    tokens(chat.ask("And then?", temp=0, max_tokens=3))
    assert low.parts["encoder"].loads == 1 and low.parts["llm"].loads == 2  # the KV cache outlives the LLM


def test_prompt_cache_of_a_model_without_layers_is_never_kept():
    """A stand-in LLM with no layers (the Swift goldens' fake) gives an empty cache list."""
    from mlx_model.pipelines.conversation import PromptCache

    pc = PromptCache()
    pc.cache, pc.keys = [], [1, 2]
    pc.record([1, 2, 3], [4])
    assert pc.cache is None and pc.keys == []


# ------------------------------------------------------------------ the REPL as mlx-lm's chat (issue 25)
STATS = r"\[(stopped; )?(\d+) tokens, [\d.]+ tokens/s; prompt [\d.]+ tokens/s; peak [\d.]+ GB\]"


def _answer_from_scratch(und, turns, image, **options) -> str:
    return "".join(r.text for r in und.stream_chat(turns, image=image, **options))


class _StopAfter(io.StringIO):
    """An output that raises KeyboardInterrupt on its ``n``-th write once armed: Ctrl-C while
    the REPL prints a token (the stream suspended at a yield)."""

    def __init__(self):
        super().__init__()
        self.left = None

    def write(self, s):
        if self.left is not None:
            self.left -= 1
            if self.left == 0:
                self.left = None
                raise KeyboardInterrupt
        return super().write(s)


@pytest.mark.parametrize("where", ["in the stream", "while printing"])
def test_ctrl_c_during_an_answer_keeps_the_session(mobileo, photos, monkeypatch, where):
    """The stopped answer stays in the history as far as it was shown; the next question
    continues the conversation, reuses the KV cache (image and first turn not recomputed) and
    answers exactly as a from-scratch prefill of the same history would."""
    from mlx_model.chat import ChatREPL

    und, out = mobileo.understanding, _StopAfter()
    repl = ChatREPL(mobileo, photos[0], out=out, temp=0, max_tokens=8)
    assert repl.handle("What is it?")
    first = list(repl.chat.turns)
    assert len(first) == 2

    if where == "in the stream":
        real = und.stream_chat

        def stream_chat(*a, **k):  # the interrupt raised from inside the token stream
            for i, r in enumerate(real(*a, **k)):
                if i == 3:
                    raise KeyboardInterrupt
                yield r

        monkeypatch.setattr(und, "stream_chat", stream_chat)
    else:
        out.left = 4  # print() writes a token, then its end: Ctrl-C while the second token is printed
    before = len(out.getvalue())
    assert repl.handle("Tell me more.")  # the chat goes on
    monkeypatch.undo()
    shown = out.getvalue()[before:]
    assert re.search(STATS, shown).group(1) == "stopped; "
    partial = shown[:shown.rindex("\n[stopped")].strip()
    assert partial  # the tiny model says something in three tokens
    assert repl.chat.turns == first + [("user", "Tell me more."), ("assistant", partial)]
    pc = repl.chat.cache
    assert pc.cache is not None and pc.cache[0].offset == len(pc.keys)  # in step: reusable

    answer = repl.ask("And then?")
    assert re.search(STATS, out.getvalue().splitlines()[-1]).group(1) is None
    assert pc.reused > und.chat_prompt(first[:1]).image_positions().stop  # image and turn 1 reused
    assert repl.chat.turns[-2:] == [("user", "And then?"), ("assistant", answer.strip())]
    assert answer == _answer_from_scratch(und, repl.chat.turns[:-1], und.encoder.pixels(photos[0])[0],
                                          temp=0, max_tokens=8)


def test_ctrl_c_before_the_first_word_drops_the_question(mobileo, photos, monkeypatch):
    from mlx_model.chat import ChatREPL

    def stream_chat(*a, **k):
        raise KeyboardInterrupt  # during the prefill
        yield

    repl = ChatREPL(mobileo, photos[0], out=io.StringIO(), temp=0, max_tokens=4)
    monkeypatch.setattr(mobileo.understanding, "stream_chat", stream_chat)
    assert repl.handle("What is it?")
    monkeypatch.undo()
    assert repl.chat.turns == [] and "[stopped; 0 tokens]" in repl.out.getvalue()
    assert repl.ask("What is it?")  # and the next question is answered


def test_ctrl_c_during_generate_keeps_the_session(mobileo, photos, monkeypatch):
    from mlx_model.chat import ChatREPL

    out = io.StringIO()
    repl = ChatREPL(mobileo, photos[0], out=out, temp=0, max_tokens=3)
    monkeypatch.setattr(repl, "generate", lambda prompt: (_ for _ in ()).throw(KeyboardInterrupt))
    assert repl.handle("/generate a cup") is True
    assert out.getvalue().endswith("(stopped)\n")


def test_each_answer_closes_with_mlx_lm_chats_statistics_line(mobileo, photos, monkeypatch):
    from mlx_model.chat import ChatREPL

    seen = []
    real = mobileo.understanding.stream_chat
    monkeypatch.setattr(mobileo.understanding, "stream_chat",
                        lambda *a, **k: (seen.append(r) or r for r in real(*a, **k)))
    out = io.StringIO()
    ChatREPL(mobileo, photos[0], out=out, temp=0, max_tokens=5).handle("What is it?")
    last = out.getvalue().splitlines()[-1]
    m = re.fullmatch(STATS, last)
    assert m and m.group(1) is None, last
    assert int(m.group(2)) == sum(r.token is not None for r in seen) == seen[-1].generation_tokens > 0


def test_chat_takes_understands_decoding_flags_and_they_reach_the_decoding(mobileo, tiny_ckpt_dir, monkeypatch,
                                                                            capsys):
    """One definition (``add_decoding_options``) for both commands; every flag arrives at
    ``stream_chat``, and a bad one fails before any weights are loaded."""
    from mlx_model import chat, understand
    from mlx_model.pipelines.mobileo import MobileO

    def decoding_flags(p):
        group = next(g for g in p._action_groups if g.title.startswith("decoding"))
        return sorted(s for a in group._group_actions for s in a.option_strings)

    assert decoding_flags(chat.parser()) == decoding_flags(understand.parser())
    assert {"--repetition-penalty", "--repetition-context-size", "--max-kv-size"} <= set(decoding_flags(chat.parser()))

    loads, calls = [], []
    monkeypatch.setattr(MobileO, "from_pretrained", lambda *a, **k: loads.append(1) or mobileo)
    real = mobileo.understanding.stream_chat
    monkeypatch.setattr(mobileo.understanding, "stream_chat", lambda *a, **k: calls.append(k) or real(*a, **k))
    monkeypatch.setattr("sys.stdin", io.StringIO("Hello?\n"))
    flags = ["--repetition-penalty", "1.3", "--repetition-context-size", "7", "--max-kv-size", "64",
             "--temp", "0.5", "--top-k", "5", "--top-p", "0.9", "--min-p", "0.05", "-m", "3", "--seed", "4"]
    chat.main(["--model", str(tiny_ckpt_dir)] + flags)
    assert len(calls) == 1
    assert {k: calls[0][k] for k in ("repetition_penalty", "repetition_context_size", "max_kv_size", "temp",
                                     "top_k", "top_p", "min_p", "max_tokens", "seed")} == dict(
        repetition_penalty=1.3, repetition_context_size=7, max_kv_size=64, temp=0.5, top_k=5, top_p=0.9,
        min_p=0.05, max_tokens=3, seed=4)
    assert re.search(STATS, capsys.readouterr().out)

    for bad, message in ((["--repetition-context-size", "0"], "--repetition-context-size must be at least 1"),
                         (["--max-kv-size", "3"], "--max-kv-size must be more than 4"),
                         (["--repetition-penalty", "-1"], "--repetition-penalty must be > 0")):
        with pytest.raises(SystemExit) as e:
            chat.main(["--model", str(tiny_ckpt_dir)] + bad)
        assert e.value.code == 2 and message in capsys.readouterr().err
    assert len(loads) == 1


class _Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.fixture
def imports(monkeypatch):
    """The names imported from now on, and a stand-in ``readline`` module (recording calls)."""
    import builtins
    import types

    names, calls = [], []
    real = builtins.__import__
    monkeypatch.setattr(builtins, "__import__", lambda name, *a, **k: names.append(name) or real(name, *a, **k))
    fake = types.ModuleType("readline")
    fake.read_history_file = lambda path: calls.append(("read", path))
    fake.set_history_length = lambda n: calls.append(("length", n))

    def write_history_file(path):
        calls.append(("write", path))
        with open(path, "w") as f:
            f.write("What is it?\n")

    fake.write_history_file = write_history_file
    monkeypatch.setitem(sys.modules, "readline", fake)
    return names, calls


def _typed(monkeypatch, keys):
    """``input()`` as a terminal user types: strings are lines, exception classes are keys."""
    import builtins

    keys = iter(keys)

    def fake_input(prompt=""):
        k = next(keys)
        if isinstance(k, type):
            raise k
        return k

    monkeypatch.setattr(builtins, "input", fake_input)
    return keys


def test_readline_is_imported_only_on_a_terminal(mobileo, photos, monkeypatch, imports, tmp_path):
    from mlx_model.chat import ChatREPL

    names, calls = imports
    ChatREPL(mobileo, photos[0], out=io.StringIO(), temp=0, max_tokens=2).run(io.StringIO("hi\n"))
    assert "readline" not in names

    out = io.StringIO()
    left = _typed(monkeypatch, [KeyboardInterrupt, "What is it?", KeyboardInterrupt, KeyboardInterrupt, "unread"])
    repl = ChatREPL(mobileo, photos[0], out=out, temp=0, max_tokens=2)
    repl.run(_Terminal())
    assert "readline" in names and calls == []  # line editing on, and no history file touched
    text = out.getvalue()
    assert text.count("(line cleared; Ctrl-C again or Ctrl-D to leave)") == 2  # a line between resets the count
    assert repl.chat.turns[0] == ("user", "What is it?") and list(left) == ["unread"]  # two in a row leave

    _typed(monkeypatch, ["/quit"])
    ChatREPL(mobileo, photos[0], out=io.StringIO(), history_file=tmp_path / "h").run(_Terminal())
    assert [c[0] for c in calls] == ["length", "write"]  # asked for: written (atomically, then renamed)
    assert (tmp_path / "h").read_text() == "What is it?\n" and sorted(p.name for p in tmp_path.iterdir()) == ["h"]
    _typed(monkeypatch, [EOFError])  # Ctrl-D leaves; the history file is read back
    ChatREPL(mobileo, photos[0], out=io.StringIO(), history_file=tmp_path / "h").run(_Terminal())
    assert calls[2] == ("read", str(tmp_path / "h"))


def test_history_file_comes_from_the_flag_or_the_environment(monkeypatch, tmp_path):
    from mlx_model import chat

    monkeypatch.delenv(chat.HISTORY_ENV, raising=False)
    assert chat.parser().parse_args([]).history_file is None
    monkeypatch.setenv(chat.HISTORY_ENV, str(tmp_path / "env"))
    assert chat.parser().parse_args([]).history_file == str(tmp_path / "env")
    assert chat.parser().parse_args(["--history-file", "x"]).history_file == "x"
