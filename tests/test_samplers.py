"""The sampler table (weights/core/samplers.py) against every copy of its facts: the MLX
implementations, the CLI's --scheduler, the A1111 labels written into images, the manifest
writer, the schema's enum and the Swift implementations.  A new sampler that misses one of
them fails here."""

import json
import re
from pathlib import Path

import pytest

from weights.core import configs, samplers
from weights.core.samplers import DEFAULT_SAMPLER, SAMPLER_INFO, SAMPLER_TABLE, SAMPLERS

ROOT = Path(__file__).resolve().parents[1]
NAMES = [s.name for s in SAMPLER_TABLE]
TYPES = [s.manifest_type for s in SAMPLER_TABLE]


def test_table_rows_are_unique_and_hold_the_default():
    for field in ("name", "manifest_type", "a1111", "help"):
        values = [getattr(s, field) for s in SAMPLER_TABLE]
        assert len(set(values)) == len(values), f"two samplers share a {field}: {values}"
    assert DEFAULT_SAMPLER in SAMPLER_INFO
    assert SAMPLERS == {s.name: s.manifest_type for s in SAMPLER_TABLE}
    assert not hasattr(configs, "SAMPLERS")  # one home: no second import path


def test_today_s_samplers_keep_their_names_and_labels():
    """Names, manifest types and labels are written into images and manifests: pinned."""
    pinned = {"dpm": ("flow_dpm_solver_multistep", "DPM++ 2M", "DPMSolverMultistepScheduler"),
              "euler": ("flow_euler", "Euler", "FlowMatchEulerDiscreteScheduler")}
    assert NAMES[:2] == list(pinned)  # the CLI lists them first, in this order
    for name, facts in pinned.items():
        s = SAMPLER_INFO[name]
        assert (s.manifest_type, s.a1111, s.diffusers_class) == facts
    assert DEFAULT_SAMPLER == "dpm"


def test_every_sampler_has_one_implementation():
    from mlx_model.support.scheduler import SCHEDULERS

    assert set(SCHEDULERS) == set(NAMES), (
        f"table without implementation: {sorted(set(NAMES) - set(SCHEDULERS))}; "
        f"implementation without table row: {sorted(set(SCHEDULERS) - set(NAMES))}")
    assert len({id(cls) for cls in SCHEDULERS.values()}) == len(SCHEDULERS)


@pytest.mark.parametrize("name", NAMES)
def test_implementation_runs_on_the_default_config(name):
    from mlx_model.support.scheduler import SCHEDULERS

    s = SCHEDULERS[name](configs.SchedulerConfig(), 4)
    assert len(s.timesteps) == 4 and len(s.sigmas) == 5 and float(s.sigmas[-1]) == 0.0


def test_schema_enum_is_the_table_s_manifest_types():
    schema = json.loads((ROOT / "ios_bridge" / "schema.json").read_text())
    sched = schema["properties"]["pipeline"]["properties"]["scheduler"]["properties"]["type"]
    assert sched["enum"] == TYPES, "ios_bridge/schema.json's pipeline.scheduler.type enum != the table"


def test_manifest_names_the_default_sampler():
    from ios_bridge.manifest import pipeline_facts
    from weights.loading.synthetic import tiny_config

    facts = pipeline_facts(tiny_config())["scheduler"]
    row = SAMPLER_INFO[DEFAULT_SAMPLER]
    assert (facts["type"], facts["class_name"]) == (row.manifest_type, row.diffusers_class)


@pytest.mark.parametrize("row", SAMPLER_TABLE, ids=NAMES)
def test_a1111_label_in_image_metadata(row):
    from mlx_model.support.image_files import SAMPLER_NAMES, a1111_parameters

    assert SAMPLER_NAMES[row.name] == row.a1111
    text = a1111_parameters({"prompt": "a cup", "steps": 2, "scheduler": row.name})
    assert text.splitlines()[1].startswith(f"Steps: 2, Sampler: {row.a1111}, ")


def test_a1111_label_of_an_unknown_sampler_is_its_name():
    from mlx_model.support.image_files import a1111_parameters

    assert "Sampler: ddim," in a1111_parameters({"prompt": "x", "scheduler": "ddim"})


@pytest.mark.parametrize("command", ["generate", "edit"])
def test_cli_scheduler_choices_are_the_table(command):
    import importlib

    p = importlib.import_module(f"mlx_model.{command}").parser()
    (action,) = [a for a in p._actions if "--scheduler" in a.option_strings]
    assert list(action.choices) == NAMES
    assert action.default == DEFAULT_SAMPLER
    assert action.help == samplers.sampler_help()


def test_swift_samplers_are_rows_of_the_table():
    """Swift implements a subset of the table (at least the manifest's default), each one
    under its manifest type; the golden tests check their numbers against Python's."""
    src = (ROOT / "ios_bridge" / "swift" / "Sources" / "MobileO" / "Sampler.swift").read_text()
    type_names = dict(re.findall(r"class (\w+): Sampler \{\s*(?:///[^\n]*\s*)*public static let typeName = \"(\w+)\"", src))
    assert type_names, "no Swift sampler with a typeName found"
    assert set(type_names.values()) <= set(TYPES), f"Swift samplers outside the table: {type_names}"
    assert SAMPLER_INFO[DEFAULT_SAMPLER].manifest_type in type_names.values()
    registry = src[src.index("public static let byType"):]
    registry = registry[registry.index("= ["):registry.index("\n    ]")]
    assert set(re.findall(r"(\w+)\.typeName:", registry)) == set(type_names), \
        "a Swift sampler class is missing from Samplers.byType (or vice versa)"
