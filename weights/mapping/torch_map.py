"""Checkpoint tensors -> the Core ML (PyTorch, Neural-Engine layout) modules.

Per-tensor transforms only; keys are unchanged, because the torch modules in coreml_convert/
use the component-local checkpoint names as parameter paths (as weights/mapping/mlx_map.py does for
MLX).  The Neural-Engine modules express ``nn.Linear`` as a 1x1 ``nn.Conv2d`` and
``nn.Conv1d`` as a (1, k) ``nn.Conv2d``, so:

  * a Linear weight [O, I]      -> [O, I, 1, 1]
  * a Conv1d weight [O, I/g, k] -> [O, I/g, 1, k]

Everything else (conv2d kernels, norms, biases, embeddings, tables) passes through.  Pure
numpy: this module does not import torch until :func:`load_torch` is called.
"""

from __future__ import annotations

from typing import Callable, Iterable

import numpy as np

Tensors = dict[str, np.ndarray]

# 2-D ``*.weight`` tensors that are NOT Linear weights, per component
NOT_LINEAR: dict[str, frozenset[str]] = {
    "llm": frozenset({"model.embed_tokens.weight"}),
    "vision": frozenset({"head.proj"}),  # used as x @ proj, never loaded as a Linear
}


def linear_to_conv(tensors: Tensors, keep: Iterable[str] = ()) -> Tensors:
    """Every 2-D ``*.weight`` (not in ``keep``) as a 1x1 conv kernel; keys unchanged."""
    keep = frozenset(keep)
    return {k: v[:, :, None, None] if v.ndim == 2 and k.endswith(".weight") and k not in keep else v
            for k, v in tensors.items()}


def conv1d_to_conv2d(tensors: Tensors) -> Tensors:
    """Every 3-D ``*.weight`` (a Conv1d kernel) as a (1, k) Conv2d kernel."""
    return {k: v[:, :, None, :] if v.ndim == 3 and k.endswith(".weight") else v
            for k, v in tensors.items()}


TRANSFORMS: dict[str, Callable[[Tensors], Tensors]] = {
    "llm": lambda t: linear_to_conv(t, NOT_LINEAR["llm"]),
    "vision": lambda t: linear_to_conv(t, NOT_LINEAR["vision"]),
    "projector": linear_to_conv,
    "mcp": lambda t: conv1d_to_conv2d(linear_to_conv(t)),
    "dit": linear_to_conv,
    "vae": linear_to_conv,
}


def to_torch(component: str, tensors: Tensors) -> Tensors:
    """Component-local checkpoint tensors -> the Neural-Engine module's tensors (same keys)."""
    if component not in TRANSFORMS:
        raise ValueError(f"no torch transforms for component {component!r}; one of {sorted(TRANSFORMS)}")
    return {k: np.require(v, requirements="C") for k, v in TRANSFORMS[component](tensors).items()}


def load_torch(module, ckpt, component: str, prefix: str | None = None,
               tensors: Tensors | None = None, keys: Iterable[str] | None = None):
    """Fill ``module`` (a torch.nn.Module named with the checkpoint's local keys) from ``ckpt``.

    ``prefix``: only the component's keys starting with it (e.g. "decoder." of the VAE).
    ``keys``: only these local keys (e.g. ``Checkpoint.used_keys``).
    ``tensors``: already-loaded local tensors to use instead of reading ``ckpt``.
    Shapes are checked first (``ckpt.check_shapes``: one clear line naming key and file),
    then loaded strictly.  Read from ``ckpt``, tensors are read and copied one at a time, so
    loading peaks at the module plus its largest tensor (not plus a second copy of every
    weight).  Returns the module.
    """
    import torch

    if tensors is None:
        wanted = list(ckpt.keys(component)) if keys is None else list(keys)
        if prefix is not None:
            wanted = [k for k in wanted if k.startswith(prefix)]
        return _load_streamed(module, ckpt, component, wanted)
    if prefix is not None:
        tensors = {k: v for k, v in tensors.items() if k.startswith(prefix)}
    mapped = to_torch(component, tensors)
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    ckpt.check_shapes(component, expected=expected, got={k: v.shape for k, v in mapped.items()})
    module.load_state_dict({k: torch.from_numpy(v.astype(np.float32, copy=False))
                            if v.dtype.kind == "f" else torch.from_numpy(v)
                            for k, v in mapped.items()}, strict=True)
    return module


def _load_streamed(module, ckpt, component: str, keys: list[str]):
    """:func:`load_torch` from the checkpoint, one tensor at a time (same checks, same values:
    ``load_state_dict`` copies each tensor into its parameter the same way)."""
    import torch

    shapes = ckpt.shapes(component)
    # the mapped shapes without reading: np.empty reserves address space, touches no page
    mapped = to_torch(component, {k: np.empty(shapes[k], np.uint8) for k in keys})
    state = module.state_dict(keep_vars=True)
    expected = {k: tuple(v.shape) for k, v in state.items()}
    ckpt.check_shapes(component, expected=expected, got={k: v.shape for k, v in mapped.items()})
    del mapped
    with torch.no_grad():
        for k in keys:
            v = to_torch(component, ckpt.load(component, [k]))[k]
            state[k].copy_(torch.from_numpy(v.astype(np.float32, copy=False)) if v.dtype.kind == "f"
                           else torch.from_numpy(v))
            del v
    return module
