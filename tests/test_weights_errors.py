"""Bad input: each case raises a project error whose one line names the file/key and the fix."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from weights.mapping.checkpoint import INDEX_FILE, Checkpoint
from weights.core.errors import ConfigError, ModelNotFoundError, WeightsError
from weights.loading.hub import resolve_model
from weights.mapping.safetensors_io import SafetensorsFile, write_file


@pytest.fixture()
def ckpt_copy(tiny_ckpt_dir, tmp_path):
    dst = tmp_path / "m"
    shutil.copytree(tiny_ckpt_dir, dst)
    return dst


def _shard(folder, i=0):
    return sorted(folder.glob("model-*.safetensors"))[i]


def _one_line(err):
    text = str(err.value)
    assert "\n" not in text and "Fix:" in text
    return text


def test_missing_folder(tmp_path):
    with pytest.raises(WeightsError) as e:
        Checkpoint.open(tmp_path / "nope")
    _one_line(e)


def test_missing_config(ckpt_copy):
    (ckpt_copy / "config.json").unlink()
    with pytest.raises(WeightsError, match="config.json") as e:
        Checkpoint.open(ckpt_copy)
    _one_line(e)


def test_missing_shard(ckpt_copy):
    shard = _shard(ckpt_copy, 1)
    shard.unlink()
    with pytest.raises(WeightsError, match=shard.name) as e:
        Checkpoint.open(ckpt_copy)
    _one_line(e)


def test_truncated_shard(ckpt_copy):
    shard = _shard(ckpt_copy)
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) - 100])
    with pytest.raises(WeightsError, match="truncated") as e:
        Checkpoint.open(ckpt_copy)
    assert shard.name in _one_line(e)


def test_corrupt_header(ckpt_copy):
    shard = _shard(ckpt_copy)
    data = bytearray(shard.read_bytes())
    data[8:20] = b"\x00garbage!!\xff\xfe"
    shard.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="corrupt") as e:
        Checkpoint.open(ckpt_copy)
    assert shard.name in _one_line(e)


def test_not_safetensors_at_all(ckpt_copy):
    _shard(ckpt_copy).write_bytes(b"hello")
    with pytest.raises(WeightsError):
        Checkpoint.open(ckpt_copy)


def test_index_points_to_missing_tensor(ckpt_copy):
    idx = json.loads((ckpt_copy / INDEX_FILE).read_text())
    idx["weight_map"]["model.dit.extra.weight"] = _shard(ckpt_copy).name
    (ckpt_copy / INDEX_FILE).write_text(json.dumps(idx))
    with pytest.raises(WeightsError, match="model.dit.extra.weight") as e:
        Checkpoint.open(ckpt_copy)
    _one_line(e)


def test_unexpected_key(ckpt_copy):
    extra = ckpt_copy / "model-extra.safetensors"
    write_file(extra, {"vision_model.encoder.weight": np.zeros(3, np.float32)})
    idx = json.loads((ckpt_copy / INDEX_FILE).read_text())
    idx["weight_map"]["vision_model.encoder.weight"] = extra.name
    (ckpt_copy / INDEX_FILE).write_text(json.dumps(idx))
    with pytest.raises(WeightsError, match="vision_model.encoder.weight") as e:
        Checkpoint.open(ckpt_copy)
    _one_line(e)


def test_wrong_shape_names_key_and_file(tiny_ckpt):
    expected = dict(tiny_ckpt.shapes("dit"))
    key = "caption_projection.linear_1.weight"
    expected[key] = (expected[key][0] + 1, expected[key][1])
    with pytest.raises(WeightsError, match=f"model.dit.{key}") as e:
        tiny_ckpt.check_shapes("dit", expected)
    assert tiny_ckpt.file_of("dit", key).name in _one_line(e)


def test_missing_and_unexpected_component_tensors(tiny_ckpt):
    expected = dict(tiny_ckpt.shapes("mcp"))
    expected["new.weight"] = (1,)
    with pytest.raises(WeightsError, match="missing"):
        tiny_ckpt.check_shapes("mcp", expected)
    expected = dict(tiny_ckpt.shapes("mcp"))
    expected.pop("layer_weights")
    with pytest.raises(WeightsError, match="unexpected"):
        tiny_ckpt.check_shapes("mcp", expected)


def test_config_missing_required_field(ckpt_copy):
    cfg = json.loads((ckpt_copy / "config.json").read_text())
    del cfg["num_hidden_layers"]
    (ckpt_copy / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="num_hidden_layers") as e:
        Checkpoint.open(ckpt_copy).config
    _one_line(e)


def test_config_not_json(ckpt_copy):
    (ckpt_copy / "transformer" / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="transformer/config.json"):
        Checkpoint.open(ckpt_copy).config


def test_unknown_sana_without_local_configs(ckpt_copy):
    shutil.rmtree(ckpt_copy / "vae")
    with pytest.raises(ConfigError, match="synthetic/tiny") as e:
        Checkpoint.open(ckpt_copy).config
    _one_line(e)


def test_unreachable_hub_one_line(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(ModelNotFoundError, match="--model demo") as e:
        resolve_model("Amshaker/Mobile-O-0.5B")
    _one_line(e)
    with pytest.raises(ModelNotFoundError):
        resolve_model("./no/such/folder")


@pytest.mark.torch
def test_bf16_round_trip(tmp_path):
    x = np.random.default_rng(0).standard_normal((5, 7)).astype(np.float32)
    write_file(tmp_path / "a.safetensors", {"x": x, "i": np.arange(3)}, bf16={"x"})
    f = SafetensorsFile(tmp_path / "a.safetensors")
    assert f.tensors["x"].dtype == "BF16"
    y = f.get("x")
    assert np.allclose(x, y, rtol=2 ** -8) and np.array_equal(f.get("i"), np.arange(3))
    # the safetensors library reads our files too
    from safetensors import safe_open

    with safe_open(str(tmp_path / "a.safetensors"), "pt") as g:
        assert np.allclose(g.get_tensor("x").float().numpy(), y)


def test_synthetic_cli_bad_preset(tmp_path):
    r = subprocess.run([sys.executable, "-m", "weights.loading.synthetic", str(tmp_path / "x"), "--preset", "huge"],
                       capture_output=True, text=True)
    assert r.returncode != 0 and "invalid choice" in r.stderr


def test_float_tensors_load_as_float32(tmp_path):
    x = np.random.default_rng(1).standard_normal((3, 4))
    write_file(tmp_path / "h.safetensors", {"h": x.astype(np.float16), "d": x})
    f = SafetensorsFile(tmp_path / "h.safetensors")
    assert f.get("h").dtype == np.float32 and f.get("d").dtype == np.float32
    assert f.get("h", float32=False).dtype == np.float16


def test_cli_oserror_is_one_line(tmp_path, capsys):
    from weights.core.errors import run_cli

    def main():
        (tmp_path / "no" / "such" / "dir" / "x.png").write_bytes(b"")

    with pytest.raises(SystemExit) as e:
        run_cli(main)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1 and "x.png" in err
