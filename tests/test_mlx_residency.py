"""Phase-wise residency (``low_memory``): each component is loaded just before its phase and
dropped after it; the images are the same bit for bit as with everything resident."""

import numpy as np
import pytest

from mlx_model.support.image_settings import ImageSettings

from mlx_model.support import platform
from mlx_model.pipelines.generation import GenerationPipeline
from mlx_model.pipelines.understanding import Understanding

HEAVY = ("llm", "dit", "vae")


def spy(obj) -> list[tuple[str, tuple[str, ...], tuple[str, ...]]]:
    """Record every use of a component of ``obj`` (a pipeline): (its name, the components
    resident before the use, those resident after it).  ``del part.get`` undoes it."""
    seen = []
    for name, part in obj.parts.items():
        get = part.get

        def wrapped(name=name, get=get):
            before = tuple(obj.resident())
            value = get()
            seen.append((name, before, tuple(obj.resident())))
            return value

        part.get = wrapped
    return seen


@pytest.fixture(scope="module")
def resident(tiny_ckpt):
    return GenerationPipeline.from_checkpoint(tiny_ckpt, quantize=0, low_memory=False, edit=True)


def test_off_loads_everything_up_front(resident):
    assert resident.low_memory is False
    assert resident.resident() == ["llm", "dit", "vae", "encoder"]


@pytest.mark.slow
@pytest.mark.parametrize("quantize", [0, 4])
def test_same_image_bit_for_bit_and_one_heavy_component_per_phase(tiny_ckpt, resident, quantize):
    ref = resident if quantize == 0 else GenerationPipeline.from_checkpoint(tiny_ckpt, quantize=4, low_memory=False)
    pipe = GenerationPipeline.from_checkpoint(tiny_ckpt, quantize=quantize, low_memory=True)
    assert pipe.low_memory and pipe.resident() == []  # nothing but tokenizer + MCP at load
    seen = spy(pipe)
    want = ref.generate(ImageSettings("a red cup", steps=3, seed=0))
    for _ in range(2):  # a second call loads what the first dropped
        seen.clear()
        got = pipe.generate(ImageSettings("a red cup", steps=3, seed=0))
        np.testing.assert_array_equal(got.images, want.images)
        np.testing.assert_array_equal(got.latents, want.latents)
        assert pipe.resident() == []
        assert {name for name, _, _ in seen} == set(HEAVY)
        for name, _, after in seen:
            held = tuple(n for n in after if n in HEAVY)
            assert held == (name,), f"{name} used while {held} were resident"
        assert set(got.peak_memory) == set(got.load_seconds) == {"text", "denoise", "decode"}
        assert all(v > 0 for v in got.load_seconds.values())  # loading counted in its phase
    assert {n: pipe.parts[n].loads for n in HEAVY} == {"llm": 2, "dit": 2, "vae": 2}


@pytest.mark.slow
def test_edit_drops_the_vision_tower_before_the_llm(tiny_ckpt, resident, photo):
    pipe = GenerationPipeline.from_checkpoint(tiny_ckpt, quantize=0, low_memory=True, edit=True)
    assert pipe.can_edit and pipe.resident() == []
    order = spy(pipe)
    want = resident.edit(photo, ImageSettings("make it snowy", steps=2, seed=1))
    got = pipe.edit(photo, ImageSettings("make it snowy", steps=2, seed=1))
    np.testing.assert_array_equal(got.images, want.images)
    first_llm = next(before for name, before, _ in order if name == "llm")
    assert "encoder" not in first_llm
    assert pipe.resident() == []


@pytest.mark.slow
def test_understanding_same_answer_vision_dropped_first(tiny_ckpt, photo):
    ref = Understanding.from_checkpoint(tiny_ckpt, quantize=0, low_memory=False)
    low = Understanding.from_checkpoint(tiny_ckpt, quantize=0, low_memory=True)
    assert ref.resident() == ["llm", "encoder"] and low.resident() == []
    want = [r.token for r in ref.stream(photo, "What is it?", temp=0.0, max_tokens=6)]
    for _ in range(2):
        order = spy(low)
        got = [r.token for r in low.stream(photo, "What is it?", temp=0.0, max_tokens=6)]
        assert got == want
        assert "encoder" not in next(before for name, before, _ in order if name == "llm")
        assert low.resident() == []
        for part in low.parts.values():
            del part.get  # back to the class's method


@pytest.mark.parametrize("env,total,want", [("1", 64 << 30, True), ("0", 4 << 30, False), ("", 8 << 30, True),
                                            ("", 32 << 30, False), ("", None, False)])
def test_auto_low_memory(monkeypatch, env, total, want):
    monkeypatch.setenv(platform.LOW_MEMORY_ENV, env)
    monkeypatch.setattr(platform, "total_memory", lambda: total)
    assert platform.low_memory_default() is want
    assert platform.resolve_low_memory(None) is want
    assert platform.resolve_low_memory(not want) is (not want)


def test_total_memory_is_known_here():
    n = platform.total_memory()
    assert n is None or n > 1 << 28


@pytest.mark.slow
def test_cli_flag_reaches_the_pipeline(monkeypatch, tiny_ckpt_dir, tmp_path):
    """--low-memory / --no-low-memory on the image command lines (default: auto)."""
    from mlx_model import generate as gen_mod
    from mlx_model.pipelines.generation import GenerationPipeline

    seen = []
    real = GenerationPipeline.from_checkpoint.__func__

    def spy(cls, ckpt, **kw):
        seen.append(kw.get("low_memory"))
        return real(cls, ckpt, **kw)

    monkeypatch.setattr(GenerationPipeline, "from_checkpoint", classmethod(spy))
    for flag, want in (("--low-memory", True), ("--no-low-memory", False), (None, None)):
        args = ["a red cup", "--model", str(tiny_ckpt_dir), "-q", "0", "--steps", "1", "--seed", "1",
                "--output", str(tmp_path / "x.png")] + ([flag] if flag else [])
        gen_mod.main(args)
        assert seen[-1] is want
