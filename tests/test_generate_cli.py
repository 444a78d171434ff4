"""``python -m mlx_model.generate``: outputs, metadata, no torch, clear one-line errors."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mlx_model.support.image_settings import ImageSettings

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = ("torch", "transformers", "diffusers", "timm", "coremltools")


def run(args, tmp_path, code=None, env_extra=None):
    env = dict(os.environ, MOBILEO_CACHE=str(tmp_path / "cache"), PYTHONPATH=str(ROOT))
    env.update(env_extra or {})
    cmd = [sys.executable, "-c", code] if code else [sys.executable, "-m", "mlx_model.generate", *args]
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


def test_demo_on_fresh_cache_without_torch(tmp_path):
    """Fresh machine: empty cache, demo checkpoint written on first use; torch never imported."""
    code = (
        "import sys, json\n"
        "from mlx_model.generate import main\n"
        "main(['a red cup', '--model', 'demo', '--seed', '0', '--metadata', '--steps', '4'])\n"
        f"print('MODULES=' + json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r})))\n"
    )
    r = run([], tmp_path, code=code)
    assert r.returncode == 0, r.stderr
    assert "MODULES=[]" in r.stdout, r.stdout
    img = tmp_path / "image.png"
    assert img.is_file() and (tmp_path / "image.json").is_file()
    from PIL import Image

    from mlx_model.support.image_files import read_metadata as read_png_metadata

    with Image.open(img) as im:
        assert im.size == (64, 64) and im.mode == "RGB"
    meta = read_png_metadata(img)
    assert meta["prompt"] == "a red cup" and meta["seed"] == 0 and meta["steps"] == 4
    assert meta["guidance"] == 1.5 and meta["quantize"] == 4
    assert json.loads((tmp_path / "image.json").read_text()) == meta
    closing = r.stdout.strip().splitlines()[-2]
    for word in ("load", "text", "denoise", "decode", "peak memory"):
        assert word in closing, closing


def test_cli_module_never_overwrites_and_reproduces(tmp_path):
    args = ["a red cup", "--model", "demo", "--seed", "5", "--steps", "3", "-q", "0", "--n-images", "2"]
    r = run(args, tmp_path)
    assert r.returncode == 0, r.stderr
    r2 = run(args, tmp_path)  # the same two again: names that still say the seed
    assert r2.returncode == 0, r2.stderr
    r3 = run(args[:-2], tmp_path)  # one image: the plain name
    assert r3.returncode == 0, r3.stderr
    names = sorted(p.name for p in tmp_path.glob("image*.png"))
    assert names == ["image.png", "image_seed_5.png", "image_seed_5_1.png", "image_seed_6.png", "image_seed_6_1.png"]
    from PIL import Image

    a = np.array(Image.open(tmp_path / "image.png"))
    c = np.array(Image.open(tmp_path / "image_seed_5_1.png"))
    np.testing.assert_array_equal(a, c)  # same seed, same first image


def test_latents_file_matches_python_api(tmp_path):
    from weights.loading.synthetic import tiny_config

    from mlx_model.generate import generate

    x0 = np.random.default_rng(0).standard_normal((1, *tiny_config().latent_shape)).astype(np.float32)
    np.save(tmp_path / "noise.npy", x0)
    r = run(["a red cup", "--model", "demo", "--latents", "noise.npy", "--steps", "3", "-q", "0",
             "--output", "cli.png"], tmp_path)
    assert r.returncode == 0, r.stderr
    os.environ["MOBILEO_CACHE"] = str(tmp_path / "cache")
    try:
        (path,) = generate(ImageSettings("a red cup", steps=3), model="demo", latents=tmp_path / "noise.npy", quantize=0,
                           output=tmp_path / "api.png", log=lambda _: None)
    finally:
        del os.environ["MOBILEO_CACHE"]
    from PIL import Image

    np.testing.assert_array_equal(np.array(Image.open(path)), np.array(Image.open(tmp_path / "cli.png")))


@pytest.mark.parametrize("args,needle", [
    (["", "--model", "demo"], "prompt is empty"),
    (["a red cup", "--model", "/no/such/model"], "does not exist"),
    (["a red cup", "--model", "demo", "--latents", "bad.npy"], "[1, 8, 8, 8]"),
    (["a red cup", "--model", "demo", "--latents", "missing.npy"], "does not exist"),
    (["a red cup", "--model", "demo", "--steps", "0"], "steps"),
])
def test_bad_input_is_one_clear_line(tmp_path, args, needle):
    np.save(tmp_path / "bad.npy", np.zeros((1, 4, 8, 8), np.float32))
    r = run(args, tmp_path)
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert needle in lines[0], lines[0]
    assert "Traceback" not in r.stderr


def test_too_long_prompt_is_clear(tmp_path):
    r = run(["word " * 600, "--model", "demo"], tmp_path)
    assert r.returncode == 2 and "the limit is 512" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_openblas_reexec(tmp_path):
    from mlx_model.support.platform import openblas_path

    if not sys.platform.startswith("linux") or openblas_path() is None:
        pytest.skip("no Debian OpenBLAS here")
    code = ("import os\nfrom mlx_model.support.platform import use_openblas\nuse_openblas()\n"
            "print('PRELOAD=' + os.environ.get('LD_PRELOAD', ''))\n")
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    r = subprocess.run([sys.executable, "-c", code], env=dict(env, PYTHONPATH=str(ROOT)),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert f"PRELOAD={openblas_path()}" in r.stdout


def test_unique_path(tmp_path):
    from mlx_model.support.image_files import output_paths, unique_path

    (tmp_path / "a.png").write_bytes(b"")
    assert unique_path(tmp_path / "a.png").name == "a_1.png"
    assert [p.name for p in output_paths(tmp_path / "a.png", 3)] == ["a_1.png", "a_2.png", "a_3.png"]
    assert unique_path(tmp_path / "b").name == "b.png"


def test_save_never_overwrites_a_file_that_appeared_meanwhile(tmp_path):
    """A name taken after the paths were chosen (another run) is skipped, not overwritten."""
    import numpy as np

    from mlx_model.support import image_files

    target = tmp_path / "image.png"
    target.write_bytes(b"someone else's")
    (tmp_path / "image_1.json").write_text("{}")  # a sidecar also blocks its name
    img = np.zeros((4, 4, 3), np.uint8)
    written = image_files.save_image(img, target, {"k": 1}, write_json=True)
    assert written == tmp_path / "image_2.png"
    assert target.read_bytes() == b"someone else's"
    assert image_files.read_metadata(written) == {"k": 1} and (tmp_path / "image_2.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["image.png", "image_1.json", "image_2.json", "image_2.png"]


# ---------------------------------------------------------------------- mflux's flags (issue #14)


def _gen(tmp_path, *args, model=None):
    from mlx_model.generate import main

    main(["--model", str(model), "--steps", "2", "-q", "0", *map(str, args)])


def _pixels(path):
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im)


def test_prompt_flag_positional_and_stdin(tmp_path, tiny_ckpt_dir, capsys):
    _gen(tmp_path, "--prompt", "a red cup", "--seed", "4", "--output", tmp_path / "flag.png", model=tiny_ckpt_dir)
    _gen(tmp_path, "a red cup", "--seed", "4", "--output", tmp_path / "pos.png", model=tiny_ckpt_dir)
    np.testing.assert_array_equal(_pixels(tmp_path / "flag.png"), _pixels(tmp_path / "pos.png"))
    r = subprocess.run([sys.executable, "-m", "mlx_model.generate", "-p", "-", "--model", str(tiny_ckpt_dir),
                        "--steps", "2", "-q", "0", "--seed", "4", "--output", "stdin.png"], input="a red cup\n",
                       cwd=tmp_path, capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert r.returncode == 0, r.stderr
    from mlx_model.support.image_files import read_metadata

    assert read_metadata(tmp_path / "stdin.png")["prompt"] == "a red cup"  # the trailing newline dropped
    with pytest.raises(SystemExit):
        _gen(tmp_path, "a cup", "--prompt", "a bowl", model=tiny_ckpt_dir)
    assert "given twice" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _gen(tmp_path, model=tiny_ckpt_dir)
    assert "no prompt given" in capsys.readouterr().err


def test_several_seeds_one_image_each_named_by_seed(tmp_path, tiny_ckpt_dir):
    from mlx_model.support.image_files import read_metadata

    _gen(tmp_path, "a red cup", "--seed", "7", "3", "11", "--output", tmp_path / "cup.png", model=tiny_ckpt_dir)
    assert sorted(p.name for p in tmp_path.glob("cup*.png")) == ["cup_seed_11.png", "cup_seed_3.png",
                                                                  "cup_seed_7.png"]
    assert [read_metadata(tmp_path / f"cup_seed_{s}.png")["seed"] for s in (7, 3, 11)] == [7, 3, 11]
    _gen(tmp_path, "a red cup", "--seed", "3", "--output", tmp_path / "alone.png", model=tiny_ckpt_dir)
    np.testing.assert_array_equal(_pixels(tmp_path / "cup_seed_3.png"), _pixels(tmp_path / "alone.png"))


def test_width_and_height(tmp_path, tiny_ckpt_dir):
    from mlx_model.support.image_files import read_metadata

    _gen(tmp_path, "a red cup", "--seed", "0", "--width", "96", "--height", "48", "--output", tmp_path / "w.png",
         model=tiny_ckpt_dir)
    assert _pixels(tmp_path / "w.png").shape == (48, 96, 3)
    meta = read_metadata(tmp_path / "w.png")
    assert meta["size"] == [48, 96]


def test_stepwise_images_end_on_the_final_image(tmp_path, tiny_ckpt_dir):
    _gen(tmp_path, "a red cup", "--seed", "2", "--steps", "3", "--stepwise-image-output-dir", tmp_path / "steps",
         "--output", tmp_path / "final.png", model=tiny_ckpt_dir)
    names = sorted(p.name for p in (tmp_path / "steps").iterdir())
    assert names == [f"final_seed_2_step{i}of3.png" for i in (1, 2, 3)]
    np.testing.assert_array_equal(_pixels(tmp_path / "steps" / names[-1]), _pixels(tmp_path / "final.png"))


def test_metadata_for_other_tools(tmp_path, tiny_ckpt_dir):
    """AUTOMATIC1111's ``parameters`` text, the full JSON under our key, tool version and model hash."""
    from PIL import Image

    from mlx_model.support.image_files import METADATA_KEY, model_hash, tool_version

    _gen(tmp_path, "a red cup, on a table", "--seed", "5", "--output", tmp_path / "m.png", model=tiny_ckpt_dir)
    with Image.open(tmp_path / "m.png") as im:
        text, meta = im.text["parameters"], json.loads(im.text[METADATA_KEY])
    prompt, line = text.split("\n")
    assert prompt == "a red cup, on a table"
    assert line.startswith("Steps: 2, Sampler: DPM++ 2M, CFG scale: 1.5, Seed: 5, Size: 64x64, Model hash: ")
    assert line.endswith(f"Version: mobileo-deploy {tool_version()}")
    assert meta["version"] == tool_version() and meta["model_hash"] == model_hash(tiny_ckpt_dir)
    assert len(meta["model_hash"]) == 10 and meta["model_revision"] is None


def test_model_revision_of_a_hub_snapshot():
    from mlx_model.support.image_files import model_revision

    sha = "a" * 40
    assert model_revision(f"/c/hub/models--A--B/snapshots/{sha}/final_merged_model_23620") == sha
    assert model_revision("/some/local/folder") is None


def test_config_from_metadata_reproduces_a_run(tmp_path, tiny_ckpt_dir):
    from mlx_model.support.image_files import read_metadata

    _gen(tmp_path, "a red cup", "--seed", "9", "--width", "48", "--guidance", "2.5", "--scheduler", "euler",
         "--output", tmp_path / "first.webp", model=tiny_ckpt_dir)
    from mlx_model.generate import main

    main(["--config-from-metadata", str(tmp_path / "first.webp"), "--output", str(tmp_path / "again.png")])
    first, again = read_metadata(tmp_path / "first.webp"), read_metadata(tmp_path / "again.png")
    for key in ("prompt", "seed", "steps", "guidance", "scheduler", "size", "quantize", "model"):
        assert first[key] == again[key], key
    _gen(tmp_path, "a red cup", "--seed", "9", "--width", "48", "--guidance", "2.5", "--scheduler", "euler",
         "--output", tmp_path / "first.png", model=tiny_ckpt_dir)
    np.testing.assert_array_equal(_pixels(tmp_path / "first.png"), _pixels(tmp_path / "again.png"))
    main(["--config-from-metadata", str(tmp_path / "again.png"), "--steps", "3", "--output", str(tmp_path / "o.png")])
    assert read_metadata(tmp_path / "o.png")["steps"] == 3  # a flag given now wins


def test_console_scripts_point_at_main_functions():
    import importlib

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert {"mobileo-generate", "mobileo-understand", "mobileo-edit", "mobileo-convert", "mobileo-coreml",
            "mobileo-validate"} <= set(scripts)
    for name, target in scripts.items():
        module, func = target.split(":")
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name != module:
                raise
            continue  # mlx_model.convert is being written in another change
        assert callable(getattr(mod, func)), name


def test_keep_freed_memory_makes_glibc_reuse_freed_blocks(monkeypatch):
    """platform.keep_freed_memory: a 64 MB temporary made and freed 20 times is page-faulted
    (zero-filled by the kernel) once, not 20 times; and the commands' start-up calls it."""
    from mlx_model import cli_common
    from mlx_model.support import platform as ours
    import platform as host

    if not sys.platform.startswith("linux") or host.libc_ver()[0] != "glibc":
        pytest.skip("glibc's mallopt: Linux only")
    code = ("import resource, sys\nimport mlx.core as mx\n"
            "from mlx_model.support.platform import keep_freed_memory\n"
            "if sys.argv[1] == 'keep':\n    assert keep_freed_memory()\n"
            "x = mx.ones((4096, 4096)); mx.eval(x)\n"
            "def once():\n    y = x * 2\n    mx.eval(y)\n    del y\n"
            "once()\nf0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
            "for _ in range(20):\n    once()\n"
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_TUNABLES"))}
    faults = {}
    for mode in ("default", "keep"):
        r = subprocess.run([sys.executable, "-c", code, mode], env=dict(env, PYTHONPATH=str(ROOT)),
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        faults[mode] = int(r.stdout.split()[-1])
    pages = 20 * 64 * 2**20 // 4096  # 20 temporaries of 64 MB in 4 KB pages
    assert faults["default"] > pages // 2, faults  # glibc's default: a fresh mmap each time
    assert faults["keep"] < pages // 20, faults
    calls = []
    monkeypatch.setattr(ours, "use_openblas", lambda argv=None: calls.append("openblas"))
    monkeypatch.setattr(ours, "keep_freed_memory", lambda: calls.append("malloc"))
    monkeypatch.setattr(sys, "argv", ["mobileo-generate", "--help"])
    with pytest.raises(SystemExit):
        cli_common.run_command(cli_common.argparse.ArgumentParser(), lambda *a: None)
    assert calls == ["openblas", "malloc"]
