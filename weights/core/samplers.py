"""The samplers: one row per sampler holding every fact about it but its arithmetic.

    SAMPLER_TABLE    the rows, in the order the CLI lists them
    SAMPLER_INFO     CLI name -> row
    SAMPLERS         CLI name -> manifest type (the older mapping, kept for its importers)
    DEFAULT_SAMPLER  the CLI name of the one the manifest names and every entry point uses

Everything else reads these: the CLI's ``--scheduler`` choices and help
(``mlx_model.cli_common``), the implementations (``mlx_model.support.scheduler.SCHEDULERS``,
keyed by ``name``), the A1111 ``Sampler:`` label written into images
(``mlx_model.support.image_files``), the manifest's ``pipeline.scheduler``
(``ios_bridge.manifest``) and the golden vectors (``tests/tools/golden.py``).  Copies that cannot
import Python -- the enum in ``ios_bridge/schema.json`` and the Swift implementations in
``ios_bridge/swift/Sources/MobileO/Sampler.swift`` (keyed by ``manifest_type``) -- are pinned
to this table by ``tests/test_samplers.py`` and the Swift golden tests.

A new sampler: one row here, its class in ``mlx_model/support/scheduler.py`` (plus one
``SCHEDULERS`` entry), its ``manifest_type`` in the schema's enum, and a test.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SamplerInfo:
    name: str  # the CLI's --scheduler choice; the "scheduler" value of image metadata and run settings
    manifest_type: str  # manifest pipeline.scheduler.type (schema.json's enum; Swift's typeName)
    a1111: str  # AUTOMATIC1111's "Sampler:" label in an image's parameters text
    diffusers_class: str  # the diffusers scheduler it reproduces (manifest pipeline.scheduler.class_name)
    help: str  # what --scheduler's help says of it


# Both run over the one SchedulerConfig (weights.core.configs; docs/model-facts.md section 3).
SAMPLER_TABLE: tuple[SamplerInfo, ...] = (
    SamplerInfo("dpm", "flow_dpm_solver_multistep", "DPM++ 2M", "DPMSolverMultistepScheduler",
                "DPM-Solver++ 2M with flow sigmas (Mobile-O's)"),
    SamplerInfo("euler", "flow_euler", "Euler", "FlowMatchEulerDiscreteScheduler", "flow Euler"),
)
SAMPLER_INFO: dict[str, SamplerInfo] = {s.name: s for s in SAMPLER_TABLE}
SAMPLERS: dict[str, str] = {s.name: s.manifest_type for s in SAMPLER_TABLE}
DEFAULT_SAMPLER = "dpm"


def sampler_help() -> str:
    """The ``--scheduler`` help text: ``name: what it is`` for each sampler."""
    return "; ".join(f"{s.name}: {s.help}" for s in SAMPLER_TABLE)

