import ast
import os
import platform
import tempfile
from pathlib import Path

import pytest

# The packages are imported as installed (`pip install -e .`); no sys.path patch here.
ROOT = Path(__file__).resolve().parents[1]

# ---------------------------------------------------------------------------------------
# Hypothesis profiles.  `ci` (CI=true, as .ci/run runs; or HYPOTHESIS_PROFILE=ci) draws the
# same examples on every run: derandomised, no deadline, a fixed example count.  `explore`
# (local runs) draws new examples each run.  Neither keeps a database in the checkout.
os.environ.setdefault("HYPOTHESIS_STORAGE_DIRECTORY", os.path.join(tempfile.gettempdir(), "mobileo-hypothesis"))
try:
    from hypothesis import HealthCheck, settings
except ImportError:  # the MLX-only install (no .[dev]) has no property tests to run
    pass
else:
    _common = dict(max_examples=60, deadline=None, database=None,
                   suppress_health_check=[HealthCheck.function_scoped_fixture])
    settings.register_profile("ci", derandomize=True, print_blob=True, **_common)
    settings.register_profile("explore", **_common)
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else "explore"))

# ---------------------------------------------------------------------------------------
# Markers (pyproject.toml) say what a test needs: torch, coreml, macos, slow, full.  A module
# declares them in `pytestmark`; a `-m` expression that deselects a module's markers keeps
# it from being imported at all, so `-m "not torch"` runs where torch is not installed.
# Inside `make test` every extra is installed: a missing package is an error, never a skip.


def _module_marks(path: Path) -> set[str]:
    """The marker names in a test module's top-level `pytestmark` (read, not imported)."""
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "pytestmark" for t in node.targets):
            return {n.attr for n in ast.walk(node.value)
                    if isinstance(n, ast.Attribute) and getattr(n.value, "attr", None) == "mark"}
    return set()


def pytest_ignore_collect(collection_path, config):
    """Skip importing a module none of whose tests the `-m` expression can select."""
    expr = config.getoption("markexpr")
    if not expr or collection_path.suffix != ".py" or not collection_path.name.startswith("test_"):
        return None
    import itertools
    import re

    from _pytest.mark.expression import Expression

    marks = _module_marks(collection_path)
    if not marks:
        return None
    compiled = Expression.compile(expr)
    free = sorted(set(re.findall(r"[A-Za-z_]\w*", expr)) - {"and", "or", "not"} - marks)  # marks a test may add
    for values in itertools.product((False, True), repeat=len(free)):
        extra = {n for n, v in zip(free, values) if v}
        if compiled.evaluate(lambda name, **kw: name in marks or name in extra):
            return None
    return True


def pytest_collection_modifyitems(config, items):
    if platform.system() == "Darwin":
        return
    skip = pytest.mark.skip(reason=f"needs macOS (this is {platform.system()}): Core ML predict and Metal; "
                                   "elsewhere the MIL programs are executed on numpy instead")
    for item in items:
        if "macos" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_ckpt_dir(tmp_path_factory):
    """A seeded tiny synthetic checkpoint in the released layout (written once per run)."""
    from weights.loading.synthetic import write_checkpoint

    return write_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", "tiny")


@pytest.fixture(scope="session")
def tiny_ckpt(tiny_ckpt_dir):
    from weights.mapping.checkpoint import Checkpoint

    return Checkpoint.open(tiny_ckpt_dir)


@pytest.fixture(scope="session")
def coreml_spec(tiny_ckpt):
    """``coreml_spec(name)``: the converter's ComponentSpec of Core ML component ``name``
    (``coreml_convert.components.REGISTRY``) on the tiny checkpoint, built once per run and
    shared by tests/test_coreml_components.py (the gates) and tests/test_coreml_<name>.py."""
    built = {}

    def get(name: str):
        if name not in built:
            from coreml_convert.components import REGISTRY

            built[name] = REGISTRY[name].build_spec(tiny_ckpt)
        return built[name]

    return get


@pytest.fixture(scope="session")
def coreml_bundle(coreml_spec, tmp_path_factory):
    """``coreml_bundle(name)``: that spec converted to an fp16 bundle, saved once per run."""
    saved = {}

    def get(name: str):
        if name not in saved:
            from coreml_convert import convert as cv

            spec = coreml_spec(name)
            saved[name] = cv.save_atomic(cv.convert_spec(spec, "fp16"), tmp_path_factory.mktemp(name), spec.file)
        return saved[name]

    return get


@pytest.fixture(scope="session")
def tiny_export(tiny_ckpt_dir, tmp_path_factory):
    """The whole tiny model through ``mobileo-coreml`` (default target and recipes), run once
    per session and shared: the CLI test checks its table and manifest; the bridge, LLM and
    end-to-end drift tests read its compressed bundles instead of converting them again.
    Tests that change files copy it first (``shutil.copytree``)."""
    import io

    from coreml_convert import cli

    out = tmp_path_factory.mktemp("export") / "all"
    log = io.StringIO()
    code = cli.run(cli.parse_args(["--model", str(tiny_ckpt_dir), "--out", str(out)]), stream=log)
    assert code == 0, log.getvalue()
    return out


@pytest.fixture(scope="session")
def tiny_export_of(tiny_export, tmp_path_factory):
    """``tiny_export_of(*names)``: a new folder holding only what those components own in
    ``tiny_export`` (``coreml_convert.cli.component_files``: record, lint report, bundle, the
    files beside it; no manifest): ``mobileo-coreml --components`` on it finds them
    converted, as on a folder it converted itself."""
    import shutil

    from coreml_convert.cli import component_files

    def copy(*names: str):
        out = tmp_path_factory.mktemp("export_of") / "_".join(names)
        for name in names:
            files = component_files(tiny_export, name)
            assert files, f"{name} is not in the session's export"
            for src in files:
                dst = out / src.relative_to(tiny_export)
                dst.parent.mkdir(parents=True, exist_ok=True)
                (shutil.copytree if src.is_dir() else shutil.copy2)(src, dst)
        return out

    return copy


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    """A small random RGB photo (PNG, not square) for understanding and editing tests."""
    import numpy as np
    from PIL import Image

    path = tmp_path_factory.mktemp("img") / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture(scope="session")
def full_ckpt():
    """The full-size random checkpoint written by `make full-checkpoint` (marker `full`)."""
    path = os.environ.get("MOBILEO_FULL_CHECKPOINT", str(ROOT / "checkpoints" / "full"))
    if not Path(path, "model.safetensors.index.json").is_file():
        pytest.skip(f"no full-size checkpoint at {path}: run `make full-checkpoint`")
    from weights.mapping.checkpoint import Checkpoint

    return Checkpoint.open(path)


# ---------------------------------------------------------------------------------------
# Parity report: tests record what they measured; `make parity` prints the table and
# writes build/parity.json.  Recording never replaces the test's own assertion.

_PARITY: list[dict] = []


def record_parity(nodeid, component, runtime, metric, value, *, at_most=None, at_least=None, report=False):
    """Record one row of the parity report, then assert its bound (``metrics.within``).

    ``report=True`` records a figure that has no bound of its own (it stands beside a gated
    one, e.g. tokens agreeing next to a logits PSNR) and asserts nothing; it takes no bound.
    Returns nothing: the verdict is the assertion, never a value for the caller to test.
    """
    from metrics import within

    row = dict(test=nodeid, component=component, runtime=runtime, metric=metric, value=float(value))
    if report:
        if at_most is not None or at_least is not None:
            raise TypeError("a report-only row takes no bound")
        _PARITY.append({**row, "bound": None, "passed": None})
        return
    op, bound = ("<=", at_most) if at_most is not None else (">=", at_least)
    try:
        within(value, at_most=at_most, at_least=at_least, what=f"{component} [{runtime}] {metric}")
    except AssertionError:
        _PARITY.append({**row, "bound": f"{op} {bound:g}", "passed": False})
        raise
    _PARITY.append({**row, "bound": f"{op} {bound:g}", "passed": True})


@pytest.fixture()
def parity(request):
    """parity(component, runtime, metric, value, at_most=|at_least=|report=True): see record_parity."""
    return lambda *args, **kw: record_parity(request.node.nodeid, *args, **kw)


def pytest_terminal_summary(terminalreporter):
    if not _PARITY:
        return
    import json

    tr = terminalreporter
    tr.section("parity vs upstream references")
    tr.write_line(f"{'component':<30} {'runtime':<26} {'metric':<24}{'value':>10} {'bound':>10}  result")
    for r in _PARITY:
        v = "inf" if r["value"] == float("inf") else f"{r['value']:.3g}"
        verdict = "report" if r["passed"] is None else "PASS" if r["passed"] else "FAIL"
        tr.write_line(f"{r['component']:<30} {r['runtime']:<26} {r['metric']:<24}{v:>10} {r['bound'] or '':>10}  {verdict}")
    out = ROOT / "build" / "parity.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(_PARITY, indent=1))
    gated = [r for r in _PARITY if r["passed"] is not None]
    tr.write_line(f"{sum(r['passed'] for r in gated)}/{len(gated)} checks passed "
                  f"({len(_PARITY) - len(gated)} report-only rows); written to {out}")
