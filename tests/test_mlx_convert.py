"""Pre-quantized MLX folders (`python -m mlx_model.convert`): written atomically, loaded with
mx.load, bit-identical to quantizing in memory, and a settings mismatch is one clear error."""

import json

import numpy as np
import pytest

from mlx_model.support.image_settings import ImageSettings

import mlx.core as mx

from mlx_model.convert import convert, main  # noqa: E402
from mlx_model.support.mlx_folder import MLXFolder, is_mlx_folder, open_model  # noqa: E402
from weights.core.errors import MobileOError, WeightsError  # noqa: E402

PROMPT = "a red cup"


@pytest.fixture(scope="module")
def q4_dir(tiny_ckpt_dir, tmp_path_factory):
    # group 32: the tiny widths (64) hold whole groups of 32 only
    return convert(str(tiny_ckpt_dir), tmp_path_factory.mktemp("mlx") / "q4", quantize=4, group_size=32,
                   log=lambda *_: None)


def test_folder_layout(q4_dir):
    assert is_mlx_folder(q4_dir)
    meta = json.loads((q4_dir / "config.json").read_text())["mobileo_mlx"]
    assert meta["quantization"] == {"bits": 4, "group_size": 32}
    for f in meta["files"].values():
        assert (q4_dir / f).is_file()
    assert (q4_dir / "tokenizer.json").is_file() and (q4_dir / "README.md").is_file()
    dit = mx.load(str(q4_dir / "dit.safetensors"))
    packed = [k for k in dit if k.endswith(".scales")]
    assert packed and dit[packed[0].replace(".scales", ".weight")].dtype == mx.uint32
    assert not list(q4_dir.parent.glob(".*partial"))


def test_round_trip_is_bit_identical(tiny_ckpt, q4_dir):
    from mlx_model.pipelines.generation import GenerationPipeline

    x0 = np.random.default_rng(0).standard_normal((1, *tiny_ckpt.config.latent_shape)).astype(np.float32)
    mem = GenerationPipeline.from_checkpoint(tiny_ckpt, quantize=4, group_size=32)
    disk = GenerationPipeline.from_checkpoint(open_model(str(q4_dir)), quantize=4, group_size=32)
    from mlx.utils import tree_flatten

    for a, b in ((mem.llm.model, disk.llm.model), (mem.dit, disk.dit), (mem.mcp, disk.mcp), (mem.vae, disk.vae)):
        pa, pb = dict(tree_flatten(a.parameters())), dict(tree_flatten(b.parameters()))
        assert pa.keys() == pb.keys()
        for k in pa:
            assert pa[k].dtype == pb[k].dtype and mx.array_equal(pa[k], pb[k]).item(), k
    ia = mem.generate(ImageSettings(PROMPT, steps=3), latents=x0).images
    ib = disk.generate(ImageSettings(PROMPT, steps=3), latents=x0).images
    np.testing.assert_array_equal(ia, ib)


def test_understanding_loads_the_folder(q4_dir):
    from mlx_model.pipelines.understanding import Understanding

    u = Understanding.from_pretrained(str(q4_dir), quantize=4)
    img = np.zeros((32, 32, 3), np.uint8)
    assert isinstance(u.answer(img, "What is it?", max_tokens=3, temp=0), str)


def test_other_settings_are_an_error_with_a_fix(q4_dir):
    from mlx_model.pipelines.generation import GenerationPipeline

    for q in (0, 8):
        with pytest.raises(WeightsError, match="4-bit, group 32") as e:
            GenerationPipeline.from_pretrained(str(q4_dir), quantize=q)
        assert "-q 4" in str(e.value)


def test_existing_out_is_refused_and_cli_errors_are_one_line(q4_dir, capsys):
    with pytest.raises(MobileOError, match="already exists"):
        convert("demo", q4_dir)
    with pytest.raises(SystemExit) as e:
        main(["--model", "demo", "--out", str(q4_dir)])
    assert e.value.code != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "Fix:" in err[0]


def test_folder_meta_version_is_checked(q4_dir, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(q4_dir, bad)
    raw = json.loads((bad / "config.json").read_text())
    raw["mobileo_mlx"]["version"] = 99
    (bad / "config.json").write_text(json.dumps(raw))
    with pytest.raises(WeightsError, match="convert"):
        MLXFolder.open(bad)
