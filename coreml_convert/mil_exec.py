"""Execute a saved Core ML program's MIL on numpy (gate 2 of the conversion, no Mac needed).

Core ML cannot ``predict`` on Linux, so a converted ``.mlpackage`` is checked by running its MIL
program op by op on numpy::

    outputs = run_program("out/dit.mlpackage", {"hidden_states": x, ...})

The program is rebuilt from the saved proto and weight blobs (``milproto.load``), so what runs is
what was saved. Every op result is rounded to the dtype the program declares for it: an fp16
program is emulated by computing each op in float32 and rounding its result to float16. Ops run
through coremltools' own ``value_inference`` where it is numpy on concrete values and correct
(:data:`coreml_convert.mil_ops.DELEGATED`); conv, norms, resampling, ``constexpr_*``
decompression and the rest are small numpy implementations (:data:`coreml_convert.mil_ops.OPS`).
An op in neither set raises :class:`UnsupportedOpError` naming its type and name: an unknown op
never passes silently. States (iOS18 ``read_state`` / ``coreml_update_state``) live in the
caller's ``states`` arrays and are updated in place; ``function`` selects a function of a
multifunction program.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np

from coreml_convert import mil_ops
from weights.core.errors import MobileOError


class UnsupportedOpError(MobileOError):
    """A MIL op the numpy executor does not implement."""


class ProgramError(MobileOError):
    """A program that cannot be loaded or run with the given inputs (or an executor mismatch)."""


# ---------------------------------------------------------------- loading


def load_program(model_or_path, functions=None):
    """The MIL ``Program`` of a saved model: a path, a ``ct.models.MLModel`` or a ``Program``.

    Always rebuilt from the serialized spec and weight files (``_mil_program`` is None after
    loading a package from disk, and rebuilding checks the saved form, not the in-memory one).
    ``functions``: load only these functions of a multifunction program (each function's
    constants are loaded on their own, so a bundle whose functions share one weight set would
    otherwise hold one copy per function).
    """
    from coremltools.converters.mil.mil.program import Program

    if isinstance(model_or_path, Program):
        return model_or_path
    import coremltools as ct
    from coremltools.converters.mil.frontend.milproto.load import load

    model = model_or_path
    if isinstance(model, (str, Path)):
        path = Path(model)
        if not path.exists():
            raise ProgramError(f"no Core ML model at {path}.", "pass the path of a saved .mlpackage.")
        model = ct.models.MLModel(str(path), skip_model_load=True)
    if not isinstance(model, ct.models.MLModel):
        raise ProgramError(
            f"run_program got a {type(model).__name__}.", "pass a .mlpackage path, an MLModel or a MIL Program."
        )
    spec = model.get_spec()
    if spec.WhichOneof("Type") != "mlProgram":
        raise ProgramError(
            f"model is a {spec.WhichOneof('Type')}, not an ML program.", "convert with convert_to='mlprogram'."
        )
    if functions is not None:
        spec = _only_functions(spec, functions)
    return load(spec, spec.specificationVersion, model.weights_dir or "")


def _only_functions(spec, functions):
    """A copy of an ML program spec keeping only ``functions`` (the first one the default)."""
    from coremltools.proto import Model_pb2

    wanted = list(functions)
    missing = [f for f in wanted if f not in spec.mlProgram.functions]
    if missing:
        raise ProgramError(f"program has no function {missing[0]!r} (functions: "
                           f"{', '.join(sorted(spec.mlProgram.functions))}).", "pass one of those.")
    trimmed = Model_pb2.Model()
    trimmed.CopyFrom(spec)
    for name in list(trimmed.mlProgram.functions):
        if name not in wanted:
            del trimmed.mlProgram.functions[name]
    if trimmed.description.defaultFunctionName and trimmed.description.defaultFunctionName not in wanted:
        trimmed.description.defaultFunctionName = wanted[0]
    keep = [f for f in trimmed.description.functions if f.name in wanted]
    if len(trimmed.description.functions):
        del trimmed.description.functions[:]
        trimmed.description.functions.extend(keep)
    return trimmed


def op_types(model_or_path, function: str = "main") -> list[str]:
    """Sorted op types of one function (for reports and coverage checks)."""
    func = _function(load_program(model_or_path), function)
    return sorted({op.op_type for op in _walk(func)})


def unsupported_ops(model_or_path, function: str = "main") -> list[str]:
    """Op types of one function that the executor would reject (empty list = runnable)."""
    return [t for t in op_types(model_or_path, function) if not _supported(t)]


def _supported(op_type: str) -> bool:
    return op_type in ("const", "read_state", "coreml_update_state") or op_type in mil_ops.OPS or (
        op_type in mil_ops.DELEGATED
    )


def _walk(func):
    for op in func.operations:
        yield op
        for block in op.blocks:
            yield from _walk(block)


def _function(program, name: str):
    if name not in program.functions:
        raise ProgramError(
            f"program has no function {name!r} (functions: {', '.join(sorted(program.functions))}).",
            "pass one of those as function=.",
        )
    return program.functions[name]


# ---------------------------------------------------------------- dtypes


def _np_dtype(var) -> np.dtype:
    from coremltools.converters.mil.mil import types

    t = var.dtype
    if types.is_state(var.sym_type):
        t = var.sym_type.wrapped_type().get_primitive()
    return np.dtype(types.nptype_from_builtin(t))


def _compute(value):
    """A value as the executor computes on it: float16/float64 -> float32, the rest as is.

    Const scalars stay scalars (value_inference code passes e.g. ``keep_dims`` to numpy)."""
    if isinstance(value, np.ndarray):
        return value.astype(np.float32) if value.dtype.kind == "f" and value.dtype != np.float32 else value
    if isinstance(value, np.floating):
        return np.float32(value)
    if isinstance(value, np.generic):  # np.bool_ / np.int32 / np.str_ -> Python scalars
        return value.item()
    return value


def _finish(var, value, op) -> np.ndarray:
    """Round an op result to the var's declared dtype; check it against the declared shape."""
    dtype = _np_dtype(var)
    value = np.asarray(value)
    if value.dtype != dtype:
        with np.errstate(over="ignore", invalid="ignore"):
            value = value.astype(dtype)
    declared = var.shape
    if len(declared) != value.ndim or any(
        isinstance(d, (int, np.integer)) and d != s for d, s in zip(declared, value.shape)
    ):
        raise ProgramError(
            f"op {op.op_type} {op.name!r} produced shape {tuple(value.shape)} but the program declares "
            f"{tuple(declared)} for {var.name!r}.",
            "this is an executor bug or inputs outside the model's allowed shapes.",
        )
    return value


# ---------------------------------------------------------------- value_inference delegation


class _ValueVar:
    """Stands in for a Var with a concrete value while an op's value_inference runs."""

    def __init__(self, value):
        self.val = value

    @property
    def sym_val(self):
        return self.val

    @property
    def shape(self):
        return tuple(np.shape(self.val))

    @property
    def rank(self):
        return np.ndim(self.val)

    @property
    def dtype(self):
        from coremltools.converters.mil.mil import types

        return types.numpy_type_to_builtin_type(np.asarray(self.val).dtype)

    @property
    def sym_type(self):
        from coremltools.converters.mil.mil import types

        if self.rank == 0:
            return self.dtype
        return types.tensor(self.dtype, self.shape)


def _value_inference(op, values: dict):
    """Run ``op``'s own value_inference on concrete input values.

    A shallow copy of the op (same class, so ``super()`` and static helpers work) whose input
    attributes are :class:`_ValueVar` s; the program's op itself is left untouched."""
    view = object.__new__(type(op))
    view.__dict__.update(op.__dict__)
    view_inputs = {}
    for name in op._input_types:
        value = values.get(name)
        if value is not None:
            value = [_ValueVar(v) for v in value] if isinstance(value, list) else _ValueVar(value)
        view_inputs[name] = value
        setattr(view, name, value)
    view._input_vars = view_inputs
    result = view.value_inference()
    if result is None:
        raise ProgramError(f"value_inference of {op.op_type} {op.name!r} gave no value.", "report it.")
    return result


# ---------------------------------------------------------------- running


class _State:
    def __init__(self, name: str, array: np.ndarray):
        self.name = name
        self.array = array


def _prepare_states(func, states: dict | None) -> dict[str, _State]:
    from coremltools.converters.mil.mil import types

    slots = {}
    for name, var in func.inputs.items():
        if not types.is_state(var.sym_type):
            continue
        shape = var.sym_type.wrapped_type().get_shape()
        dtype = _np_dtype(var)
        if states is None:
            array = np.zeros(shape, dtype)  # like a fresh MLState
        elif name not in states:
            raise ProgramError(f"missing state {name!r}.", f"pass states={{'{name}': array of shape {shape}}}.")
        else:
            array = states[name]
            if not isinstance(array, np.ndarray) or tuple(array.shape) != tuple(shape):
                raise ProgramError(
                    f"state {name!r} must be a numpy array of shape {tuple(shape)}, got "
                    f"{getattr(array, 'shape', type(array).__name__)}.",
                    "pass the array returned by make_states().",
                )
        slots[name] = _State(name, array)
    return slots


def make_states(model_or_path, function: str = "main") -> dict[str, np.ndarray]:
    """Zero-filled state arrays for a stateful program (like ``MLModel.make_state()``)."""
    func = _function(load_program(model_or_path), function)
    return {name: slot.array for name, slot in _prepare_states(func, None).items()}


def _check_inputs(func, inputs: dict) -> dict[str, np.ndarray]:
    from coremltools.converters.mil.mil import types

    expected = {n: v for n, v in func.inputs.items() if not types.is_state(v.sym_type)}
    missing = sorted(set(expected) - set(inputs))
    extra = sorted(set(inputs) - set(expected))
    if missing or extra:
        raise ProgramError(
            f"inputs do not match the program: missing {missing}, unexpected {extra}.",
            f"pass exactly {sorted(expected)}.",
        )
    out = {}
    for name, var in expected.items():
        value = np.asarray(inputs[name])
        declared = var.shape
        if len(declared) != value.ndim or any(
            isinstance(d, (int, np.integer)) and d != s for d, s in zip(declared, value.shape)
        ):
            raise ProgramError(
                f"input {name!r} has shape {tuple(value.shape)}, the program takes {tuple(declared)}.",
                "pass an array of that shape.",
            )
        out[name] = value.astype(_np_dtype(var))
    return out


class ActivationPeak:
    """Inside ``with track_activations() as peak``: ``peak.value`` is the largest |x| of any
    floating-point value an op computed (constants and inputs excluded) in the programs run,
    ``peak.op`` the op that made it -- an fp16 program's distance to fp16's 65,504."""

    def __init__(self):
        self.value, self.op = 0.0, None

    def see(self, op, value) -> None:
        a = np.asarray(value)
        if a.dtype.kind == "f" and a.size:
            m = float(np.nanmax(np.abs(a)))
            if m > self.value or not np.isfinite(m):
                self.value, self.op = m, op.name


_PEAK: list[ActivationPeak] = []


@contextlib.contextmanager
def track_activations():
    peak = ActivationPeak()
    _PEAK.append(peak)
    try:
        yield peak
    finally:
        _PEAK.remove(peak)


def run_program(
    model_or_path,
    inputs: dict[str, np.ndarray],
    function: str = "main",
    states: dict[str, np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """Run one function of a saved ML program on numpy; outputs keyed by the program's names.

    ``states`` maps state names to numpy arrays (see :func:`make_states`); they are updated in
    place. Without ``states`` a stateful function starts from zeros and its state is discarded.
    """
    func = _function(load_program(model_or_path), function)
    env: dict[str, object] = dict(_check_inputs(func, inputs))
    env.update(_prepare_states(func, states))
    _run_block(func, env)
    return {var.name: np.asarray(env[var.name]) for var in func.outputs}


def _value_of(var, env):
    if var.name in env:
        return env[var.name]
    if var.val is not None:
        return var.val
    raise ProgramError(f"variable {var.name!r} is used before it is computed.", "report it: executor bug.")


def _inputs_of(op):
    for var in op.inputs.values():
        yield from var if isinstance(var, (list, tuple)) else (var,)


def _frees(block) -> dict[int, list[str]]:
    """Names to drop from the environment after each op (their last use), so a large program
    holds only live activations; block outputs and states are kept."""
    keep = {var.name for var in block.outputs} | set(block.inputs)
    last: dict[str, int] = {}
    for i, op in enumerate(block.operations):
        for var in op.outputs:
            last.setdefault(var.name, i)  # produced and never read: dropped at once
        for var in _inputs_of(op):
            last[var.name] = i
    frees: dict[int, list[str]] = {}
    for name, i in last.items():
        if name not in keep:
            frees.setdefault(i, []).append(name)
    return frees


def _run_block(block, env: dict) -> None:
    frees = _frees(block)
    for index, op in enumerate(block.operations):
        op_type = op.op_type
        if op_type == "const":
            continue
        if op.blocks:
            raise UnsupportedOpError(
                f"control-flow op {op_type} {op.name!r} is not supported by the MIL executor.",
                "convert without data-dependent control flow.",
            )
        if op_type == "read_state":
            results = (_compute(env[op.input.name].array).copy(),)
        elif op_type == "coreml_update_state":
            slot = env[op.state.name]
            value = _value_of(op.value, env)
            slot.array[...] = np.asarray(value).astype(slot.array.dtype)
            results = (_compute(value),)
        else:
            values = {}
            for name, var in op.inputs.items():
                if isinstance(var, (list, tuple)):
                    values[name] = [_compute(_value_of(v, env)) for v in var]
                else:
                    values[name] = _compute(_value_of(var, env))
            fn = mil_ops.OPS.get(op_type)
            if fn is not None:
                result = fn(mil_ops.Args(op, values))
            elif op_type in mil_ops.DELEGATED:
                result = _value_inference(op, values)
            else:
                raise UnsupportedOpError(
                    f"MIL op {op_type!r} (op {op.name!r}) is not supported by the numpy executor.",
                    "add it to coreml_convert/mil_ops.py with a test in tests/test_mil_exec.py.",
                )
            results = tuple(result) if len(op.outputs) > 1 else (result,)
        if len(results) != len(op.outputs):
            raise ProgramError(
                f"op {op_type} {op.name!r} gave {len(results)} outputs, the program declares {len(op.outputs)}.",
                "report it: executor bug.",
            )
        for var, value in zip(op.outputs, results):
            env[var.name] = _finish(var, value, op)
            for peak in _PEAK:
                peak.see(op, env[var.name])
        for name in frees.get(index, ()):
            env.pop(name, None)
