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
    skdata = pytest.importorskip("skimage.data")
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
    from mlx_model.understanding import Understanding

    n_prompt = len(Understanding.from_checkpoint(tiny_ckpt).prompt("What is this?"))
    assert re.search(rf"^Prompt: {n_prompt} tokens, [\d.]+ tokens-per-sec$", out, re.M)
    assert re.search(r"^Generation: \d+ tokens, [\d.]+ tokens-per-sec$", out, re.M)
    assert re.search(r"^Peak memory: [\d.]+ GB$", out, re.M)
    assert lines[-1].startswith("Peak memory:")


def test_greedy_cli_is_deterministic_and_matches_api(capsys, photo, tiny_ckpt_dir, tiny_ckpt):
    from mlx_model.understanding import Understanding

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
