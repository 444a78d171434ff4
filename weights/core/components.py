"""The component table, defined once: every Mobile-O component, what it is made of and where
it goes.

A *checkpoint part* is a group of tensors of the merged checkpoint (:data:`CHECKPOINT_PARTS`,
assigned by the prefix rules of ``weights.mapping.layout``); an MLX folder stores one
safetensors file per part (``<part>.safetensors``).  A *component* is what a runtime loads,
drops and deploys; it is made of one or more parts:

=================  =====================  ==========================  =============  ===========
component          checkpoint parts       used of them                MLX residency  Core ML
=================  =====================  ==========================  =============  ===========
``vision_encoder`` ``vision, projector``  all but Apple's CLIP head   ``encoder``    a bundle
``llm``            ``llm``                all                         ``llm``        a bundle
``mcp``            ``mcp``                all                         kept           a bundle
``dit``            ``dit``                all                         ``dit``        a bundle
``vae_decoder``    ``vae``                ``decoder.*`` only          ``vae``        a bundle
=================  =====================  ==========================  =============  ===========

The checkpoint's ``vae`` part holds the DC-AE encoder too; no runtime task needs it (editing
conditions on the vision tower), so it is no component -- the MLX folder keeps the whole part,
the generation pipeline and the Core ML bundle load only :attr:`Component.prefix`.  The Core
ML vision bundle includes the projector: it outputs LLM-width image features.

The component name is the Core ML bundle name and the manifest's ``components[].name`` (a
published contract, read by Swift).  ``slot`` is the attribute and residency key of the MLX
pipelines (``GenerationPipeline.parts``); ``swift`` the ``MobileOComponent`` case of the Swift
package.  Read by ``weights.mapping.layout`` (the parts), ``weights.bundles.contract`` (names,
compute units), ``coreml_convert`` (registry, recipes), ``ios_bridge.manifest``,
``mlx_model.convert`` (the folder's files), ``mlx_model.support.mlx_folder`` (which files are
quantized) and the MLX pipelines (residency slots).  Plain Python: no numpy, torch or MLX.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping

# the merged checkpoint's parts, in its own key order (the synthetic writer follows it)
CHECKPOINT_PARTS = ("llm", "vision", "projector", "mcp", "dit", "vae")
TASKS = ("generation", "editing", "understanding", "chat")  # what an app asks for
# Core ML deployment targets (``python -m coreml_convert --target``): "ane", the iPhone default
# (Neural Engine weight formats: palettization, per-channel int8), and "gpu" (Macs or a GPU
# fallback: per-block int4; coremltools' opt-quantization-perf.md); the compute units each gets
TARGETS = ("ane", "gpu")
DEFAULT_TARGET = "ane"
TARGET_COMPUTE_UNITS = {"ane": "cpuAndNeuralEngine", "gpu": "cpuAndGPU"}
# "mixed": per-grouped-channel LUTs (uniform, group of 16 output channels), the fewest of
# ``bits`` whose weight SNR measured on the layer reaches ``min_snr_db``, else per-channel int8
# (coreml_convert.convert.mixed_plan) -- ml-stable-diffusion's mixed-bit palettization, Anemll's
# LUT4/LUT6
ANE_MIXED = {"weights": "mixed", "bits": [4, 6], "group_size": 16, "min_snr_db": 14.0}
# the LLM's (issue 22): Lloyd-Max LUTs (coreml_convert.palette: the 1-D k-means palette,
# deterministic) per group of 16 output channels, 4 bits, and 6 bits for the layers that the
# output-drift pre-analysis (coreml_convert.sensitivity, ml-stable-diffusion's: one layer at a
# time, the whole model's output PSNR) ranks most sensitive, until the torch estimate of the
# drift reaches ``target_db`` (the gate's floor is 15 dB)
ANE_LLM = {"weights": "mixed", "bits": [4, 6], "group_size": 16, "palette": "lloyd", "select": "output_drift",
           "target_db": 16.0}
INT4_GPU = {"weights": "int4", "block_size": 32}
# the vision encoder's (issue 22; was uniform ``lut6g16``): Lloyd-Max 4-bit LUTs per 16 channels
LLOYD4 = {"weights": "lut", "nbits": 4, "group_size": 16, "palette": "lloyd"}
# the GPU target computes the DiT and the VAE decoder in fp32, as Mobile-O's own app does
# (docs/deployment-notes.md section 8): ``precision`` overrides the CLI's --precision
INT4_GPU_FP32 = {**INT4_GPU, "precision": "fp32"}
INT8_GPU_FP32 = {"weights": "int8", "precision": "fp32"}


@dataclass(frozen=True)
class Component:
    name: str  # the one name: Core ML bundle, manifest entry, coreml_convert.components.<name>
    parts: tuple[str, ...]  # the checkpoint parts it is made of (CHECKPOINT_PARTS)
    role: str  # what it does, in a few words
    tasks: tuple[str, ...]  # the tasks that run it (TASKS)
    slot: str | None  # MLX pipelines' residency slot (None: tiny, always resident)
    phase: str | None  # the generation phase (PHASES) after which phase-wise residency drops it (None: kept)
    quantized: bool  # -q quantizes its Linear layers (MLX) / it is one of the big transformers
    compute_units: str  # Core ML compute units of the "ane" target (TARGET_COMPUTE_UNITS for others)
    recipe: Mapping = field(default_factory=dict)  # default Core ML weight compression, per target
    prefix: str = ""  # only the part-local keys under this prefix are used ("" = all)
    swift: str = ""  # the Swift MobileOComponent case

    def recipe_for(self, target: str = DEFAULT_TARGET) -> dict:
        """The default weight-compression recipe of ``target`` (a fresh copy)."""
        return copy.deepcopy(dict(self.recipe[target]))

    def compute_units_for(self, target: str = DEFAULT_TARGET) -> str:
        return self.compute_units if target == DEFAULT_TARGET else TARGET_COMPUTE_UNITS[target]

    @property
    def bundle(self) -> str:
        """The Core ML bundle's file stem and manifest name."""
        return self.name


def mlx_file(part: str) -> str:
    """The MLX folder's file of checkpoint part ``part``."""
    return f"{part}.safetensors"


def _both(recipe: dict) -> dict:
    """One recipe for every target (a format both the Neural Engine and the GPU run)."""
    return {t: recipe for t in TARGETS}


_TABLE = (
    Component("vision_encoder", ("vision", "projector"), "image -> LLM-width image features (FastViTHD + projector)",
              ("editing", "understanding"), slot="encoder", phase="text", quantized=False,
              compute_units="cpuAndNeuralEngine", recipe=_both(LLOYD4),
              swift="vision"),
    Component("llm", ("llm",), "Qwen2: prompt -> hidden states (generation), answer tokens (understanding)",
              ("generation", "editing", "understanding", "chat"), slot="llm", phase="text", quantized=True,
              compute_units="cpuAndNeuralEngine", recipe={"ane": ANE_LLM, "gpu": INT4_GPU}, swift="llm"),
    Component("mcp", ("mcp",), "fuses the LLM's last hidden states into DiT conditioning",
              ("generation", "editing"), slot=None, phase=None, quantized=False,
              compute_units="cpuAndNeuralEngine", recipe=_both({"weights": "int8"}), swift="mcp"),
    Component("dit", ("dit",), "SANA DiT: latents + conditioning -> velocity", ("generation", "editing"),
              slot="dit", phase="denoise", quantized=True,
              compute_units="cpuAndNeuralEngine", recipe={"ane": ANE_MIXED, "gpu": INT4_GPU_FP32}, swift="dit"),
    Component("vae_decoder", ("vae",), "DC-AE decoder: latents -> image", ("generation", "editing"),
              slot="vae", phase="decode", quantized=False,
              compute_units="cpuAndNeuralEngine", recipe={"ane": ANE_MIXED, "gpu": INT8_GPU_FP32},
              prefix="decoder.", swift="vae"),
)

COMPONENTS: Mapping[str, Component] = MappingProxyType({c.name: c for c in _TABLE})  # pipeline order
BUNDLES = tuple(c.bundle for c in _TABLE)  # the Core ML bundles, pipeline order
PHASES = ("text", "denoise", "decode")  # the MLX generation pipeline's phases, in order
QUANTIZED_PARTS = tuple(p for c in _TABLE if c.quantized for p in c.parts)  # ("llm", "dit")

assert sorted(p for c in _TABLE for p in c.parts) == sorted(CHECKPOINT_PARTS), "every part in one component"
assert all(set(c.tasks) <= set(TASKS) and c.phase in (*PHASES, None) for c in _TABLE)
assert all(set(c.recipe) == set(TARGETS) for c in _TABLE), "a recipe per target"


def component(name: str) -> Component:
    """The table row of ``name``; a ValueError naming the known ones otherwise."""
    try:
        return COMPONENTS[name]
    except KeyError:
        raise ValueError(f"unknown component {name!r}; one of {tuple(COMPONENTS)}") from None


def slots_done_after(phase: str) -> tuple[str, ...]:
    """The MLX residency slots phase-wise residency drops once ``phase`` ends, pipeline order."""
    if phase not in PHASES:
        raise ValueError(f"unknown phase {phase!r}; one of {PHASES}")
    return tuple(c.slot for c in _TABLE if c.phase == phase and c.slot)


def for_task(task: str) -> tuple[Component, ...]:
    """The components ``task`` runs, in pipeline order."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; one of {TASKS}")
    return tuple(c for c in _TABLE if task in c.tasks)


def recipes(target: str = DEFAULT_TARGET) -> dict[str, dict]:
    """Each bundle's default Core ML weight-compression recipe for ``target`` (fresh copies)."""
    return {c.bundle: c.recipe_for(target) for c in _TABLE}
