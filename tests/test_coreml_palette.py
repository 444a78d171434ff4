"""Issue 22's size recipes: Lloyd-Max palettes, the output-drift pre-analysis, the int4 host table."""

from __future__ import annotations

import numpy as np
import pytest

from coreml_convert import convert as cv
from coreml_convert.palette import fake_quantize, group_size_for, lloyd_lut, lut_function, uniform_lut
from weights.bundles import contract


def _snr_db(w, rebuilt) -> float:
    w = np.asarray(w, np.float64)
    return float(10 * np.log10(np.sum(w ** 2) / np.sum((w - rebuilt) ** 2)))


def test_lloyd_lut_is_deterministic_and_beats_the_uniform_lut():
    """Lloyd's iterations start from coremltools' uniform LUT and only lower its error: on a
    Gaussian group 4 bits gain > 2.5 dB of weight SNR; same input, same bytes."""
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((16, 896)) * 0.02).astype(np.float16)
    lut, idx = lloyd_lut(w, 4)
    assert lut.dtype == np.float16 and lut.shape == (16,) and idx.dtype == np.uint8 and idx.max() < 16
    assert np.all(np.diff(lut.astype(np.float32)) >= 0)
    again = lloyd_lut(w, 4)
    assert np.array_equal(lut, again[0]) and np.array_equal(idx, again[1])
    ulut, uidx = uniform_lut(w, 4)
    lloyd = _snr_db(w, lut.astype(np.float32)[idx].reshape(w.shape))
    uniform = _snr_db(w, ulut.astype(np.float32)[uidx].reshape(w.shape))
    assert lloyd > uniform + 2.5, (lloyd, uniform)
    for bits in (4, 6):  # never worse than the uniform LUT it starts from
        assert _snr_db(w, fake_quantize(w, bits, 16)) >= _snr_db(w, fake_quantize(w, bits, 16, "uniform")) - 1e-6
    const = np.full((4, 8), 0.5, np.float16)  # one value: every index points at it
    lut, idx = lut_function(4)(const)
    assert np.all(lut.astype(np.float32)[idx] == 0.5)


def test_group_size_divides_the_channels():
    """coremltools skips a weight whose channels the group size does not divide (the LLM's last
    logits slice of 4,193 rows stayed fp16): the converter takes the largest divisor below."""
    assert group_size_for(16384, 16) == 16 and group_size_for(4193, 16) == 7 and group_size_for(599, 16) == 1
    assert group_size_for(8, 16) == 8


def test_planned_bits_match_consts_by_parameter_name():
    recipe = {"default_bits": 4, "unnamed_bits": 6, "weight_bits": {"model.layers.3.mlp.up_proj.weight": 6}}
    assert cv.planned_bits("core_model_layers_3_mlp_up_proj_weight_to_fp16", recipe) == 6
    assert cv.planned_bits("core_model_layers_13_mlp_up_proj_weight_to_fp16", recipe) == 4  # not layer 3
    assert cv.planned_bits("core_model_layers_3_mlp_down_proj_weight_to_fp16", recipe) == 4
    assert cv.planned_bits("op_5337_to_fp16", recipe) == 6  # the lm_head's slices carry no parameter name


def test_planned_bits_does_not_confuse_layer_numbers():
    """"layers_1_" must not match "layers_13_": parameter names are matched whole."""
    recipe = {"default_bits": 4, "weight_bits": {"model.layers.1.mlp.up_proj.weight": 6}}
    assert cv.planned_bits("core_model_layers_1_mlp_up_proj_weight_to_fp16", recipe) == 6
    assert cv.planned_bits("core_model_layers_11_mlp_up_proj_weight_to_fp16", recipe) == 4


def test_output_drift_plan_promotes_the_most_sensitive_group_first():
    """ml-stable-diffusion's pre-analysis on a torch module: every weight at 4 bits first; when
    that misses the target, the group whose 4-bit palette alone drifts the output most goes to
    6 bits first, and promotion stops once the target is met."""
    torch = pytest.importorskip("torch")
    from coreml_convert import sensitivity

    torch.manual_seed(0)
    layers = torch.nn.Sequential(torch.nn.Linear(64, 64, bias=False), torch.nn.Linear(64, 64, bias=False))
    with torch.no_grad():
        layers[1].weight.mul_(torch.linspace(0.2, 5, 64)[None, :] ** 3)  # heavy-tailed: 4 bits hurt more
    x = torch.randn(8, 64)

    def run():
        with torch.no_grad():
            return {"y": layers(x).numpy()}

    weights = {n: p for n, p in layers.named_parameters()}
    groups = {"first": ["0.weight"], "second": ["1.weight"]}
    probe = sensitivity.DriftProbe(weights, run, group_size=16)
    before = {n: p.detach().clone() for n, p in weights.items()}
    low_all = probe.drift_db({n: 4 for n in weights})
    assign, record = sensitivity.plan_bits(probe, groups, (4, 6), target_db=low_all + 3)
    assert all(torch.equal(before[n], p) for n, p in weights.items())  # weights restored
    assert record["sensitivity_db"]["second"] < record["sensitivity_db"]["first"]
    assert record["promoted"][0] == "second" and assign["1.weight"] == 6
    assert record["final_db"] >= record["all_low_db"]
    met, rec = sensitivity.plan_bits(probe, groups, (4, 6), target_db=low_all - 1)
    assert set(met.values()) == {4} and rec["promoted"] == [] and "sensitivity_db" not in rec


def test_int4_table_rows_round_trip():
    """The host table (contract.quantize_rows, "int4_row_scale"): C/2 + 2 bytes a row, two's
    complement nibbles, column 2j low; the per-row scale minimises the row's squared error,
    so it does no worse than max|row| / 7."""
    rng = np.random.default_rng(1)
    table = rng.standard_normal((50, 16)).astype(np.float32) * rng.uniform(0.01, 2, (50, 1)).astype(np.float32)
    table[3] = 0.0
    packed = contract.quantize_rows(table)
    assert packed.dtype == np.uint8 and packed.shape == (50, 16 // 2 + contract.ROW_SCALE_BYTES)
    assert contract.table_format(packed) == (contract.EMBEDDINGS_DTYPE, (50, 16)) == ("int4_row_scale", (50, 16))
    rows = contract.dequantize_rows(packed)
    scale = packed[:, -2:].copy().view("<f2").astype(np.float32)
    q = np.stack([packed[:, :-2] & 0x0F, packed[:, :-2] >> 4], axis=-1).reshape(50, 16).astype(np.int16)
    assert np.array_equal(rows, np.where(q > 7, q - 16, q) * scale)
    assert np.all(rows[3] == 0)
    plain_scale = np.abs(table).max(axis=1, keepdims=True) / 7
    plain = np.clip(np.round(table / np.where(plain_scale > 0, plain_scale, 1)), -8, 7) * plain_scale
    assert np.all(((rows - table) ** 2).sum(1) <= ((plain - table) ** 2).sum(1) * 1.01 + 1e-12)
    assert np.array_equal(contract.dequantize_rows(packed, [7, 2]), rows[[7, 2]])
