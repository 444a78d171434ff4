"""Core ML ``MLModel.predict`` of every converted component vs its torch module (macOS only:
Core ML cannot predict on Linux, where the MIL-program gate in the other tests stands in)."""


import pytest

from coreml_convert import convert as cv
from coreml_convert import gates
from coreml_convert.components import REGISTRY

pytestmark = [pytest.mark.torch, pytest.mark.coreml, pytest.mark.macos]


@pytest.mark.parametrize("name", list(REGISTRY))
def test_predict_matches_torch_module(name, tiny_ckpt, tmp_path):
    spec = REGISTRY[name].build_spec(tiny_ckpt)
    path = cv.save_atomic(cv.convert_spec(spec, "fp16"), tmp_path, spec.file)
    result, note = gates.predict_check(spec, path, "fp16")
    if result is None:
        pytest.skip(note)
    assert min(result.values()) >= gates.GATE2_MIN_DB, (name, result)
