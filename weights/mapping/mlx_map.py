"""Checkpoint tensors -> MLX arrays, one per-tensor transform per component.

Keys are NOT renamed: the MLX modules use the component-local checkpoint names as their
parameter paths (as mlx-lm uses the Hugging Face names).  Only layouts change:
- convolutions: torch OIHW -> MLX OHWI (2-D), OIK -> OKI (1-D);
- the DiT's 1x1 feed-forward convolutions become ``nn.Linear`` weights [out, in], so they
  quantize like every other Linear (MLX quantizes Linear/Embedding only).

    mapped = to_mlx("dit", ckpt.load("dit"))
    load_component(module, ckpt, "dit")        # shape check with clear errors, strict load
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from weights.mapping import vision_keys as _vision

# DiT 1x1 convolutions expressed as Linear layers in MLX (leaf names inside a block's ``ff``)
DIT_LINEAR_CONVS = ("ff.conv_inverted.weight", "ff.conv_point.weight")


def conv_to_mlx(value: np.ndarray) -> np.ndarray:
    """OIHW -> OHWI and OIK -> OKI; other ranks unchanged."""
    if value.ndim == 4:
        return value.transpose(0, 2, 3, 1)
    if value.ndim == 3:
        return value.transpose(0, 2, 1)
    return value


def _identity(key: str, value: np.ndarray) -> np.ndarray:
    return value


def _dit(key: str, value: np.ndarray) -> np.ndarray:
    if key.endswith(DIT_LINEAR_CONVS):
        return value.reshape(value.shape[0], value.shape[1])
    return conv_to_mlx(value)


def _convs(key: str, value: np.ndarray) -> np.ndarray:
    return conv_to_mlx(value)


# component -> fn(local key, numpy array) -> numpy array.  The vision / projector helpers
# add their entries here (their transforms live in weights/mapping/vision_keys.py).
TRANSFORMS: dict[str, Callable[[str, np.ndarray], np.ndarray]] = {
    "llm": _identity,
    "mcp": _convs,
    "dit": _dit,
    "vae": _convs,
    "vision": _vision.mlx_vision,
    "projector": _vision.mlx_projector,
}


def to_mlx(component: str, tensors: dict[str, np.ndarray]) -> dict:
    """{local key: mx.array} with the component's per-tensor transform; keys unchanged."""
    import mlx.core as mx

    if component not in TRANSFORMS:
        raise ValueError(f"no MLX transform for component {component!r}; one of {sorted(TRANSFORMS)}")
    fn = TRANSFORMS[component]
    # np.require keeps 0-d tensors 0-d (np.ascontiguousarray makes them shape [1])
    return {k: mx.array(np.require(fn(k, v), requirements="C")) for k, v in tensors.items()}


def load_component(module, ckpt, component: str, tensors: dict[str, np.ndarray] | None = None,
                   keys: Callable[[dict], dict] | None = None):
    """Fill ``module`` (an ``mlx.nn.Module``) with one component of ``ckpt``.

    ``tensors`` defaults to ``ckpt.load(component)``; ``keys`` is an optional mapping step
    on the mapped dict (e.g. mlx-lm's ``sanitize``).  Shapes are checked first so a mismatch
    names the checkpoint key, its file and both shapes.  With ``ckpt`` None, ``tensors`` are
    loaded under MLX's own strict check only (tests on configs no checkpoint holds).
    """
    from mlx.utils import tree_flatten

    mapped = to_mlx(component, ckpt.load(component) if tensors is None else tensors)
    if keys is not None:
        mapped = keys(mapped)
    if ckpt is not None:
        expected = {k: tuple(v.shape) for k, v in tree_flatten(module.parameters())}
        ckpt.check_shapes(component, expected, {k: tuple(v.shape) for k, v in mapped.items()})
    module.load_weights(list(mapped.items()), strict=True)
    return module
