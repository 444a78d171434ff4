"""Issue #14's bad input, one test per case: each ends in one ``error: … Fix: …`` line on
stderr, exit code 2, nothing on stdout that looks like a result, and no file written."""

import json
import math
import os
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mlx_model import cli_common as cc
from mlx_model.support import image_files
from mlx_model import edit as edit_mod
from mlx_model import generate as generate_mod
from mlx_model import understand as understand_mod
from weights.core.errors import MobileOError


def fails(capsys, main, *args) -> str:
    """Run a CLI in-process; it must exit 2 with one ``error: … Fix: …`` line and print nothing."""
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in args])
    out, err = capsys.readouterr()
    assert e.value.code == 2, (out, err)
    assert err.count("\n") == 1 and err.startswith("error: ") and " Fix: " in err, err
    assert "Traceback" not in err and "Warning" not in err
    assert out == "", out
    return err


def files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.fixture()
def run_gen(capsys, tiny_ckpt_dir, tmp_path):
    def run(*args):
        before = files(tmp_path)
        err = fails(capsys, generate_mod.main, "a red cup", "--model", tiny_ckpt_dir, "--steps", "2", *args)
        assert files(tmp_path) == before, "a failed run left files behind"
        return err

    return run


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 64, 3), np.uint8)).save(path)
    return path


# ---------------------------------------------------------------------- --guidance nan


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_guidance_not_finite(run_gen, tmp_path, value):
    err = run_gen(f"--guidance={value}", "--output", tmp_path / "x.png")
    assert "--guidance must be a finite number" in err


def test_metadata_is_strict_json(tmp_path):
    """What is written is JSON any parser reads: NaN/Infinity cannot get in."""
    img = np.zeros((8, 8, 3), np.uint8)
    path = image_files.save_image(img, tmp_path / "a.png", {"guidance": 1.5, "seed": 3}, write_json=True)

    def strict(text):
        return json.loads(text, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))

    with Image.open(path) as im:
        assert strict(im.text[image_files.METADATA_KEY]) == {"guidance": 1.5, "seed": 3}
    assert strict((tmp_path / "a.json").read_text())["seed"] == 3
    with pytest.raises(ValueError):
        image_files.save_image(img, tmp_path / "b.png", {"guidance": math.nan})
    assert not (tmp_path / "b.png").exists()


# ---------------------------------------------------------------------- --seed -1, 20 digits


@pytest.mark.parametrize("seed", ["-1", "99999999999999999999", "123456789012345678901234"])
def test_seed_out_of_range(run_gen, tmp_path, seed):
    err = run_gen("--seed", seed, "--output", tmp_path / "x.png")
    assert f"--seed {seed} is out of range" in err and "18446744073709551615" in err


def test_seed_range_counts_n_images(run_gen, tmp_path):
    err = run_gen("--seed", str(2**64 - 1), "--n-images", "2", "--output", tmp_path / "x.png")
    assert "out of range" in err and "seed + 1" in err


def test_understand_seed_out_of_range(capsys, photo, tiny_ckpt_dir):
    assert "out of range" in fails(capsys, understand_mod.main, photo, "What?", "--model", tiny_ckpt_dir,
                                   "--seed", "-1")


# ---------------------------------------------------------------------- --output


def test_output_is_an_existing_folder(run_gen, tmp_path):
    (tmp_path / "out").mkdir()
    err = run_gen("--output", tmp_path / "out")
    assert "is a folder" in err and str(tmp_path / "out" / "image.png") in err
    assert not (tmp_path / "out.png").exists()


def test_output_folder_with_trailing_slash(run_gen, tmp_path):
    assert "is a folder" in run_gen("--output", f"{tmp_path}/new/")


@pytest.mark.parametrize("name", ["x.gif", "x.txt", "x.tiff"])
def test_output_format_not_writable(run_gen, tmp_path, name):
    err = run_gen("--output", tmp_path / name)
    assert f"cannot write {Path(name).suffix} images" in err and ".png, .jpg or .webp" in err


@pytest.mark.parametrize("name, magic", [("photo.jpg", b"\xff\xd8\xff"), ("photo.jpeg", b"\xff\xd8\xff"),
                                         ("out.webp", b"RIFF"), ("out.png", b"\x89PNG")])
def test_output_format_follows_the_extension(capsys, tiny_ckpt_dir, tmp_path, name, magic):
    generate_mod.main(["a red cup", "--model", str(tiny_ckpt_dir), "--steps", "2", "--seed", "1", "-q", "0",
                       "--output", str(tmp_path / name)])
    data = (tmp_path / name).read_bytes()
    assert data.startswith(magic)
    if name.endswith("webp"):
        assert data[8:12] == b"WEBP"
    meta = image_files.read_metadata(tmp_path / name)
    assert meta["seed"] == 1 and meta["prompt"] == "a red cup"


def test_output_under_a_file_names_the_users_path(run_gen, tmp_path):
    (tmp_path / "file.txt").write_text("x")
    err = run_gen("--output", tmp_path / "file.txt" / "x.png")
    assert str(tmp_path / "file.txt") in err and "not a folder" in err and ".partial" not in err


def test_unwritable_output_error_names_the_users_path(tmp_path, monkeypatch):
    """A write that fails late (permissions, full disk) names the user's file, not the temp file."""
    real_open = os.open

    def deny(path, flags, mode=0o777, **kw):
        if str(path).endswith(".partial"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, mode, **kw)

    monkeypatch.setattr(cc.os, "open", deny)
    target = tmp_path / "mine.png"
    with pytest.raises(MobileOError) as e:
        image_files.save_image(np.zeros((4, 4, 3), np.uint8), target, {"k": 1})
    text = str(e.value)
    assert str(target) in text and "Permission denied" in text and ".partial" not in text and "Fix:" in text
    assert files(tmp_path) == []


@pytest.mark.skipif(os.geteuid() == 0 if hasattr(os, "geteuid") else True, reason="root writes anywhere")
def test_read_only_folder(run_gen, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        assert "is not writable" in run_gen("--output", ro / "x.png")
    finally:
        ro.chmod(0o700)


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_outputs_follow_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        path = image_files.save_image(np.zeros((4, 4, 3), np.uint8), tmp_path / "a.png", {"k": 1}, write_json=True)
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == mode
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == mode


# ---------------------------------------------------------------------- input images


def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose header declares ``width`` x ``height`` (enough for Pillow to judge its size)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16))
                     + chunk(b"IEND", b""))
    return path


def test_196_megapixels_says_to_downscale(capsys, tmp_path, tiny_ckpt_dir):
    big = _png_header_only(tmp_path / "big.png", 14000, 14000)
    err = fails(capsys, understand_mod.main, big, "What?", "--model", tiny_ckpt_dir)
    assert "14000x14000 (196 megapixels)" in err and "downscale" in err
    assert "valid image file" not in err
    err = fails(capsys, edit_mod.main, big, "make it blue", "--model", tiny_ckpt_dir, "--output", tmp_path / "e.png")
    assert "196 megapixels" in err and not (tmp_path / "e.png").exists()


def test_100_megapixels_reads_without_a_raw_warning(tmp_path):
    """Between Pillow's warning (89 MP) and its limit (179 MP): read quietly, at full size."""
    from mlx_model.support.preprocess import load_image

    path = tmp_path / "big.jpg"
    Image.new("RGB", (10000, 10000), (10, 20, 30)).save(path, quality=50)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning fails the test
        img = load_image(path)
    assert img.size == (10000, 10000) and img.mode == "RGB"


def test_over_the_warning_threshold_on_the_command_line(capsys, photo, tiny_ckpt_dir, monkeypatch):
    """The same at a small scale through the whole command: no warning text reaches stderr."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 48 * 64 - 1)  # photo is just above the warning level
    understand_mod.main([str(photo), "What?", "--model", str(tiny_ckpt_dir), "-q", "0", "--max-tokens", "2"])
    out, err = capsys.readouterr()
    assert "Warning" not in err and "Generation:" in out


@pytest.mark.parametrize("url", ["https://example.com/cat.jpg", "http://x/y.png", "s3://bucket/key.png"])
def test_url_is_not_a_missing_file(capsys, tiny_ckpt_dir, url):
    err = fails(capsys, understand_mod.main, url, "What?", "--model", tiny_ckpt_dir)
    assert "is a URL" in err and "download it first" in err and "does not exist" not in err


def test_image_folder_is_named_as_a_folder(capsys, tmp_path, tiny_ckpt_dir):
    assert "is a folder" in fails(capsys, understand_mod.main, tmp_path, "What?", "--model", tiny_ckpt_dir)


# ---------------------------------------------------------------------- prompts and the hub


@pytest.mark.parametrize("question", ["What <image> is this?", "<image>", "a<image>b<image>"])
def test_second_image_placeholder_before_any_output(capsys, photo, tiny_ckpt_dir, question):
    err = fails(capsys, understand_mod.main, photo, question, "--model", tiny_ckpt_dir)  # stdout stays empty
    assert "<image>" in err


def test_placeholder_in_edit_instruction(capsys, photo, tiny_ckpt_dir, tmp_path):
    err = fails(capsys, edit_mod.main, photo, "make <image> blue", "--model", tiny_ckpt_dir,
                "--output", tmp_path / "e.png")
    assert "<image>" in err


def test_hub_login_hint_is_the_installed_command(monkeypatch, tmp_path):
    import shutil
    import sys

    from weights.core.errors import ModelNotFoundError
    from weights.loading.hub import resolve_model

    import huggingface_hub

    def unreachable(*a, **kw):  # what a network failure looks like, without touching the network
        raise OSError("connection refused")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", unreachable)
    with pytest.raises(ModelNotFoundError) as e:
        resolve_model("someone/some-model")
    assert "hf auth login" in str(e.value) and "huggingface-cli" not in str(e.value)
    hf = shutil.which("hf", path=str(Path(sys.executable).parent)) or shutil.which("hf")
    assert hf, "huggingface_hub's `hf` command is not installed"


# ---------------------------------------------------------------------- issue 26: the last CLI slips


def test_positional_prompt_after_seed(tiny_ckpt_dir, tmp_path, capsys):
    out = tmp_path / "x.png"
    generate_mod.main(["--model", str(tiny_ckpt_dir), "-q", "0", "--steps", "1", "--seed", "1", "a red cup",
                       "--output", str(out)])
    meta = image_files.read_metadata(out)
    assert (meta["prompt"], meta["seed"]) == ("a red cup", 1)
    out2 = tmp_path / "y.png"
    generate_mod.main(["--model", str(tiny_ckpt_dir), "-q", "0", "--steps", "1", "--seed", "1", "2", "a red cup",
                       "--output", str(out2)])
    assert sorted(p.name for p in tmp_path.glob("y_seed_*.png")) == ["y_seed_1.png", "y_seed_2.png"]
    capsys.readouterr()
    err = fails(capsys, generate_mod.main, "a cup", "--model", tiny_ckpt_dir, "--seed", "1", "extra words")
    assert "unexpected argument 'extra words' after --seed" in err


def test_edit_image_and_instruction_after_seed(photo, tiny_ckpt_dir, tmp_path, monkeypatch, capsys):
    """--seed 1 photo.jpg blue; the metadata stores the image's absolute path, so
    --config-from-metadata reproduces it from any folder."""
    monkeypatch.chdir(photo.parent)
    out = tmp_path / "sub" / "e.png"
    out.parent.mkdir()
    edit_mod.main(["--model", str(tiny_ckpt_dir), "-q", "0", "--steps", "1", "--seed", "1", photo.name,
                   "make it blue", "--output", str(out)])
    meta = image_files.read_metadata(out)
    assert meta["instruction"] == "make it blue" and meta["image"] == str(photo.resolve())
    monkeypatch.chdir(tmp_path / "sub")
    edit_mod.main(["--config-from-metadata", "e.png", "--output", "again.png"])
    with Image.open(out) as a, Image.open(tmp_path / "sub" / "again.png") as b:
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("flag, words", [("-m", "use --model"), ("--auto-seeds", "--n-images"),
                                         ("--negative-prompt", "no negative prompt")])
def test_mflux_flags_say_what_to_use(capsys, flag, words):
    err = fails(capsys, generate_mod.main, "a cup", flag, "x")
    assert f"has no {flag} option" in err and words in err, err


@pytest.mark.parametrize("target", ["/dev/full", "/dev/null"])
def test_special_files_refused_as_outputs(run_gen, target):
    assert "not a regular file" in run_gen("--output", target) or "/dev holds devices" in run_gen("--output", target)
    assert not Path(target + ".png").exists()


def test_n_images_names_carry_the_seed(tiny_ckpt_dir, tmp_path):
    out = tmp_path / "n.png"
    paths = generate_mod.main(["a cup", "--model", str(tiny_ckpt_dir), "-q", "0", "--steps", "1", "--n-images", "3",
                               "--seed", "5", "--output", str(out)])
    assert paths is None
    assert sorted(p.name for p in tmp_path.glob("n*.png")) == ["n_seed_5.png", "n_seed_6.png", "n_seed_7.png"]
    for p in tmp_path.glob("n*.png"):
        assert p.name == f"n_seed_{image_files.read_metadata(p)['seed']}.png"


@pytest.mark.parametrize("group", ["7", "0"])
def test_convert_group_size_limited_to_mlx(tmp_path, capsys, group):
    from mlx_model import convert as convert_mod

    with pytest.raises(SystemExit) as e:
        convert_mod.main(["--model", "demo", "--group-size", group, "--out", str(tmp_path / "m")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "Traceback" not in err and "32, 64, 128" in err, err
    assert not (tmp_path / "m").exists()
    with pytest.raises(MobileOError, match="is not one MLX quantizes with"):
        convert_mod.convert("demo", tmp_path / "m", 4, int(group))


def test_usage_lines_name_the_installed_commands():
    from coreml_convert import cli as coreml_cli
    from ios_bridge import validate
    from mlx_model import convert as convert_mod

    assert convert_mod.parser().format_usage().startswith("usage: mobileo-convert ")
    src = (Path(coreml_cli.__file__).read_text(), Path(validate.__file__).read_text())
    assert 'prog="mobileo-coreml"' in src[0] and 'prog="mobileo-validate"' in src[1]


def test_ctrl_c_while_starting_prints_no_traceback(tmp_path):
    """Ctrl-C while the command imports its modules, and later while it samples: "interrupted",
    exit 130, no traceback.  The signal is sent on an observed state, never after a guessed delay:
    on Linux, MLX's CPU backend runs ``g++`` through ``system()``, which ignores SIGINT in the
    caller while the compiler runs (POSIX), so a timed signal could fall into that window and be lost."""
    import signal
    import subprocess
    import sys
    import time

    cmd = [sys.executable, "-m", "mlx_model.generate", "a cup", "--model", "demo",
           "--steps", "500", "--width", "256", "--height", "256"]
    env = dict(os.environ, MOBILEO_CACHE=str(tmp_path / "cache"))

    def interrupted(p):
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=120)
        # 130, or killed by SIGINT (-2), which a shell also reports as 130: CPython ends that way when
        # a KeyboardInterrupt passed through code run by PyRun_* even though run_cli caught it
        assert p.returncode in (130, -signal.SIGINT), (p.returncode, err[-2000:])
        assert "Traceback" not in err and "interrupted" in err, err[-2000:]

    # 1. importing: -X importtime names each module as it is imported; weights.core.errors comes
    # after quiet_while_importing and long before the command's own handler
    p = subprocess.Popen([cmd[0], "-X", "importtime", *cmd[1:]], cwd=tmp_path, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=env)
    try:
        for line in p.stderr:
            if line.rstrip().endswith("weights.core.errors"):
                break
        else:
            raise AssertionError(f"the command ended before importing weights.core.errors (exit {p.wait()})")
        interrupted(p)
    finally:
        p.kill()

    # 2. sampling: once two step images are saved, every kernel is compiled and the loop runs
    steps = tmp_path / "steps"
    p = subprocess.Popen([*cmd, "--stepwise-image-output-dir", str(steps)], cwd=tmp_path,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 120
        while len(list(steps.glob("*.png"))) < 2:
            assert p.poll() is None and time.monotonic() < deadline, (p.poll(), p.stderr.read() if p.poll() is not None else "")
            time.sleep(0.05)
        interrupted(p)
    finally:
        p.kill()


def test_offline_hub_says_so_instead_of_asking_for_the_internet(monkeypatch, tmp_path):
    from weights.core.errors import ModelNotFoundError
    from weights.loading.hub import resolve_model

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(ModelNotFoundError) as e:
        resolve_model("someone/some-model")
    text = str(e.value)
    assert "HF_HUB_OFFLINE is set" in text and "unset HF_HUB_OFFLINE" in text and "internet" not in text, text
    assert "\n" not in text and "Fix:" in text


def test_a_file_missing_from_an_mlx_folder_is_named(capsys, tiny_ckpt_dir, tmp_path):
    import shutil

    from mlx_model import convert as convert_mod

    folder = tmp_path / "q4"
    convert_mod.main(["--model", str(tiny_ckpt_dir), "-q", "4", "--out", str(folder)])
    capsys.readouterr()
    (folder / "dit.safetensors").unlink()
    err = fails(capsys, generate_mod.main, "a red cup", "--model", folder, "-q", "4", "--steps", "1",
                "--output", tmp_path / "x.png")
    assert "dit.safetensors" in err and "the file is missing" in err and "RuntimeError" not in err, err
    shutil.rmtree(folder)
