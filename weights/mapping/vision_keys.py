"""FastViTHD key mapping: Apple's MobileCLIP names (the checkpoint) <-> timm ``fastvit_mci3``.

The checkpoint stores Apple's names (docs/model-facts.md section 5).  timm's re-parameterized
``fastvit_mci3`` is the same network under other names; the map below is the one the
facts file gives, in both directions, so the torch reference (timm) and the synthetic
writer share it.
"""

from __future__ import annotations

import re

import numpy as np

# timm stage index -> Apple ``network.<i>`` index
BLOCKS = {0: 0, 1: 2, 2: 4, 3: 7, 4: 10}
DOWNSAMPLE = {1: 1, 2: 3, 3: 5, 4: 8}
POS_EMB = {3: 6, 4: 9}

# renames inside a module path, Apple -> timm (applied to whole dotted segments)
_SEGMENT = [
    ("layer_scale", "layer_scale.gamma"),
    ("layer_scale_1", "layer_scale_1.gamma"),
    ("layer_scale_2", "layer_scale_2.gamma"),
    ("convffn", "mlp"),
    ("proj.0.lkb_reparam", "proj.0.reparam_conv"),  # only the downsample large-kernel conv
    ("se.reduce", "se.fc1"),
    ("se.expand", "se.fc2"),
]

HEAD_PROJ = "head.proj"  # Apple: [3072, 768] used as x @ proj; timm: head.fc.weight = proj.T


def _rename(path: str, pairs) -> str:
    for a, b in pairs:
        path = re.sub(rf"(^|\.){re.escape(a)}(?=\.|$)", rf"\g<1>{b}", path)
    return path


def apple_to_timm(key: str) -> str:
    if key == HEAD_PROJ:
        return "head.fc.weight"
    if m := re.match(r"patch_embed\.(\d+)\.(.*)", key):
        return f"stem.{m[1]}.{m[2]}"
    if key.startswith("conv_exp."):
        return "final_conv." + _rename(key[len("conv_exp."):], _SEGMENT)
    m = re.match(r"network\.(\d+)\.(.*)", key)
    if not m:
        raise KeyError(key)
    net, rest = int(m[1]), m[2]
    for stage, i in BLOCKS.items():
        if i == net:
            return f"stages.{stage}.blocks.{_rename(rest, _SEGMENT)}"
    for stage, i in DOWNSAMPLE.items():
        if i == net:
            return f"stages.{stage}.downsample.{_rename(rest, _SEGMENT)}"
    for stage, i in POS_EMB.items():
        if i == net:
            return f"stages.{stage}.pos_emb.{rest}"
    raise KeyError(key)


def timm_to_apple(key: str) -> str | None:
    """Apple name of a timm key; None for timm-only tensors (``head.fc.bias``)."""
    back = [(b, a) for a, b in reversed(_SEGMENT)]
    if key == "head.fc.weight":
        return HEAD_PROJ
    if key == "head.fc.bias":
        return None
    if m := re.match(r"stem\.(\d+)\.(.*)", key):
        return f"patch_embed.{m[1]}.{m[2]}"
    if key.startswith("final_conv."):
        return "conv_exp." + _rename(key[len("final_conv."):], back)
    m = re.match(r"stages\.(\d+)\.(blocks|downsample|pos_emb)\.(.*)", key)
    if not m:
        raise KeyError(key)
    stage, kind, rest = int(m[1]), m[2], m[3]
    net = {"blocks": BLOCKS, "downsample": DOWNSAMPLE, "pos_emb": POS_EMB}[kind][stage]
    return f"network.{net}.{_rename(rest, back)}"


def to_timm_state(apple: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Checkpoint vision tensors -> a state dict timm's re-parameterized model loads strictly."""
    out = {apple_to_timm(k): v for k, v in apple.items()}
    proj = apple[HEAD_PROJ]
    out["head.fc.weight"] = np.ascontiguousarray(proj.T)
    out["head.fc.bias"] = np.zeros(proj.shape[1], dtype=proj.dtype)
    return out


def timm_shape_to_apple(key: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(reversed(shape)) if key == "head.fc.weight" else tuple(shape)


# ------------------------------------------------------------------ MLX layout
# The MLX modules (mlx_model/components/vision.py, mlx_model/components/projector.py) use the checkpoint's
# Apple names as parameter paths, so these transforms change layouts only, never keys.


def mlx_vision(key: str, value: np.ndarray) -> np.ndarray:
    """Per-tensor transform for MLX (NHWC): convs OIHW -> OHWI, layer scales [C,1,1] -> [C]."""
    leaf = key.rsplit(".", 1)[-1]
    if leaf.startswith("layer_scale"):
        return value.reshape(value.shape[0])
    if value.ndim == 4:
        return value.transpose(0, 2, 3, 1)
    return value  # linears (qkv, proj) are [out, in] in both; norms, biases, head.proj


def mlx_projector(key: str, value: np.ndarray) -> np.ndarray:
    """mlp2x_gelu Linear weights are [out, in] in torch and MLX alike."""
    return value
