"""Checkpoint contract: which tensor belongs to which component.

Every key of a merged Mobile-O checkpoint (``mobileoForInferenceLM.state_dict()``,
docs/model-facts.md section 8) goes to exactly one component, or to a named ignore rule.
A key nothing claims is an error that names it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from weights.core.components import CHECKPOINT_PARTS, component
from weights.core.errors import WeightsError
from weights.mapping.vision_keys import HEAD_PROJ

# the checkpoint parts ("components" of a Split); which runtime component each belongs to is
# weights.core.components
COMPONENTS = CHECKPOINT_PARTS

# What the inference modules of both backends load of a component (Checkpoint.load_used):
# local keys a component stores that inference never reads, and sub-module prefixes.
UNUSED: dict[str, frozenset[str]] = {"vision": frozenset({HEAD_PROJ})}  # Apple's CLIP head
VAE_DECODER = component("vae_decoder").prefix  # the VAE's decoder tensors: all that generation needs of the VAE


def drop_unused(component: str, tensors: dict) -> dict:
    """``tensors`` (component-local keys) without the ones inference never reads."""
    unused = UNUSED.get(component, frozenset())
    return {k: v for k, v in tensors.items() if k not in unused}

# checkpoint prefix -> component; the local key is the checkpoint key minus ``strip``
@dataclass(frozen=True)
class Rule:
    component: str
    prefix: str
    strip: str  # removed from the key to get the component-local name


RULES: tuple[Rule, ...] = (
    # LLM keys keep their transformers / mlx-lm names (model.layers.N..., lm_head.weight)
    Rule("llm", "model.embed_tokens.", ""),
    Rule("llm", "model.layers.", ""),
    Rule("llm", "model.norm.", ""),
    Rule("llm", "lm_head.", ""),
    Rule("vision", "model.vision_tower.vision_tower.model.", "model.vision_tower.vision_tower.model."),
    Rule("projector", "model.mm_projector.", "model.mm_projector."),
    Rule("mcp", "model.diffusion_connector.fusion.", "model.diffusion_connector.fusion."),
    Rule("dit", "model.dit.", "model.dit."),
    Rule("vae", "model.vae.", "model.vae."),
)

PREFIX = {r.component: r.strip for r in RULES if r.strip}


@dataclass(frozen=True)
class IgnoreRule:
    name: str
    prefix: str
    why: str


IGNORE_RULES: tuple[IgnoreRule, ...] = (
    IgnoreRule(
        "post-train duplicates",
        "base_model.model.",
        "un-stripped DeepSpeed copies appended by merge_lora.py; from_pretrained ignores them",
    ),
)


@dataclass
class Split:
    """The result of assigning every checkpoint key."""

    components: dict[str, dict[str, str]]  # component -> {local key: checkpoint key}
    ignored: dict[str, list[str]]  # ignore-rule name -> checkpoint keys

    def counts(self) -> dict[str, int]:
        return {c: len(k) for c, k in self.components.items()}

    def ignored_counts(self) -> dict[str, int]:
        return {n: len(k) for n, k in self.ignored.items() if k}


def classify(key: str) -> tuple[str, str] | None:
    """(component, local key) for a checkpoint key, ("ignore:<rule>", key), or None."""
    for r in RULES:
        if key.startswith(r.prefix):
            return r.component, key[len(r.strip):]
    for ig in IGNORE_RULES:
        if key.startswith(ig.prefix):
            return "ignore:" + ig.name, key
    return None


def split_keys(keys: Iterable[str], source: str = "checkpoint") -> Split:
    comps: dict[str, dict[str, str]] = {c: {} for c in COMPONENTS}
    ignored: dict[str, list[str]] = {ig.name: [] for ig in IGNORE_RULES}
    unknown: list[str] = []
    for key in keys:
        hit = classify(key)
        if hit is None:
            unknown.append(key)
        elif hit[0].startswith("ignore:"):
            ignored[hit[0][len("ignore:"):]].append(key)
        else:
            comps[hit[0]][hit[1]] = key
    if unknown:
        more = f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""
        raise WeightsError(
            f"{source}: tensor {unknown[0]!r}{more} belongs to no Mobile-O component.",
            fix="this is not a merged Mobile-O checkpoint, or it needs a new rule in "
            "weights/mapping/layout.py.",
        )
    return Split(comps, ignored)


def checkpoint_key(component: str, local: str) -> str:
    """Inverse of :func:`classify` for the synthetic writer."""
    return PREFIX.get(component, "") + local
