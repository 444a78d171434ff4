"""Image editing: image + instruction through the LLM, last hidden states through the MCP into
the DiT, with the generation pipeline's sampler, decoder and command-line options."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mlx_model.support.image_settings import ImageSettings
from PIL import Image

import mlx.core as mx

from mlx_model import edit as edit_mod
from mlx_model.pipelines import generation as pipeline_mod
from mlx_model.pipelines.generation import GenerationPipeline
from metrics import rel_err, within

pytestmark = pytest.mark.torch

ROOT = Path(__file__).resolve().parents[1]
INSTRUCTION = "make it snowy"


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    import skimage.data as skdata
    path = tmp_path_factory.mktemp("img") / "chelsea.png"
    Image.fromarray(skdata.chelsea()).save(path)
    return path


@pytest.fixture(scope="module")
def pipe(tiny_ckpt):
    return GenerationPipeline.from_checkpoint(tiny_ckpt, quantize=0, edit=True)


def test_conditioning_matches_upstream_chain(pipe, tiny_ckpt, photo):
    """timm -> projector -> spliced into the editing prompt -> transformers Qwen2 hidden states
    -> (zeros, h) CFG batch -> the MCP reference, vs the pipeline's editing conditioning."""
    import torch
    from weights.references import mcp as mcp_reference, upstream

    cfg = tiny_ckpt.config
    pixels = pipe.encoder.pixels(photo)
    prompt = pipe.edit_prompt(INSTRUCTION)
    vision = upstream.build("vision", cfg, tiny_ckpt.load("vision"))
    proj = upstream.build("projector", cfg, tiny_ckpt.load("projector"))
    llm = upstream.build("llm", cfg, tiny_ckpt.load("llm"))
    mcp = mcp_reference.build(cfg.mcp, tiny_ckpt.load("mcp"))
    with torch.no_grad():
        feats = vision.forward_features(torch.from_numpy(pixels).permute(0, 3, 1, 2))
        image = proj(feats.flatten(2).transpose(1, 2))[0]
        before, after = (llm.model.embed_tokens(torch.tensor(p, dtype=torch.long)) for p in prompt.pieces)
        embeds = torch.cat([before, image, after])[None]
        hidden = llm(inputs_embeds=embeds, output_hidden_states=True).hidden_states[-cfg.mcp.num_layers:]
        ref = mcp([torch.cat([torch.zeros_like(h), h]) for h in hidden]).numpy()
    ours = pipe.encode_prompt(INSTRUCTION, pixels)
    assert ours.shape == ref.shape == (2, len(prompt), cfg.mcp.out_dim)
    err = rel_err(ours, ref)
    print(f"edit conditioning rel err {err:.2e}")
    within(err, at_most=1e-4)


def test_edit_reuses_the_generation_sampler(pipe, photo, monkeypatch):
    calls = []
    real = pipeline_mod.sample

    def spy(denoise, latents, scheduler):
        calls.append(type(scheduler).__name__)
        yield from real(denoise, latents, scheduler)

    monkeypatch.setattr(pipeline_mod, "sample", spy)
    out = pipe.edit(photo, ImageSettings(INSTRUCTION, steps=3, seed=0))
    assert calls == ["FlowDPMSolver"]
    size = pipe.config.image_size
    assert out.images.shape == (1, size, size, 3) and out.images.dtype == np.uint8
    assert out.prompt_tokens == len(pipe.edit_prompt(INSTRUCTION))


def test_edit_is_seeded_and_depends_on_image_and_instruction(pipe, photo):
    a = pipe.edit(photo, ImageSettings(INSTRUCTION, steps=2, seed=1)).images
    b = pipe.edit(photo, ImageSettings(INSTRUCTION, steps=2, seed=1)).images
    np.testing.assert_array_equal(a, b)
    ctx = pipe.encode_prompt(INSTRUCTION, photo)
    other_image = pipe.encode_prompt(INSTRUCTION, np.zeros((40, 60, 3), np.uint8))
    other_text = pipe.encode_prompt("make it red", photo)
    assert not np.allclose(np.array(ctx[1]), np.array(other_image[1]))
    assert other_text.shape != ctx.shape or not np.allclose(np.array(ctx[1]), np.array(other_text[1]))
    # row 0 is the unconditional branch: the MCP of zeros, whatever the input
    np.testing.assert_allclose(np.array(ctx[0, 0]), np.array(other_image[0, 0]), rtol=1e-5, atol=1e-6)


def test_edit_with_given_latents_equals_sampling_by_hand(pipe, photo):
    """Same initial latents -> the very loop of mlx_model.pipelines.generation.sample with the edit context."""
    shape = (1, *pipe.config.latent_shape)
    x0 = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    out = pipe.edit(photo, ImageSettings(INSTRUCTION, steps=3, guidance=1.5), latents=x0)
    ctx = pipe.encode_prompt(INSTRUCTION, photo)
    x = mx.array(x0)
    for x in pipeline_mod.sample(pipe.denoiser(ctx, 1.5, 1), x, pipe.scheduler("dpm", 3)):
        pass
    np.testing.assert_allclose(out.latents, np.array(x), rtol=1e-5, atol=1e-5)


def test_cli_options_are_the_generation_options():
    from mlx_model import generate

    def options(p):
        return {s for a in p._actions for s in a.option_strings}

    # plus mflux's --image-path for the image to edit
    assert options(edit_mod.parser()) == options(generate.parser()) | {"--image-path"}


def test_generation_loads_no_vision_and_edit_does(tiny_ckpt_dir):
    from weights.mapping.checkpoint import Checkpoint

    def loaded_by(**kw):
        ckpt = Checkpoint.open(tiny_ckpt_dir)
        ckpt.config
        seen = []
        real = ckpt.load
        ckpt.load = lambda component, keys=None: seen.append(component) or real(component, keys)
        GenerationPipeline.from_checkpoint(ckpt, quantize=0, **kw)
        return set(seen)

    assert not {"vision", "projector"} & loaded_by()
    assert {"vision", "projector", "llm", "mcp", "dit", "vae"} <= loaded_by(edit=True)


def test_editing_needs_the_image_encoder(tiny_ckpt, photo):
    from weights.core.errors import MobileOError

    with pytest.raises(MobileOError, match="edit=True"):
        GenerationPipeline.from_checkpoint(tiny_ckpt, quantize=0).encode_prompt(INSTRUCTION, photo)


def test_cli_writes_png_with_metadata(photo, tiny_ckpt_dir, tmp_path, capsys):
    from mlx_model.support.image_files import read_metadata as read_png_metadata

    out = tmp_path / "e.png"
    args = [str(photo), INSTRUCTION, "--model", str(tiny_ckpt_dir), "-q", "0", "--steps", "2", "--seed", "5",
            "--output", str(out)]
    edit_mod.main(args)
    edit_mod.main(args)  # never overwrites
    log = capsys.readouterr().out
    assert out.is_file() and (tmp_path / "e_1.png").is_file()
    assert "denoise" in log and "peak memory" in log
    meta = read_png_metadata(out)
    assert meta["task"] == "edit" and meta["instruction"] == INSTRUCTION and meta["seed"] == 5
    assert meta["image"] == str(photo)
    np.testing.assert_array_equal(np.asarray(Image.open(out)), np.asarray(Image.open(tmp_path / "e_1.png")))


@pytest.mark.parametrize("image, instruction, words", [
    ("missing.png", INSTRUCTION, "does not exist"), (None, " ", "instruction is empty")])
def test_cli_errors(photo, tiny_ckpt_dir, tmp_path, capsys, image, instruction, words):
    image = tmp_path / image if image else photo
    with pytest.raises(SystemExit) as e:
        edit_mod.main([str(image), instruction, "--model", str(tiny_ckpt_dir), "--output", str(tmp_path / "x.png")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and words in err and "Traceback" not in err
    assert not (tmp_path / "x.png").exists()


def test_module_entry_point_on_demo_model(photo, tmp_path):
    """End to end in a fresh process on ``--model demo`` (Mobile-O's defaults: 20 steps, guidance 1.5)."""
    env = dict(os.environ, MOBILEO_CACHE=str(tmp_path / "cache"))
    out = tmp_path / "edited.png"
    r = subprocess.run([sys.executable, "-m", "mlx_model.edit", str(photo), INSTRUCTION, "--model", "demo",
                        "--seed", "0", "--output", str(out)], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    img = np.asarray(Image.open(out))
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
    assert f"saved {out}" in r.stdout


def test_cli_mflux_flags(photo, tiny_ckpt_dir, tmp_path, capsys):
    """mflux's --image-path and --prompt, a non-square size, and a JPEG output."""
    from mlx_model.support.image_files import read_metadata

    common = ["--model", str(tiny_ckpt_dir), "-q", "0", "--steps", "2", "--seed", "3"]
    edit_mod.main([str(photo), INSTRUCTION, *common, "--output", str(tmp_path / "a.png")])
    edit_mod.main(["--image-path", str(photo), "--prompt", INSTRUCTION, *common, "--output", str(tmp_path / "b.png")])
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "a.png")), np.asarray(Image.open(tmp_path / "b.png")))
    edit_mod.main(["--image-path", str(photo), INSTRUCTION, *common, "--width", "96", "--output",
                   str(tmp_path / "c.jpg")])
    assert Image.open(tmp_path / "c.jpg").size == (96, 64)
    meta = read_metadata(tmp_path / "c.jpg")
    assert meta["task"] == "edit" and meta["image"] == str(photo) and meta["size"] == [64, 96]
    edit_mod.main(["--config-from-metadata", str(tmp_path / "b.png"), "--output", str(tmp_path / "d.png")])
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "a.png")), np.asarray(Image.open(tmp_path / "d.png")))
    capsys.readouterr()
