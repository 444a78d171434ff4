"""The upstream PyTorch reference modules, built from our configs and filled from a checkpoint.

transformers ``Qwen2ForCausalLM``, timm ``fastvit_mci3`` (re-parameterized), diffusers
``SanaTransformer2DModel`` / ``AutoencoderDC`` / ``DPMSolverMultistepScheduler``.  Needs the
``convert`` extra (torch); the MLX path never imports this module.
"""

from __future__ import annotations

import contextlib

import numpy as np

from weights.core.configs import DiTConfig, LLMConfig, MobileOConfig, SchedulerConfig, VAEConfig, VisionConfig


def fastvit(cfg: VisionConfig):
    import timm

    return timm.create_model("fastvit_mci3", pretrained=False, layers=cfg.layers,
                             embed_dims=cfg.embed_dims, mlp_ratios=(cfg.mlp_ratio,) * len(cfg.layers),
                             cls_ratio=cfg.cls_ratio, num_classes=cfg.projection_dim,
                             inference_mode=True).eval()


def projector(in_dim: int, hidden: int):
    """LLaVA ``mlp2x_gelu``: Linear, GELU (erf), Linear."""
    import torch.nn as nn

    return nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, hidden)).eval()


def qwen2(cfg: LLMConfig):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    conf = Qwen2Config(**cfg.to_hf_dict())
    conf._attn_implementation = "eager"
    return Qwen2ForCausalLM(conf).eval()


def sana(cfg: DiTConfig):
    from diffusers import SanaTransformer2DModel

    return SanaTransformer2DModel(**cfg.to_dict()).eval()


def dcae(cfg: VAEConfig):
    from diffusers import AutoencoderDC

    return AutoencoderDC(**cfg.to_dict()).eval()


def scheduler(cfg: SchedulerConfig):
    from diffusers import DPMSolverMultistepScheduler

    return DPMSolverMultistepScheduler(**cfg.to_dict())


def load_state(module, tensors: dict[str, np.ndarray], dtype=None):
    """Load numpy tensors into ``module`` strictly (materializing meta modules)."""
    import torch

    sd = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in tensors.items()}
    if dtype is not None:
        sd = {k: v.to(dtype) if v.is_floating_point() else v for k, v in sd.items()}
    module.load_state_dict(sd, strict=True, assign=True)
    return module


def build(component: str, cfg: MobileOConfig, tensors: dict[str, np.ndarray] | None = None, dtype=None):
    """The upstream reference for one component, with the checkpoint's tensors when given.

    ``tensors`` are the component-local checkpoint tensors (``Checkpoint.load``).
    """
    from weights.mapping.vision_keys import to_timm_state

    makers = {
        "llm": lambda: qwen2(cfg.llm),
        "vision": lambda: fastvit(cfg.vision),
        "projector": lambda: projector(cfg.mm_hidden_size, cfg.llm.hidden_size),
        "dit": lambda: sana(cfg.dit),
        "vae": lambda: dcae(cfg.vae),
    }
    if component not in makers:
        raise ValueError(f"no upstream reference for {component!r} (the MCP has none)")
    if tensors is None:
        return makers[component]()
    with parameters_on_meta():  # no random fp32 weights beside the checkpoint's: the load assigns them
        module = makers[component]()
    if component == "vision":
        tensors = to_timm_state(tensors)
    if component == "llm" and cfg.llm.tie_word_embeddings:
        tensors = {**tensors, "lm_head.weight": tensors["model.embed_tokens.weight"]}
    load_state(module, tensors, dtype)  # strict: a parameter left on the meta device is an error there
    return module


@contextlib.contextmanager
def parameters_on_meta():
    """Modules built inside hold their parameters on the meta device (no memory, no random
    init); buffers stay real (a RoPE ``inv_freq`` is computed, not loaded).  ``load_state``
    (``assign=True``) then gives them the checkpoint's tensors.  Patches ``nn.Module`` for the
    duration: build one module at a time (no threads)."""
    import torch

    register = torch.nn.Module.register_parameter

    def on_meta(self, name, param):
        register(self, name, param)
        if param is not None and not param.is_meta:
            self._parameters[name] = torch.nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)

    torch.nn.Module.register_parameter = on_meta
    try:
        yield
    finally:
        torch.nn.Module.register_parameter = register
