"""``python -m mlx_model.understand IMAGE "question"`` on the tiny random checkpoint."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from mlx_model.understand import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    import skimage.data as skdata
    path = tmp_path_factory.mktemp("img") / "coffee.png"
    Image.fromarray(skdata.coffee()).save(path)
    return path


def run_main(capsys, *args):
    main([str(a) for a in args])
    return capsys.readouterr()


def test_streams_answer_and_mlx_lm_summary(capsys, photo, tiny_ckpt_dir, tiny_ckpt):
    out = run_main(capsys, photo, "What is this?", "--model", tiny_ckpt_dir, "-q", "0",
                   "--max-tokens", "8", "--temp", "0").out
    lines = out.splitlines()
    assert lines[0] == "=" * 10
    assert "=" * 10 in lines[1:]
    from mlx_model.pipelines.understanding import Understanding

    n_prompt = len(Understanding.from_checkpoint(tiny_ckpt).prompt("What is this?"))
    assert re.search(rf"^Prompt: {n_prompt} tokens, [\d.]+ tokens-per-sec$", out, re.M)
    assert re.search(r"^Generation: \d+ tokens, [\d.]+ tokens-per-sec$", out, re.M)
    assert re.search(r"^Peak memory: [\d.]+ GB$", out, re.M)
    assert lines[-1].startswith("Peak memory:")


def test_greedy_cli_is_deterministic_and_matches_api(capsys, photo, tiny_ckpt_dir, tiny_ckpt):
    from mlx_model.pipelines.understanding import Understanding

    args = (photo, "Describe the image.", "--model", tiny_ckpt_dir, "-q", "0", "--max-tokens", "6", "--temp", "0")
    a = run_main(capsys, *args).out
    b = run_main(capsys, *args).out
    body = lambda s: s.split("=" * 10)[1]  # noqa: E731
    assert body(a) == body(b)
    api = Understanding.from_checkpoint(tiny_ckpt, quantize=0).answer(str(photo), "Describe the image.", max_tokens=6, temp=0)
    assert body(a)[1:-1].strip() == api  # the streamed text, stripped as Mobile-O's answer is


def test_seeded_sampling_cli(capsys, photo, tiny_ckpt_dir):
    args = (photo, "Describe the image.", "--model", tiny_ckpt_dir, "-q", "0", "--max-tokens", "6",
            "--seed", "7", "--top-p", "0.9")
    assert run_main(capsys, *args).out.split("=" * 10)[1] == run_main(capsys, *args).out.split("=" * 10)[1]


def _error(capsys, *args) -> str:
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in args])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err and err.count("\n") == 1
    return err


def test_missing_image(capsys, tmp_path, tiny_ckpt_dir):
    err = _error(capsys, tmp_path / "nope.jpg", "What?", "--model", tiny_ckpt_dir)
    assert "does not exist" in err


def test_unreadable_image(capsys, tmp_path, tiny_ckpt_dir):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    assert "cannot read image" in _error(capsys, bad, "What?", "--model", tiny_ckpt_dir)


@pytest.mark.parametrize("args, words", [
    (("--top-p", "0"), "--top-p"), (("--temp", "-1"), "--temp"), (("--max-tokens", "0"), "--max-tokens")])
def test_bad_decoding_options(capsys, photo, tiny_ckpt_dir, args, words):
    assert words in _error(capsys, photo, "What?", "--model", tiny_ckpt_dir, *args)


def test_empty_question(capsys, photo, tiny_ckpt_dir):
    assert "question is empty" in _error(capsys, photo, "  ", "--model", tiny_ckpt_dir)


def test_module_entry_point_on_demo_model(photo, tmp_path):
    """The real command line, in a fresh process, on ``--model demo``."""
    env = dict(os.environ, MOBILEO_CACHE=str(tmp_path / "cache"))
    r = subprocess.run([sys.executable, "-m", "mlx_model.understand", str(photo), "What is it?", "--model", "demo",
                        "--max-tokens", "5", "--temp", "0"], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    assert re.search(r"^Generation: \d+ tokens", r.stdout, re.M)
    assert "Prompt:" in r.stdout and "Peak memory:" in r.stdout


# ---------------------------------------------------------------------- mlx-lm's conventions (issue #14)


def _body(out: str) -> str:
    return out.split("=" * 10)[1]


def test_greedy_by_default_and_help_names_mobileo_setting(capsys, photo, tiny_ckpt_dir):
    from mlx_model.understand import CLI_DEFAULTS, parser
    from weights.core.configs import GenerationDefaults

    assert CLI_DEFAULTS.temperature == 0 and GenerationDefaults().temperature == 0.8  # library keeps Mobile-O's
    base = (photo, "Describe the image.", "--model", tiny_ckpt_dir, "-q", "0", "--max-tokens", "6")
    a, b = run_main(capsys, *base).out, run_main(capsys, *base).out
    assert _body(a) == _body(b) == _body(run_main(capsys, *base, "--temp", "0").out)
    assert "--temp 0.8 --top-k 50" in " ".join(parser().format_help().split())


def test_mlx_lm_decoding_flags(capsys, photo, tiny_ckpt_dir, tiny_ckpt):
    from mlx_model.pipelines.understanding import Understanding

    args = (photo, "Describe the image.", "--model", tiny_ckpt_dir, "-q", "0", "--max-tokens", "6", "--seed", "1",
            "--temp", "0.9", "--top-k", "20", "--min-p", "0.05", "--repetition-penalty", "1.3",
            "--repetition-context-size", "8", "--max-kv-size", "64")
    out = run_main(capsys, *args).out
    assert _body(out) == _body(run_main(capsys, *args).out)  # seeded
    m = Understanding.from_checkpoint(tiny_ckpt, quantize=0)
    default_len = len(m.prompt("Describe the image."))
    sys_out = run_main(capsys, *args, "--system-prompt", "Answer in one short word please.").out
    n = int(re.search(r"^Prompt: (\d+) tokens", sys_out, re.M).group(1))
    assert n == len(m.prompt("Describe the image.", "Answer in one short word please.")) != default_len


def test_repetition_penalty_is_mlx_lms(tiny_ckpt, photo):
    """A huge penalty over the whole answer: greedy decoding never repeats a token."""
    from mlx_model.pipelines.understanding import Understanding

    m = Understanding.from_checkpoint(tiny_ckpt, quantize=0)
    tokens = [r.token for r in m.stream(str(photo), "Describe the image.", max_tokens=12, temp=0,
                                        repetition_penalty=1e9, repetition_context_size=64, stop_at_eos=False)
              if r.token is not None]
    assert len(tokens) == 12 and len(set(tokens)) == 12
    plain = [r.token for r in m.stream(str(photo), "Describe the image.", max_tokens=12, temp=0,
                                       stop_at_eos=False) if r.token is not None]
    assert len(set(plain)) < 12  # the random tiny model does repeat itself without it


def test_answer_is_bounded_by_the_context(capsys, photo, tiny_ckpt_dir, tiny_ckpt):
    context = tiny_ckpt.config.llm.max_position_embeddings
    err = _error(capsys, photo, "What?", "--model", tiny_ckpt_dir, "--max-tokens", "100000")
    assert f"context of {context} tokens" in err and "--max-tokens" in err
    assert capsys.readouterr().out == ""


def test_image_and_prompt_flags(capsys, photo, tiny_ckpt_dir):
    base = ("--model", tiny_ckpt_dir, "-q", "0", "--max-tokens", "4")
    a = run_main(capsys, photo, "What is it?", *base).out
    b = run_main(capsys, "--image", photo, "--prompt", "What is it?", *base).out
    c = run_main(capsys, "--image", photo, "What is it?", *base).out
    assert _body(a) == _body(b) == _body(c)
