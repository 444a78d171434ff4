"""The checks every Core ML component passes, once for all of them: one parametrised module
over the converter's registry (``coreml_convert.components.REGISTRY``, the bundles of
``weights.core.components``), on the tiny checkpoint.

  gate 1  our Neural-Engine torch module vs the upstream reference in fp32, on the spec's
          example inputs: every gated output, max|ours-ref|/max|ref| <= 1e-4 and PSNR >= 60 dB;
  gate 2  the saved fp16 program executed on numpy (coreml_convert.mil_exec) vs the module:
          PSNR >= 35 dB (the minimum over outputs);
  table   the registry, the component table and the bundle contract name the same components,
          and each spec carries its contract.

What only one component has (masks, functions, layouts, full-width parity rows) stays in
tests/test_coreml_<name>.py; the specs and bundles are shared through conftest's
``coreml_spec`` / ``coreml_bundle``.
"""

import pytest

from coreml_convert import convert as cv
from coreml_convert import gates
from coreml_convert.components import REGISTRY
from coreml_convert.metrics import max_relative_error, psnr
from metrics import within
from weights.bundles import contract
from weights.core import components

pytestmark = [pytest.mark.torch, pytest.mark.coreml]

NAMES = list(REGISTRY)
FP32_MAX_REL = 1e-4


def test_registry_is_the_component_table():
    assert NAMES == list(components.BUNDLES) == list(contract.COMPONENT_NAMES) == list(contract.IO)
    assert set(cv.RECIPES) == set(NAMES)
    for name in NAMES:
        assert callable(REGISTRY[name].build_spec), name


@pytest.mark.parametrize("name", NAMES)
def test_spec_carries_its_contract(name, coreml_spec, tiny_ckpt):
    spec = coreml_spec(name)
    assert spec.name == name and spec.file == f"{name}.mlpackage"
    assert spec.io == contract.bundle_io(name, tiny_ckpt.config)
    assert spec.compute_units == components.COMPONENTS[name].compute_units


@pytest.mark.parametrize("name", NAMES)
def test_gate1_matches_upstream(name, coreml_spec):
    spec = coreml_spec(name)
    ref, ours = spec.reference(spec.example_inputs), gates.torch_outputs(spec)
    assert ref and set(ref) <= set(ours), (sorted(ref), sorted(ours))
    for k in ref:
        assert ours[k].shape == ref[k].shape, k
        within(max_relative_error(ref[k], ours[k]), at_most=FP32_MAX_REL, what=f"{name} gate 1 {k} max rel")
        within(psnr(ref[k], ours[k]), at_least=gates.GATE1_MIN_DB, what=f"{name} gate 1 {k} PSNR")


@pytest.mark.parametrize("name", NAMES)
def test_gate2_fp16_program(name, coreml_spec, coreml_bundle):
    g2 = gates.gate2(coreml_spec(name), coreml_bundle(name), "fp16")
    print(f"{name} gate 2 (fp16 program): {g2}")
    assert g2
    within(min(g2.values()), at_least=gates.GATE2_MIN_DB, what=f"{name} gate 2 PSNR")
