"""Multi-turn understanding (``mlx_model.pipelines.conversation``) and the ``mobileo-chat`` REPL, on the
tiny random checkpoint."""

import io

import numpy as np
import pytest
from PIL import Image

from weights.core.prompts import conversation_prompt, understanding_prompt

from metrics import rel_err


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
