"""FastViTHD and the mlp2x_gelu projector in MLX vs the upstream torch references.

Reference: timm ``fastvit_mci3`` (re-parameterized), filled from the Apple-named checkpoint
tensors by ``weights.mapping.vision_keys.to_timm_state``; torch ``Linear-GELU-Linear`` for the projector.
Random weights in the real key layout.  fp32 relative error = max|ours - ref| / max|ref|.
"""

import numpy as np
import pytest

import torch
import timm  # noqa: F401

import mlx.core as mx  # noqa: E402

from mlx_model.components.projector import Projector  # noqa: E402
from mlx_model.components.vision import VisionTower  # noqa: E402
from weights.references import upstream  # noqa: E402
from weights.core.configs import VisionConfig  # noqa: E402
from weights.core.errors import WeightsError  # noqa: E402
from weights.loading.synthetic import random_tensors  # noqa: E402
from weights.mapping.vision_keys import timm_shape_to_apple, timm_to_apple, to_timm_state  # noqa: E402
from metrics import rel_err  # noqa: E402

pytestmark = pytest.mark.torch

TOL = 1e-4


def apple_layout(cfg: VisionConfig) -> dict:
    """Checkpoint (Apple) names and shapes of a FastViTHD built by timm on the meta device."""
    with torch.device("meta"):
        model = upstream.fastvit(cfg)
    return {timm_to_apple(k): timm_shape_to_apple(k, tuple(v.shape))
            for k, v in model.state_dict().items() if timm_to_apple(k) is not None}


def timm_tokens(cfg: VisionConfig, tensors: dict, pixels: np.ndarray) -> np.ndarray:
    """[B, S, S, 3] -> [B, N, C] as Mobile-O takes them (forward_features, flatten, transpose)."""
    model = upstream.load_state(upstream.fastvit(cfg), to_timm_state(tensors))
    with torch.no_grad():
        out = model.forward_features(torch.from_numpy(pixels).permute(0, 3, 1, 2))
    return out.flatten(2).transpose(1, 2).numpy()


def photo(size: int) -> np.ndarray:
    import skimage.data as skdata
    from mlx_model.support.preprocess import preprocess
    from weights.core.configs import ImagePreprocess

    return preprocess(skdata.coffee(), ImagePreprocess(size=size))[None]


def test_tiny_checkpoint_vision_and_projector(tiny_ckpt, parity):
    cfg = tiny_ckpt.config
    tensors = tiny_ckpt.load("vision")
    tower = VisionTower.from_checkpoint(tiny_ckpt)
    pixels = np.random.default_rng(0).uniform(0, 1, (2, cfg.vision.image_size, cfg.vision.image_size, 3)).astype(np.float32)
    ours = tower(mx.array(pixels))
    ref = timm_tokens(cfg.vision, tensors, pixels)
    assert ours.shape == (2, cfg.vision.num_tokens, cfg.mm_hidden_size) == ref.shape
    parity("vision tiny", "mlx fp32", "max_rel_err", rel_err(ours, ref), at_most=TOL)

    proj = Projector.from_checkpoint(tiny_ckpt)
    ref_proj = upstream.build("projector", cfg, tiny_ckpt.load("projector"))
    with torch.no_grad():
        want = ref_proj(torch.from_numpy(ref)).numpy()
    got = proj(mx.array(ref))
    assert got.shape == (2, cfg.vision.num_tokens, cfg.llm.hidden_size)
    assert rel_err(got, want) <= TOL


@pytest.mark.slow
def test_full_width_at_1024(parity):
    """Real embed dims, head dim, kernels and 1024^2 input; one block per stage."""
    cfg = VisionConfig(layers=(1, 1, 1, 1, 1))
    tensors = random_tensors(apple_layout(cfg), "vision", seed=1)
    pixels = photo(1024)
    ours = VisionTower.from_tensors(cfg, tensors)(mx.array(pixels))
    ref = timm_tokens(cfg, tensors, pixels)
    assert ours.shape == (1, 256, 3072) == ref.shape
    err = rel_err(ours, ref)
    parity("vision full-width 1024px", "mlx fp32", "max_rel_err", err, at_most=TOL)

    # the real projector width 3072 -> 896 -> 896 on those features
    proj_t = upstream.projector(3072, 896)
    proj_w = {k: v.detach().numpy() for k, v in proj_t.state_dict().items()}
    proj = Projector(3072, 896)
    proj.load_weights([(k, mx.array(v)) for k, v in proj_w.items()])
    with torch.no_grad():
        want = proj_t(torch.from_numpy(ref)).numpy()
    assert rel_err(proj(mx.array(ref)), want) <= TOL


@pytest.mark.full
def test_full_depth_at_1024(full_ckpt):
    cfg = full_ckpt.config
    tensors = full_ckpt.load("vision")
    pixels = photo(cfg.vision.image_size)
    ours = VisionTower.from_checkpoint(full_ckpt)(mx.array(pixels))
    ref = timm_tokens(cfg.vision, tensors, pixels)
    assert ours.shape == (1, 256, 3072)
    assert rel_err(ours, ref) <= TOL


def test_parameter_paths_are_checkpoint_names(tiny_ckpt):
    from mlx.utils import tree_flatten

    names = {k for k, _ in tree_flatten(VisionTower(tiny_ckpt.config.vision).parameters())}
    from weights.mapping.layout import UNUSED

    assert names == set(tiny_ckpt.keys("vision")) - UNUSED["vision"]  # the CLIP head is not built
    assert "network.1.proj.0.lkb_reparam.weight" in names
    assert "conv_exp.se.reduce.weight" in names


def test_mismatched_config_names_the_tensor(tiny_ckpt):
    from weights.mapping.mlx_map import load_component

    wrong = VisionTower(tiny_ckpt.config.vision.replace(embed_dims=(8, 16, 32, 64, 128)))
    with pytest.raises(WeightsError, match=r"model\.vision_tower\.vision_tower\.model\.\S+ has shape"):
        load_component(wrong, tiny_ckpt, "vision", tensors=tiny_ckpt.load_used("vision"))
