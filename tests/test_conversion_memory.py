"""Issue 27: a conversion frees each thing before the next stage needs memory (tiny checkpoint).

The upstream reference is built with its parameters on the meta device and takes the
checkpoint's tensors (no random fp32 copy beside them); the torch module is freed once
converted, before compression, and the LLM's functions are compressed and merged from their
saved packages after it is gone.  The full-size figures are README's table (``make convert-full``).
"""

from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest

pytestmark = [pytest.mark.torch, pytest.mark.coreml]


def test_reference_holds_the_checkpoint_tensors_not_a_copy(tiny_ckpt):
    from weights.references import upstream

    with upstream.parameters_on_meta():
        empty = upstream.qwen2(tiny_ckpt.config.llm)
    assert all(p.is_meta for p in empty.parameters())
    assert not any(b.is_meta for b in empty.buffers())  # computed buffers (RoPE inv_freq) stay real
    tensors = tiny_ckpt.load("llm")
    built = upstream.build("llm", tiny_ckpt.config, tensors)
    assert not any(p.is_meta for p in built.parameters())
    state = built.state_dict()
    for key, array in tensors.items():
        assert state[key].data_ptr() == array.ctypes.data, key  # the array itself: no second copy
    inv_freq = dict(built.named_buffers())["model.rotary_emb.inv_freq"]
    assert np.array_equal(inv_freq.numpy(), upstream.qwen2(tiny_ckpt.config.llm).model.rotary_emb.inv_freq.numpy())


def _watch(monkeypatch, module, name, alive, seen):
    """Record, at each call of ``module.name``, whether the watched torch module is gone."""
    real = getattr(module, name)

    def watched(*args, **kwargs):
        gc.collect()
        seen.append((name, alive() is None))
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, watched)


def test_module_is_freed_before_compression(tiny_ckpt, tmp_path, monkeypatch):
    """--isolate's path (``release_module=True``) against the tests' (module kept): the torch
    module is gone before compressing, the bundles are the same bytes."""
    from coreml_convert import convert as cv
    from coreml_convert.components import mcp
    from weights.bundles.hashing import bundle_sha256

    recipe = cv.RECIPES["mcp"]
    kept = mcp.build_spec(tiny_ckpt)
    hashes = [bundle_sha256(cv.save_atomic(m, tmp_path / f"kept{i}", kept.file))
              for i, m in enumerate(cv.convert_both(kept, "fp16", recipe))]
    assert kept.module is not None  # the tests' path: the module is still there for gate 2

    spec = mcp.build_spec(tiny_ckpt)
    alive, seen = weakref.ref(spec.module), []
    _watch(monkeypatch, cv, "compress", alive, seen)
    plain, packed = cv.convert_both(spec, "fp16", recipe, release_module=True)
    assert spec.module is None and seen == [("compress", True)]
    assert [bundle_sha256(cv.save_atomic(m, tmp_path / f"freed{i}", spec.file))
            for i, m in enumerate((plain, packed))] == hashes


@pytest.mark.slow
def test_llm_compresses_and_merges_from_disk_after_the_module_is_freed(tiny_ckpt, monkeypatch):
    """Every function is converted and saved first; then the module goes, and each function is
    compressed (with the plan measured on its converted program) and merged from disk."""
    from coreml_convert import convert as cv
    from coreml_convert.components import llm
    from coreml_convert.mil_exec import op_types

    spec = llm.build_spec(tiny_ckpt)
    alive, seen = weakref.ref(spec.module.llm), []
    _watch(monkeypatch, cv, "compress", alive, seen)
    _watch(monkeypatch, llm, "_merge", alive, seen)
    _watch(monkeypatch, cv, "compression_plan", alive, seen)
    plain, packed = cv.convert_both(spec, "fp16", cv.RECIPES["llm"], release_module=True)
    assert spec.module is None
    n = len(llm.FUNCTIONS)
    assert seen == [("compression_plan", False)] * n + [("compress", True)] * n + [("_merge", True)]
    for fn in llm.FUNCTIONS:
        assert "constexpr_lut_to_dense" in op_types(packed.package_path, fn), fn
        assert not any(t.startswith("constexpr_") for t in op_types(plain.package_path, fn)), fn
