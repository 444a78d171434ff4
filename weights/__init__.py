"""The one weight-mapping module: checkpoint layout, configs, key mapping, hub resolution,
and synthetic checkpoints in the real layout.  Imports neither torch nor MLX."""

from .checkpoint import Checkpoint
from .configs import (DiTConfig, GenerationDefaults, ImagePreprocess, LLMConfig, MCPConfig,
                      MobileOConfig, SchedulerConfig, VAEConfig, VisionConfig)
from .errors import ConfigError, MobileOError, ModelNotFoundError, WeightsError, run_cli
from .hub import DEFAULT_MODEL, KNOWN_MODELS, open_model, resolve_model
from .layout import COMPONENTS

__all__ = [
    "Checkpoint", "COMPONENTS", "ConfigError", "DEFAULT_MODEL", "DiTConfig", "GenerationDefaults",
    "ImagePreprocess", "KNOWN_MODELS", "LLMConfig", "MCPConfig", "MobileOConfig", "MobileOError",
    "ModelNotFoundError", "SchedulerConfig", "VAEConfig", "VisionConfig", "WeightsError",
    "open_model", "resolve_model", "run_cli",
]
