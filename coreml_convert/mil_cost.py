"""Facts read from a MIL function that a device measurement can be compared with.

* :func:`state_traffic` -- bytes of Core ML state one call reads and writes.  A write is the
  ``update`` of each ``slice_update`` on the state's chain (``read_state`` -> ``slice_update``
  ... -> ``coreml_update_state``); a ``coreml_update_state`` whose value is not such a
  slice writes the whole state.  A read is every tensor the rest of the graph takes from
  that chain (e.g. one layer's slice of the cache for attention).  Apple's "On Device Llama
  3.1 with Core ML" write-up (machinelearning.apple.com, 2024) measured an in-place state
  update ~13x faster than copying the cache at 2048 tokens; Anemll's ``qwen_model.py``
  writes one slot at a ``position`` input.
* :func:`function_cost` -- GFLOPs per call (2 x MACs of conv / matmul / linear, one per
  output element elsewhere), weight bytes read per call (the stored bytes of every constant
  and ``constexpr_*`` weight the function reads: compressed bytes when compressed), and the
  state traffic.  Symbolic (enumerated) sizes are counted at the function's default shape.
* :func:`compression_ops` -- each ``constexpr_*`` weight op with its format ("lut" with its
  bits and granularity, "int8-per-channel", "int4-per-block", ...) for the lint's
  "compression" rule.
* :func:`state_index_ops` -- the integer ops that only compute a ``slice_update``'s
  begin/end from an int32 input (the KV-cache position): the lint allows them.
"""

from __future__ import annotations

import math

import numpy as np

CONSTANT_OPS = ("const",)
MATMUL_OPS = ("matmul", "linear")
SLICE_INDEX_ARGS = ("begin", "end", "size")
SLICE_OPS = frozenset("slice_by_index slice_by_size slice_update dynamic_slice".split())  # lint's too


def _walk(block):
    for op in block.operations:
        yield op
        for b in op.blocks:
            yield from _walk(b)


def _ins(op):
    for k, v in op.inputs.items():
        for x in (v if isinstance(v, (list, tuple)) else [v]):
            yield k, x


def dtype_name(var) -> str:
    """The element type of ``var`` (a state's or tensor's), e.g. ``fp16``, ``int32``, ``uint4``."""
    from coremltools.converters.mil.mil import types

    t = var.sym_type
    if types.is_state(t):
        t = t.wrapped_type()
    if types.is_tensor(t):
        t = t.get_primitive()
    return types.builtin_to_string(t)


def _dtype_bits(var) -> int:
    """Bits per element of ``var`` (sub-byte ints such as int4/uint6 included)."""
    name = dtype_name(var)
    digits = "".join(ch for ch in name if ch.isdigit())
    return int(digits) if digits else 8  # bool


def _dim(d, symbols: dict) -> int:
    """A dim's size: symbols of the inputs at their default sizes; a symbol shape inference
    made up inside the graph (e.g. a reshape's -1) at the largest default size (the
    sequence length of our enumerated inputs)."""
    if isinstance(d, (int, np.integer)):
        return int(d)
    try:
        v = d.subs(symbols) if symbols else d
        free = getattr(v, "free_symbols", ())
        if free:
            v = v.subs({f: max(symbols.values(), default=1) for f in free})
        return int(v)
    except (TypeError, ValueError, AttributeError):
        return 1


def _size(var, symbols: dict) -> int:
    """Elements of ``var`` with symbolic dims at their default sizes (``symbols``)."""
    n = 1
    for d in getattr(var, "shape", ()) or ():
        n *= _dim(d, symbols)
    return n


def var_bytes(var, symbols: dict | None = None) -> int:
    return -(-_size(var, symbols or {}) * _dtype_bits(var) // 8)


def _is_int(var) -> bool:
    from coremltools.converters.mil.mil import types

    t = var.sym_type
    if types.is_tensor(t):
        t = t.get_primitive()
    return types.is_int(t) or types.is_bool(t)


# ------------------------------------------------------------------ state


def state_traffic(func, symbols: dict | None = None) -> dict:
    """{"read_bytes", "write_bytes", "whole_state_writes", "writes"} of one call."""
    symbols = symbols or {}
    chain, written, whole, writes = set(), 0, 0, 0
    for op in _walk(func):
        if op.op_type == "read_state":
            chain.add(id(op.outputs[0]))
        elif op.op_type == "slice_update" and id(op.inputs["x"]) in chain:
            chain.add(id(op.outputs[0]))
        elif op.op_type == "coreml_update_state":
            value = op.inputs["value"]
            chain.add(id(op.outputs[0]))
            src = value.op
            if src is not None and src.op_type == "slice_update" and id(src.inputs["x"]) in chain:
                written += var_bytes(src.inputs["update"], symbols)
                writes += 1
            else:
                written += var_bytes(value, symbols)
                whole += 1
    read = 0
    for op in _walk(func):
        if op.op_type in ("slice_update", "coreml_update_state", "read_state"):
            continue
        if any(id(v) in chain for _, v in _ins(op)):
            read += sum(var_bytes(o, symbols) for o in op.outputs)
    return {"read_bytes": read, "write_bytes": written, "whole_state_writes": whole, "writes": writes}


def state_index_ops(func) -> set[int]:
    """ids of the integer ops whose every use is (transitively) a slice op's begin/end/size:
    the position arithmetic of an in-place cache write."""
    allowed: set[int] = set()
    for op in reversed(list(_walk(func))):
        if not op.outputs or not all(_is_int(o) for o in op.outputs):
            continue
        uses = [(c, o) for o in op.outputs for c in o.child_ops]
        if any(o in func.outputs for o in op.outputs) or not uses:
            continue
        if all(id(c) in allowed or (c.op_type in SLICE_OPS and all(k in SLICE_INDEX_ARGS for k, v in _ins(c) if v is o))
               for c, o in uses):
            allowed.add(id(op))
    return allowed


# ------------------------------------------------------------------ compression


def _const_shape(var) -> tuple[int, ...]:
    v = var.val
    return tuple(np.shape(v)) if v is not None else tuple(int(d) for d in var.shape)


def compression_format(op) -> dict:
    """The format of one ``constexpr_*`` weight op."""
    t = op.op_type
    if t == "constexpr_lut_to_dense":
        lut = _const_shape(op.inputs["lut"])
        out = _const_shape(op.outputs[0])
        bits = int(round(math.log2(lut[-2]))) if len(lut) >= 2 else 0
        groups = lut[0] if lut else 1
        gran = "per-tensor" if math.prod(lut[:-2]) == 1 else (
            "per-channel" if groups == out[0] else "per-grouped-channel")
        return {"kind": "lut", "bits": bits, "granularity": gran}
    if t in ("constexpr_blockwise_shift_scale", "constexpr_affine_dequantize"):
        data = op.inputs.get("data", op.inputs.get("quantized_data"))
        scale = _const_shape(op.inputs["scale"])
        dshape = _const_shape(data)
        bits = _dtype_bits(data)
        block = len(scale) == len(dshape) and any(1 < s < d for s, d in zip(scale[1:], dshape[1:]))
        return {"kind": f"int{bits}", "bits": bits, "granularity": "per-block" if block else "per-channel"}
    return {"kind": t.removeprefix("constexpr_"), "bits": 16, "granularity": "-"}


def compression_ops(func) -> list[tuple[object, dict]]:
    """(op, format) for the outermost weight decompression ops (a LUT of int8 entries is one
    LUT weight)."""
    out = []
    for op in _walk(func):
        if not op.op_type.startswith("constexpr_") or op.op_type == "constexpr_cast":
            continue
        users = [c for o in op.outputs for c in o.child_ops]
        if users and all(c.op_type.startswith("constexpr_") for c in users):
            continue  # feeds another decompression op (e.g. the LUT of a LUT-of-int8)
        out.append((op, compression_format(op)))
    return out


# ------------------------------------------------------------------ cost


def _flops(op, symbols: dict) -> int:
    outs = op.outputs
    n = sum(_size(o, symbols) for o in outs)
    if op.op_type == "conv":
        w = op.inputs["weight"]
        k = _size(w, symbols) // max(1, int(w.shape[0]))  # Cin/groups * kh * kw
        return 2 * n * k
    if op.op_type in MATMUL_OPS:
        x = op.inputs["x"]
        tx = op.inputs.get("transpose_x")
        k = x.shape[-2] if tx is not None and tx.val else x.shape[-1]
        return 2 * n * _dim(k, symbols)
    return n


def weight_bytes(func, symbols: dict | None = None) -> int:
    """Stored bytes of the weights the function reads: each ``constexpr_*`` op's stored
    inputs, each non-scalar ``const`` of at least 1 KB that is not such an input."""
    total, inner = 0, set()
    for op in _walk(func):
        if op.op_type.startswith("constexpr_"):
            for _, v in _ins(op):
                if v.op is not None and v.op.op_type == "const":
                    inner.add(id(v))
                    total += var_bytes(v)
    for op in _walk(func):
        if op.op_type == "const" and id(op.outputs[0]) not in inner:
            b = var_bytes(op.outputs[0])
            total += b if b >= 1024 else 0
    return total


def default_symbols(func, default_shapes: dict[str, tuple[int, ...]]) -> dict:
    """symbol -> default size, from the function's inputs and their default shapes."""
    symbols = {}
    for name, var in func.inputs.items():
        want = default_shapes.get(name)
        if want is None:
            continue
        for d, w in zip(getattr(var, "shape", ()) or (), want):
            if not isinstance(d, (int, np.integer)) and hasattr(d, "free_symbols") and d.is_Symbol:
                symbols[d] = int(w)
    return symbols


def function_cost(func, default_shapes: dict | None = None) -> dict:
    """{"gflops", "weight_bytes", "state_read_bytes", "state_write_bytes"} of one call."""
    symbols = default_symbols(func, default_shapes or {})
    flops = sum(_flops(op, symbols) for op in _walk(func)
                if not op.op_type.startswith("constexpr") and op.op_type not in CONSTANT_OPS)
    traffic = state_traffic(func, symbols)
    return {"gflops": round(flops / 1e9, 6), "weight_bytes": weight_bytes(func, symbols),
            "state_read_bytes": traffic["read_bytes"], "state_write_bytes": traffic["write_bytes"],
            "whole_state_writes": traffic["whole_state_writes"]}
