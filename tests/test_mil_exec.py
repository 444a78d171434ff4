"""The numpy MIL executor (gate 2) against torch: each op on random inputs, fp32 and fp16.

Every case converts a tiny torch module (or a MIL Builder program) to an ML program, saves and
reloads it, executes the saved program with coreml_convert.mil_exec, and compares with torch.
fp32: max|ours-ref|/max|ref| <= 1e-5; fp16: PSNR >= 50 dB. Each case also asserts that the ops it
is meant to cover are really in the saved program.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import coremltools as ct
import torch
F = torch.nn.functional

from coremltools.converters.mil import Builder as mb  # noqa: E402

from coreml_convert import mil_ops  # noqa: E402
from coreml_convert.metrics import max_relative_error, min_psnr, psnr  # noqa: E402
from coreml_convert.mil_exec import (  # noqa: E402
    ProgramError,
    UnsupportedOpError,
    load_program,
    make_states,
    op_types,
    run_program,
    unsupported_ops,
)
from weights.core.errors import MobileOError  # noqa: E402

pytestmark = [pytest.mark.torch, pytest.mark.coreml, pytest.mark.filterwarnings("ignore::UserWarning")]  # coremltools renames outputs

FP32_TOL = 1e-5
FP16_MIN_DB = 50.0
GATE2_MIN_DB = 35.0
TARGET = ct.target.iOS18
PRECISION = {"fp32": ct.precision.FLOAT32, "fp16": ct.precision.FLOAT16}


def _save(ml, tmp_path, name="m"):
    path = tmp_path / f"{name}.mlpackage"
    ml.save(str(path))
    return path


def convert_torch(module, inputs: dict, precision: str, tmp_path, states=None, target=TARGET, name="m"):
    """Trace, convert, save; return (path, output names in order)."""
    module = module.eval()
    example = tuple(torch.from_numpy(v) for v in inputs.values())
    with torch.no_grad():
        traced = torch.jit.trace(module, example, check_trace=False)
    ml = ct.convert(
        traced,
        inputs=[ct.TensorType(name=k, shape=v.shape, dtype=v.dtype) for k, v in inputs.items()],
        states=states,
        convert_to="mlprogram",
        compute_precision=PRECISION[precision],
        minimum_deployment_target=target,
    )
    path = _save(ml, tmp_path, name)
    return path, [o.name for o in ml.get_spec().description.output]


def torch_outputs(module, inputs: dict) -> list[np.ndarray]:
    with torch.no_grad():
        out = module.eval()(*(torch.from_numpy(v) for v in inputs.values()))
    out = out if isinstance(out, (tuple, list)) else (out,)
    return [o.numpy() for o in out]


def check(ref: list, got: dict, names: list, precision: str):
    assert list(got) == names
    for r, name in zip(ref, names):
        g = got[name]
        assert g.shape == r.shape, (name, g.shape, r.shape)
        if precision == "fp32":
            err = max_relative_error(r, g)
            assert err <= FP32_TOL, f"{name}: fp32 relative error {err:.2e}"
        else:
            db = psnr(r, g)
            assert db >= FP16_MIN_DB, f"{name}: fp16 PSNR {db:.1f} dB"


def rand(*shape, seed=0, scale=1.0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


# ---------------------------------------------------------------- torch-converted op cases


class ConvNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = torch.nn.Conv2d(4, 8, 3, padding=1)
        self.c2 = torch.nn.Conv2d(8, 8, 3, stride=2, dilation=2, padding=2, groups=2)
        self.dw = torch.nn.Conv2d(8, 8, 7, padding=3, groups=8)
        self.pw = torch.nn.Conv2d(8, 16, 1, bias=False)
        self.bn = torch.nn.BatchNorm2d(16)
        self.inorm = torch.nn.InstanceNorm2d(16, affine=True)
        self.up = torch.nn.ConvTranspose2d(16, 8, 4, stride=2, padding=1)
        self.c1d = torch.nn.Conv1d(8, 4, 3, padding=2, dilation=2)
        with torch.no_grad():  # non-trivial statistics / affine parameters
            for p in (self.bn.running_mean, self.bn.weight, self.bn.bias, self.inorm.weight, self.inorm.bias):
                p.copy_(torch.randn_like(p) * 0.5 + (1.0 if p is self.bn.weight else 0.0))
            self.bn.running_var.copy_(torch.rand(16) + 0.5)

    def forward(self, x):
        y = F.gelu(self.c1(x))
        y = self.dw(self.c2(y))
        y = self.bn(torch.relu(self.pw(y)))  # bn after relu: not fused into the conv
        y = self.inorm(y)
        y = F.avg_pool2d(y, 2, stride=1) + F.max_pool2d(y, 3, stride=1, padding=1)[..., :-1, :-1]
        z = self.up(y)  # conv_transpose
        z1 = self.c1d(z.flatten(2)[..., :40])
        return z, z1


class ResampleNet(torch.nn.Module):
    def forward(self, x):
        a = F.interpolate(x, scale_factor=2, mode="nearest")
        b = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        c = F.interpolate(x, size=(11, 7), mode="bilinear", align_corners=True)
        d = F.pixel_unshuffle(F.pixel_shuffle(x, 2), 2) * 0.5 + F.pixel_shuffle(x, 2).mean()
        e = F.pad(x, (1, 2, 2, 1), mode="reflect") + 1
        f = F.pad(x, (2, 0, 0, 1), mode="replicate") * 2
        g = F.pad(x, (1, 1, 0, 2), value=0.25)
        return a + b, c, d, e, f, g


class ActivationNet(torch.nn.Module):
    def forward(self, x, y):
        out = [
            F.gelu(x), F.gelu(x, approximate="tanh"), F.silu(x), torch.relu(x), torch.sigmoid(x),
            F.hardsigmoid(x), torch.tanh(x), torch.erf(x), torch.exp(x * 0.5), torch.log(x.abs() + 0.1),
            torch.sqrt(x.abs()), torch.rsqrt(x.abs() + 0.5), torch.pow(x.abs() + 0.1, 1.7), x.clamp(-0.5, 0.7),
            F.leaky_relu(x, 0.1), F.elu(x), F.softplus(x), torch.sin(x) * torch.cos(y), x.abs(),
            torch.where(x > y, x, y * 2), torch.maximum(x, y) - torch.minimum(x, y), x / (y.abs() + 1),
            (x >= 0).float() + (x < y).float() * 2 + (x == x).float(), x.floor() + y.ceil(), F.relu6(x * 4),
        ]
        return torch.stack(out, 0)


class AttentionNet(torch.nn.Module):
    def __init__(self, d=32, heads=4, vocab=50):
        super().__init__()
        self.emb = torch.nn.Embedding(vocab, d)
        self.qkv = torch.nn.Linear(d, 3 * d)
        self.out = torch.nn.Linear(d, d, bias=False)
        self.norm = torch.nn.LayerNorm(d)
        self.rms_w = torch.nn.Parameter(torch.randn(d) * 0.1 + 1)
        self.heads = heads

    def forward(self, ids, mask):
        x = self.emb(ids)  # gather
        b, s, d = 2, 8, 32  # static (traced shape arithmetic does not convert)
        h = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * self.rms_w  # RMSNorm
        q, k, v = self.qkv(self.norm(h)).chunk(3, dim=-1)  # split
        q, k, v = (t.reshape(b, s, self.heads, -1).transpose(1, 2) for t in (q, k, v))
        causal = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        masked = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        scores = torch.einsum("bhqd,bhkd->bhqk", q, k) * 0.25
        manual = torch.matmul(scores.softmax(-1), v)
        y = torch.cat([causal, masked, manual], dim=-1).transpose(1, 2).reshape(b, s, -1)
        y = self.out(y[..., :d]) + y[..., d:2 * d] - y[..., 2 * d:]
        extra = [
            y.cumsum(1), y.sum(-1, keepdim=True).expand(b, s, d), y.amax(1, keepdim=True).repeat(1, s, 1),
            torch.gather(y, 2, ids.unsqueeze(-1).expand(b, s, 4) % d).repeat(1, 1, d // 4),
            y.flip(1), y[:, ::2].repeat_interleave(2, dim=1),
            y.unsqueeze(0).squeeze(0).permute(0, 2, 1).transpose(1, 2),
        ]
        return y, torch.stack(extra, 0), torch.argmax(y, -1).to(torch.int32)


def _attention_inputs():
    rng = np.random.default_rng(1)
    return {
        "ids": rng.integers(0, 50, size=(2, 8)).astype(np.int32),
        "mask": np.where(rng.random((2, 1, 8, 8)) < 0.3, -1e4, 0.0).astype(np.float32),
    }


TORCH_CASES = {
    "conv": (
        ConvNet, lambda: {"x": rand(1, 4, 12, 12)},
        {"conv", "conv_transpose", "batch_norm", "instance_norm", "avg_pool", "max_pool", "gelu", "relu"},
    ),
    "resample": (
        ResampleNet, lambda: {"x": rand(1, 8, 5, 6)},
        {"upsample_nearest_neighbor", "pixel_shuffle", "pixel_unshuffle", "pad"},
    ),
    "activations": (
        ActivationNet, lambda: {"x": rand(3, 17), "y": rand(3, 17, seed=1)},
        {"gelu", "silu", "sigmoid", "sigmoid_hard", "tanh", "erf", "exp", "log", "sqrt", "rsqrt", "pow",
         "clip", "leaky_relu", "elu", "softplus", "sin", "cos", "abs", "select", "greater", "less", "equal",
         "maximum", "minimum", "real_div", "floor", "ceil", "cast"},
    ),
    "attention": (
        AttentionNet, _attention_inputs,
        {"gather", "linear", "layer_norm", "scaled_dot_product_attention", "matmul", "softmax",
         "split", "concat", "reshape", "transpose", "cumsum", "reduce_sum", "reduce_max", "tile",
         "gather_along_axis", "reverse", "reduce_argmax", "slice_by_index"},
    ),
}


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("case", sorted(TORCH_CASES))
def test_torch_ops(case, precision, tmp_path):
    make, make_inputs, expected_ops = TORCH_CASES[case]
    torch.manual_seed(0)
    module = make()
    inputs = make_inputs()
    path, names = convert_torch(module, inputs, precision, tmp_path)
    ops = set(op_types(path))
    assert expected_ops <= ops, f"program lacks {sorted(expected_ops - ops)}"
    assert unsupported_ops(path) == []
    got = run_program(path, inputs)
    if precision == "fp16":  # an fp16 program rounds every op's result
        assert all(v.dtype in (np.float16, np.int32) for v in got.values())
    check(torch_outputs(module, inputs), got, names, precision)


# ---------------------------------------------------------------- MIL Builder op cases


def _builder_case(build, shapes: dict, inputs: dict, precision: str, tmp_path):
    specs = [mb.TensorSpec(shape=s) for s in shapes.values()]
    prog = mb.program(input_specs=specs, opset_version=TARGET)(build)
    ml = ct.convert(prog, convert_to="mlprogram", compute_precision=PRECISION[precision],
                    minimum_deployment_target=TARGET)
    path = _save(ml, tmp_path)
    names = [o.name for o in ml.get_spec().description.output]
    return path, names, run_program(path, inputs)


def _t(x):
    return torch.from_numpy(x)


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_builder_resampling(precision, tmp_path):
    x = rand(1, 3, 5, 6)

    def build(x):
        return (
            mb.upsample_bilinear(x=x, scale_factor_height=2, scale_factor_width=3, align_corners=False),
            mb.upsample_bilinear(x=x, scale_factor_height=2, scale_factor_width=2, align_corners=True),
            mb.resize_bilinear(x=x, target_size_height=9, target_size_width=4, sampling_mode="ALIGN_CORNERS"),
            mb.resize_bilinear(x=x, target_size_height=10, target_size_width=12, sampling_mode="UNALIGN_CORNERS"),
            mb.resize_nearest_neighbor(x=x, target_size_height=10, target_size_width=12),
            mb.upsample_nearest_neighbor(x=x, scale_factor_height=3, scale_factor_width=2),
        )

    path, names, got = _builder_case(build, {"x": x.shape}, {"x": x}, precision, tmp_path)
    assert {"upsample_bilinear", "resize_bilinear", "resize_nearest_neighbor", "upsample_nearest_neighbor"} <= set(
        op_types(path)
    )
    t = _t(x)
    ref = [
        F.interpolate(t, scale_factor=(2, 3), mode="bilinear", align_corners=False),
        F.interpolate(t, scale_factor=2, mode="bilinear", align_corners=True),
        F.interpolate(t, size=(9, 4), mode="bilinear", align_corners=True),
        F.interpolate(t, size=(10, 12), mode="bilinear", align_corners=False),
        F.interpolate(t, size=(10, 12), mode="nearest"),
        F.interpolate(t, scale_factor=(3, 2), mode="nearest"),
    ]
    check([r.numpy() for r in ref], got, names, precision)


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_builder_misc_ops(precision, tmp_path):
    """band_part, cumsum (exclusive/reverse), l2_norm, sigmoid_hard, same / same_lower padded conv,
    concat interleave, squeeze."""
    x = rand(2, 6, 6)
    w = rand(4, 2, 3, 3, seed=3) * 0.3

    def build(x):
        x4 = mb.expand_dims(x=x, axes=[0])  # [1, 2, 6, 6]
        return (
            mb.band_part(x=x, lower=-1, upper=0),
            mb.band_part(x=x, lower=1, upper=2),
            mb.cumsum(x=x, axis=2, exclusive=True, reverse=True),
            mb.l2_norm(x=x, epsilon=1e-6),
            mb.sigmoid_hard(x=x, alpha=0.3, beta=0.4),
            mb.conv(x=x4, weight=w, pad_type="same", strides=[2, 2]),
            mb.conv(x=x4, weight=w, pad_type="same_lower", strides=[2, 1]),
            mb.concat(values=[x, mb.mul(x=x, y=2.0)], axis=1, interleave=True),
            mb.squeeze(x=mb.conv(x=x4, weight=w[:1], pad_type="valid"), axes=[0, 1]),
        )

    path, names, got = _builder_case(build, {"x": x.shape}, {"x": x}, precision, tmp_path)
    assert {"band_part", "cumsum", "l2_norm", "sigmoid_hard", "conv", "concat", "squeeze"} <= set(op_types(path))
    t = _t(x)
    rev = torch.flip(t, [2])
    tp = F.pad(_t(x)[None], (0, 1, 0, 1))  # same, stride 2, k 3, n 6: total pad 1, extra at the end
    tl = F.pad(_t(x)[None], (1, 1, 1, 0))  # same_lower: H stride 2 -> total 1 at the start; W stride 1 -> 1/1
    ref = [
        torch.tril(t), torch.tril(torch.triu(t, -1), 2),
        torch.flip(rev.cumsum(2) - rev, [2]), t / torch.sqrt((t**2).sum() + 1e-6), (0.3 * t + 0.4).clamp(0, 1),
        F.conv2d(tp, _t(w), stride=2), F.conv2d(tl, _t(w), stride=(2, 1)),
        torch.stack([t, t * 2], 2).reshape(2, 12, 6), F.conv2d(t[None], _t(w[:1]))[0, 0],
    ]
    check([r.numpy() for r in ref], got, names, precision)


def _depth_to_space_ref(x, b):
    """TensorFlow's depth_to_space (DCR) written out: out[n,c,h*b+i,w*b+j] = x[n,(i*b+j)*C+c,h,w]."""
    n, cin, h, w = x.shape
    c_out = cin // (b * b)
    out = np.zeros((n, c_out, h * b, w * b), x.dtype)
    for i in range(b):
        for j in range(b):
            out[:, :, i::b, j::b] = x[:, (i * b + j) * c_out:(i * b + j + 1) * c_out]
    return out


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_builder_more_ops(precision, tmp_path):
    """thresholded_relu, fill_like, iOS17 resize, depth_to_space / space_to_depth, pools with
    excluded padding and ceil_mode, gather with batch_dims-free indices, stack, topk."""
    x = rand(1, 8, 5, 6)

    def build(x):
        return (
            mb.thresholded_relu(x=x, alpha=0.3),
            mb.add(x=mb.fill_like(ref_tensor=x, value=1.5), y=x),
            mb.resize(x=x, shape=np.array([9, 4], np.int32), resized_dims=np.uint32(2),
                      interpolation_mode="LINEAR", sampling_mode="UNALIGN_CORNERS"),
            mb.resize(x=x, shape=np.array([10, 12], np.int32), resized_dims=np.uint32(2),
                      interpolation_mode="NEAREST_NEIGHBOR"),
            mb.depth_to_space(x=x, block_size=2),
            mb.space_to_depth(x=mb.depth_to_space(x=x, block_size=2), block_size=2),
            mb.avg_pool(x=x, kernel_sizes=[3, 3], strides=[2, 2], pad_type="custom", pad=[1, 1, 1, 1],
                        exclude_padding_from_average=True, ceil_mode=True),
            mb.max_pool(x=x, kernel_sizes=[2, 2], strides=[2, 2], pad_type="valid", ceil_mode=True),
            mb.stack(values=[x, mb.mul(x=x, y=-1.0)], axis=2),
            mb.topk(x=x, k=3, axis=1, ascending=False)[0],
        )

    path, names, got = _builder_case(build, {"x": x.shape}, {"x": x}, precision, tmp_path)
    ops = set(op_types(path))
    assert {"thresholded_relu", "fill_like", "depth_to_space", "space_to_depth", "avg_pool", "max_pool",
            "stack", "topk", "resize"} <= ops
    t = _t(x)
    ref = [
        torch.where(t < 0.3, 0.0, t), t + 1.5,
        F.interpolate(t, size=(9, 4), mode="bilinear", align_corners=False),
        F.interpolate(t, size=(10, 12), mode="nearest"),
        _t(_depth_to_space_ref(x, 2)), t,
        F.avg_pool2d(t, 3, 2, padding=1, ceil_mode=True, count_include_pad=False),
        F.max_pool2d(t, 2, 2, ceil_mode=True),
        torch.stack([t, -t], 2), torch.topk(t, 3, dim=1).values,
    ]
    check([r.numpy() for r in ref], got, names, precision)


def test_builder_einsum(tmp_path):
    a, b = rand(2, 3, 4, 5), rand(2, 5, 4, 6, seed=1)  # MIL einsum: the "nchw,nwhu->nchu" family

    def build(a, b):
        return mb.einsum(values=(a, b), equation="nchw,nwhu->nchu")

    path, names, got = _builder_case(build, {"a": a.shape, "b": b.shape}, {"a": a, "b": b}, "fp32", tmp_path)
    assert "einsum" in op_types(path)
    check([torch.einsum("nchw,nwhu->nchu", _t(a), _t(b)).numpy()], got, names, "fp32")


def test_builder_dynamic_shape_ops(tmp_path):
    """shape, range_1d, fill, slice_by_size on a flexible input (computed at run time)."""
    from coremltools.converters.mil.mil import get_new_symbol

    seq = get_new_symbol()

    def build(x):
        n = mb.slice_by_index(x=mb.shape(x=x), begin=[1], end=[2], squeeze_mask=[True])
        r = mb.cast(x=mb.range_1d(start=0, end=n, step=1), dtype="fp32")
        ones = mb.fill(shape=mb.shape(x=x), value=2.0)
        head = mb.slice_by_size(x=x, begin=[0, 1], size=[-1, 2])
        return mb.add(x=mb.mul(x=x, y=ones), y=r), head

    prog = mb.program(input_specs=[mb.TensorSpec(shape=(2, seq))], opset_version=TARGET)(build)
    ml = ct.convert(prog, convert_to="mlprogram", compute_precision=ct.precision.FLOAT32,
                    minimum_deployment_target=TARGET)
    path = _save(ml, tmp_path)
    assert {"shape", "range_1d", "fill", "slice_by_size"} <= set(op_types(path))
    for n in (3, 7):
        x = rand(2, n, seed=n)
        got = list(run_program(path, {"x": x}).values())
        np.testing.assert_allclose(got[0], 2 * x + np.arange(n, dtype=np.float32), rtol=1e-6)
        np.testing.assert_array_equal(got[1], x[:, 1:3])


def test_enumerated_shapes(tmp_path):
    """A flexible (enumerated) input runs at each allowed size."""
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.GELU()).eval()
    traced = torch.jit.trace(module, torch.zeros(1, 4, 16), check_trace=False)
    shape = ct.EnumeratedShapes(shapes=[(1, 4, 16), (1, 8, 16)], default=(1, 4, 16))
    ml = ct.convert(traced, inputs=[ct.TensorType(name="x", shape=shape)], convert_to="mlprogram",
                    compute_precision=ct.precision.FLOAT16, minimum_deployment_target=TARGET)
    path = _save(ml, tmp_path)
    for n in (4, 8):
        x = rand(1, n, 16, seed=n)
        got = next(iter(run_program(path, {"x": x}).values()))
        assert psnr(torch_outputs(module, {"x": x})[0], got) >= FP16_MIN_DB


# ---------------------------------------------------------------- compressed weights


class TwoLayer(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(16, 32, 1)
        self.fc1 = torch.nn.Linear(64, 64)
        self.fc2 = torch.nn.Linear(64, 32)

    def forward(self, x):
        h = self.conv(x).flatten(1)  # [1, 32*2*1=64]
        return self.fc2(F.gelu(self.fc1(h)))


def _decompressed_reference(path, module, inputs):
    """torch output with each layer's weight replaced by coremltools' own decompression of the
    constexpr op feeding it (an implementation independent of the executor's)."""
    func = load_program(path).functions["main"]
    layers = {"conv": module.conv, "linear": None}
    linears = iter([module.fc1, module.fc2])
    n_constexpr = 0
    for op in func.operations:
        if op.op_type not in ("conv", "linear"):
            continue
        producer = op.weight.op
        if not producer.op_type.startswith("constexpr_"):
            continue
        n_constexpr += 1
        dense = producer.materialized_val_inference()
        mine = mil_ops.OPS[producer.op_type](_args(producer))
        np.testing.assert_array_equal(np.asarray(mine, np.float32), np.asarray(dense, np.float32))
        layer = layers["conv"] if op.op_type == "conv" else next(linears)
        with torch.no_grad():
            layer.weight.copy_(torch.from_numpy(np.asarray(dense, np.float32)).reshape(layer.weight.shape))
    assert n_constexpr == 3
    return torch_outputs(module, inputs)


def _args(op):
    def val(v):
        if v is None:
            return None
        if v.val is None and v.op.op_type.startswith("constexpr_"):
            return v.op.materialized_val_inference()
        return v.val

    return mil_ops.Args(op, {k: val(v) for k, v in op.inputs.items()})


COMPRESSIONS = {
    "palettize_kmeans_4bit_ios18": (TARGET, lambda: ct.optimize.coreml.OpPalettizerConfig(
        mode="kmeans", nbits=4, weight_threshold=0), "constexpr_lut_to_dense"),
    "palettize_grouped_2bit_ios18": (TARGET, lambda: ct.optimize.coreml.OpPalettizerConfig(
        mode="uniform", nbits=2, granularity="per_grouped_channel", group_size=8, weight_threshold=0),
        "constexpr_lut_to_dense"),
    "palettize_vector_ios18": (TARGET, lambda: ct.optimize.coreml.OpPalettizerConfig(
        mode="kmeans", nbits=3, cluster_dim=2, weight_threshold=0), "constexpr_lut_to_dense"),
    "palettize_uniform_4bit_ios16": (ct.target.iOS16, lambda: ct.optimize.coreml.OpPalettizerConfig(
        mode="uniform", nbits=4, weight_threshold=0), "constexpr_lut_to_dense"),
    "int8_linear_ios16": (ct.target.iOS16, lambda: ct.optimize.coreml.OpLinearQuantizerConfig(
        mode="linear", dtype="int8", weight_threshold=0), "constexpr_affine_dequantize"),
    "int8_symmetric_ios18": (TARGET, lambda: ct.optimize.coreml.OpLinearQuantizerConfig(
        mode="linear_symmetric", dtype="int8", weight_threshold=0), "constexpr_blockwise_shift_scale"),
    "prune_50_ios16": (ct.target.iOS16, lambda: ct.optimize.coreml.OpMagnitudePrunerConfig(
        target_sparsity=0.5, weight_threshold=0), "constexpr_sparse_to_dense"),
    "prune_50_ios18": (TARGET, lambda: ct.optimize.coreml.OpMagnitudePrunerConfig(
        target_sparsity=0.5, weight_threshold=0), "constexpr_sparse_to_dense"),
    "int4_per_block_ios18": (TARGET, lambda: ct.optimize.coreml.OpLinearQuantizerConfig(
        mode="linear", dtype="int4", granularity="per_block", block_size=16, weight_threshold=0),
        "constexpr_blockwise_shift_scale"),
    # the converter's default recipes (coreml_convert.convert.RECIPES / compress)
    "recipe_int4_symmetric_block8_ios18": (TARGET, lambda: ct.optimize.coreml.OpLinearQuantizerConfig(
        mode="linear_symmetric", dtype="int4", granularity="per_block", block_size=8, weight_threshold=0),
        "constexpr_blockwise_shift_scale"),
    "palettize_recipe_lut6_uniform_grouped16_ios18": (TARGET, lambda: ct.optimize.coreml.OpPalettizerConfig(
        mode="uniform", nbits=6, granularity="per_grouped_channel", group_size=16, weight_threshold=0),
        "constexpr_lut_to_dense"),
    "palettize_recipe_lut4_uniform_grouped16_ios18": (TARGET, lambda: ct.optimize.coreml.OpPalettizerConfig(
        mode="uniform", nbits=4, granularity="per_grouped_channel", group_size=16, weight_threshold=0),
        "constexpr_lut_to_dense"),
    "recipe_int8_symmetric_per_channel_ios18": (TARGET, lambda: ct.optimize.coreml.OpLinearQuantizerConfig(
        mode="linear_symmetric", dtype="int8", granularity="per_channel", weight_threshold=0),
        "constexpr_blockwise_shift_scale"),
}


@pytest.mark.parametrize("name", sorted(COMPRESSIONS))
def test_compressed_weights(name, tmp_path):
    target, make_config, constexpr = COMPRESSIONS[name]
    if "kmeans" in name or "vector" in name:
        import sklearn  # noqa: F401  (k-means palettization needs scikit-learn, a .[dev] dependency)
    torch.manual_seed(0)
    module = TwoLayer().eval()
    inputs = {"x": rand(1, 16, 2, 1)}
    traced = torch.jit.trace(module, tuple(_t(v) for v in inputs.values()))
    ml = ct.convert(traced, inputs=[ct.TensorType(name="x", shape=(1, 16, 2, 1))], convert_to="mlprogram",
                    compute_precision=ct.precision.FLOAT32, minimum_deployment_target=target)
    config = ct.optimize.coreml.OptimizationConfig(global_config=make_config())
    if "palettize" in name:
        ml = ct.optimize.coreml.palettize_weights(ml, config)
    elif "prune" in name:
        ml = ct.optimize.coreml.prune_weights(ml, config)
    else:
        ml = ct.optimize.coreml.linear_quantize_weights(ml, config)
    path = _save(ml, tmp_path)
    assert constexpr in op_types(path)
    names = [o.name for o in ml.get_spec().description.output]
    ref_dense = _decompressed_reference(path, module, inputs)  # also checks our decompression
    got = run_program(path, inputs)
    check(ref_dense, got, names, "fp32")


def _const_args(**values):
    class Op:
        op_type, name = "constexpr_test", "w"

    return mil_ops.Args(Op(), values)


def test_blockwise_shift_scale_by_hand():
    """iOS18 constexpr_blockwise_shift_scale: data [2, 8] int4, one scale (and offset) per
    block of 4 input channels -> (data - offset) * scale, block by block."""
    data = np.arange(-8, 8, dtype=np.int8).reshape(2, 8)
    scale = np.array([[0.5, 2.0], [1.0, -1.0]], np.float16)
    want = data.astype(np.float32) * np.repeat(scale.astype(np.float32), 4, axis=1)
    got = mil_ops.OPS["constexpr_blockwise_shift_scale"](_const_args(data=data, scale=scale))
    np.testing.assert_array_equal(got, want)
    offset = np.array([[1, -2], [0, 3]], np.int8)
    want = (data - np.repeat(offset, 4, axis=1)).astype(np.float32) * np.repeat(scale.astype(np.float32), 4, axis=1)
    got = mil_ops.OPS["constexpr_blockwise_shift_scale"](_const_args(data=data, scale=scale, offset=offset))
    np.testing.assert_array_equal(got, want)
    # per output channel (int8 symmetric per_channel): scale [C, 1, 1, 1] over a conv weight
    w = np.arange(2 * 3 * 1 * 1, dtype=np.int8).reshape(2, 3, 1, 1)
    s = np.array([2.0, 3.0], np.float32).reshape(2, 1, 1, 1)
    np.testing.assert_array_equal(mil_ops.OPS["constexpr_blockwise_shift_scale"](_const_args(data=w, scale=s)), w * s)


def test_lut_to_dense_grouped_channels_by_hand():
    """iOS18 constexpr_lut_to_dense, per grouped channel: indices [4, 3], one 4-entry LUT per
    group of 2 output channels (lut [2, 1, 4, 1]); and 6-bit indices (64-entry LUT)."""
    indices = np.array([[0, 1, 2], [3, 2, 1], [0, 0, 3], [1, 2, 3]], np.uint8)
    lut = np.array([[10, 11, 12, 13], [20, 21, 22, 23]], np.float16).reshape(2, 1, 4, 1)
    want = np.array([[10, 11, 12], [13, 12, 11], [20, 20, 23], [21, 22, 23]], np.float32)
    got = mil_ops.OPS["constexpr_lut_to_dense"](_const_args(indices=indices, lut=lut))
    np.testing.assert_array_equal(np.asarray(got, np.float32), want)
    rng = np.random.default_rng(0)
    idx = rng.integers(0, 64, size=(32, 8)).astype(np.uint8)
    lut = rng.standard_normal((2, 1, 64, 1)).astype(np.float16)
    got = mil_ops.OPS["constexpr_lut_to_dense"](_const_args(indices=idx, lut=lut))
    want = np.concatenate([lut[0, 0, idx[:16], 0], lut[1, 0, idx[16:], 0]])
    np.testing.assert_array_equal(got, want)


# ---------------------------------------------------------------- states and multifunction


class KVCache(torch.nn.Module):
    """A KV-cache-like buffer: each call writes one row (chosen by a one-hot mask) in place."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(32, 32)
        self.register_buffer("cache", torch.zeros(1, 8, 32))
        self.register_buffer("count", torch.zeros(1, 4, 32))

    def forward(self, x, onehot):
        k = self.proj(x)  # [1, 1, 32]
        self.cache.mul_(1.0 - onehot).add_(k * onehot)  # onehot [1, 8, 1]
        self.count[:, 1:3, :] = self.count[:, 1:3, :] + 1.0  # slice_update
        scores = (self.cache @ k.transpose(1, 2)).softmax(1)  # [1, 8, 1]
        return (scores * self.cache).sum(1) + self.count.sum(1)


def _kv_steps():
    out = []
    for pos in (0, 3, 5):
        onehot = np.zeros((1, 8, 1), np.float32)
        onehot[0, pos] = 1
        out.append({"x": rand(1, 1, 32, seed=pos), "onehot": onehot})
    return out


def test_stateful_kv_cache(tmp_path):
    torch.manual_seed(0)
    module = KVCache().eval()
    steps = _kv_steps()
    states = [
        ct.StateType(wrapped_type=ct.TensorType(shape=(1, 8, 32), dtype=np.float16), name="cache"),
        ct.StateType(wrapped_type=ct.TensorType(shape=(1, 4, 32), dtype=np.float16), name="count"),
    ]
    path, names = convert_torch(module, steps[0], "fp16", tmp_path, states=states)
    ops = set(op_types(path))
    assert {"read_state", "coreml_update_state", "slice_update"} <= ops
    with torch.no_grad():  # tracing ran forward: reset the buffers
        module.cache.zero_()
        module.count.zero_()
    state = make_states(path)
    assert set(state) == {"cache", "count"} and state["cache"].dtype == np.float16
    for step in steps:
        ref = torch_outputs(module, step)
        got = run_program(path, step, states=state)
        check(ref, got, names, "fp16")
        assert psnr(module.cache.numpy(), state["cache"]) >= FP16_MIN_DB  # updated in place
        np.testing.assert_array_equal(state["count"], module.count.numpy())
    with pytest.raises(ProgramError, match="state 'cache'"):
        run_program(path, steps[0], states={"cache": np.zeros((1, 2, 32), np.float16), "count": state["count"]})


def test_multifunction(tmp_path):
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.SiLU()).eval()
    prefill, decode = {"x": rand(1, 8, 16)}, {"x": rand(1, 1, 16, seed=1)}
    p_path, _ = convert_torch(module, prefill, "fp16", tmp_path, name="prefill")
    d_path, _ = convert_torch(module, decode, "fp16", tmp_path, name="decode")
    desc = ct.utils.MultiFunctionDescriptor()
    desc.add_function(str(p_path), src_function_name="main", target_function_name="prefill")
    desc.add_function(str(d_path), src_function_name="main", target_function_name="decode")
    desc.default_function_name = "prefill"
    out = tmp_path / "multi.mlpackage"
    ct.utils.save_multifunction(desc, str(out))
    for fn, inputs in (("prefill", prefill), ("decode", decode)):
        got = list(run_program(out, inputs, function=fn).values())
        assert got[0].shape == (1, inputs["x"].shape[1], 16)
        assert psnr(torch_outputs(module, inputs)[0], got[0]) >= FP16_MIN_DB
    with pytest.raises(ProgramError, match="no function 'main'"):
        run_program(out, prefill)


# ---------------------------------------------------------------- gate 2 and failures


class Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.norm = torch.nn.LayerNorm(64)
        self.fc1 = torch.nn.Linear(64, 128)
        self.fc2 = torch.nn.Linear(128, 64)

    def forward(self, x):
        return x + self.fc2(F.gelu(self.fc1(self.norm(x))))


def test_broken_weight_fails_gate2(tmp_path):
    """One wrong weight in the converted program: PSNR vs the intact torch module drops < 35 dB."""
    torch.manual_seed(0)
    good = Block().eval()
    broken = Block().eval()
    broken.load_state_dict(good.state_dict())
    with torch.no_grad():
        broken.fc2.weight[5, 17] += 3.0  # a single element
    inputs = {"x": rand(1, 16, 64)}
    ref = torch_outputs(good, inputs)[0]
    good_path, _ = convert_torch(good, inputs, "fp16", tmp_path, name="good")
    bad_path, _ = convert_torch(broken, inputs, "fp16", tmp_path, name="bad")
    good_db = min_psnr({"y": ref}, {"y": next(iter(run_program(good_path, inputs).values()))})
    bad_db = min_psnr({"y": ref}, {"y": next(iter(run_program(bad_path, inputs).values()))})
    print(f"gate 2: intact {good_db:.1f} dB, one broken weight {bad_db:.1f} dB")
    assert good_db >= GATE2_MIN_DB + 15, good_db
    assert bad_db < GATE2_MIN_DB, bad_db


def test_unknown_op_fails_loudly(tmp_path):
    x = rand(1, 4, 6, 6)

    def build(x):
        return mb.relu(x=mb.local_response_norm(x=x, size=3, name="lrn_7"))

    prog = mb.program(input_specs=[mb.TensorSpec(shape=x.shape)], opset_version=TARGET)(build)
    ml = ct.convert(prog, convert_to="mlprogram", minimum_deployment_target=TARGET)
    path = _save(ml, tmp_path)
    assert unsupported_ops(path) == ["local_response_norm"]
    with pytest.raises(UnsupportedOpError, match=r"'local_response_norm' \(op 'lrn_7[^']*'\)"):
        run_program(path, {"x": x})


def test_bad_inputs_are_clear_errors(tmp_path):
    module = torch.nn.Linear(4, 3)
    path, _ = convert_torch(module, {"x": rand(2, 4)}, "fp32", tmp_path)
    with pytest.raises(ProgramError, match="missing"):
        run_program(path, {"y": rand(2, 4)})
    with pytest.raises(ProgramError, match="shape"):
        run_program(path, {"x": rand(3, 4)})
    with pytest.raises(ProgramError, match="no Core ML model"):
        run_program(tmp_path / "absent.mlpackage", {})
    assert issubclass(UnsupportedOpError, MobileOError) and issubclass(ProgramError, MobileOError)
    ml = ct.models.MLModel(str(path), skip_model_load=True)  # an MLModel works as well as a path
    np.testing.assert_allclose(
        next(iter(run_program(ml, {"x": rand(2, 4)}).values())), torch_outputs(module, {"x": rand(2, 4)})[0],
        rtol=1e-5, atol=1e-6,
    )


def test_metrics():
    ref = np.array([1.0, -2.0, 4.0])
    assert psnr(ref, ref) == math.inf
    assert psnr(ref, ref + np.array([0.0, 0.0, 0.04])) == pytest.approx(20 * math.log10(4.0 / math.sqrt(0.04**2 / 3)))
    assert psnr(ref, np.array([1.0, np.nan, 4.0])) == -math.inf
    assert max_relative_error(ref, ref * 1.001) == pytest.approx(0.001)
    assert min_psnr({"a": ref, "b": ref}, {"a": ref, "b": ref * 1.01}) == psnr(ref, ref * 1.01)
    with pytest.raises(MobileOError):
        psnr(ref, ref[:2])


class PositionCache(torch.nn.Module):
    """The llm's cache write: this call's rows into slots position .. position+S-1 of a
    (layers, heads, T, D) state, at a runtime int32 index (slice_update)."""

    def __init__(self):
        super().__init__()
        self.register_buffer("cache", torch.zeros(2, 2, 32, 16))

    def forward(self, x, position):
        start = position[0]
        for layer in range(2):
            self.cache[layer:layer + 1, :, start:start + x.shape[2], :] = x * (layer + 1)
        return self.cache[1:2].sum(dim=2)


def test_slice_update_at_a_runtime_position(tmp_path):
    """mil_exec runs a state write at an int32 input position: only those slots change, and
    the largest |activation| of the run is tracked."""
    from coreml_convert.mil_exec import track_activations

    module = PositionCache().eval()
    example = {"x": rand(1, 2, 3, 16, seed=1), "position": np.array([5], np.int32)}
    states = [ct.StateType(wrapped_type=ct.TensorType(shape=(2, 2, 32, 16), dtype=np.float16), name="cache")]
    path, names = convert_torch(module, example, "fp16", tmp_path, states=states)
    assert "slice_update" in op_types(path)
    state = make_states(path)
    for pos in (0, 7, 29):  # 29 + 3 = 32: the last slots
        x = rand(1, 2, 3, 16, seed=pos)
        with track_activations() as peak:
            run_program(path, {"x": x, "position": np.array([pos], np.int32)}, states=state)
        changed = np.flatnonzero(np.any(state["cache"] != 0, axis=(0, 1, 3)))
        assert set(range(pos, pos + 3)) <= set(changed.tolist())
        np.testing.assert_allclose(state["cache"][1, :, pos:pos + 3], 2 * x[0], rtol=2e-3, atol=1e-3)
        assert peak.value >= float(np.abs(2 * x).max()) * 0.99 and peak.op is not None
    assert sorted(np.flatnonzero(np.any(state["cache"] != 0, axis=(0, 1, 3))).tolist()) == [0, 1, 2, 7, 8, 9, 29, 30, 31]

