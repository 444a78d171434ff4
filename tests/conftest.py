import os
from pathlib import Path

import pytest

# The packages are imported as installed (`pip install -e .`); no sys.path patch here.
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_ckpt_dir(tmp_path_factory):
    """A seeded tiny synthetic checkpoint in the released layout (written once per run)."""
    from weights.synthetic import write_checkpoint

    return write_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", "tiny")


@pytest.fixture(scope="session")
def tiny_ckpt(tiny_ckpt_dir):
    from weights.checkpoint import Checkpoint

    return Checkpoint.open(tiny_ckpt_dir)


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
    from weights.checkpoint import Checkpoint

    return Checkpoint.open(path)


# ---------------------------------------------------------------------------------------
# Parity report: tests record what they measured; `make parity` prints the table and
# writes build/parity.json.  Recording never replaces the test's own assertion.

_PARITY: list[dict] = []


@pytest.fixture()
def parity(request):
    """parity(component, runtime, metric, value, limit, passed) -> value."""

    def record(component, runtime, metric, value, limit, passed=None):
        higher_is_better = metric.lower().startswith("psnr")
        if passed is None:
            passed = value >= limit if higher_is_better else value <= limit
        _PARITY.append(dict(test=request.node.nodeid, component=component, runtime=runtime,
                            metric=metric, value=float(value), limit=float(limit), passed=bool(passed)))
        return value

    return record


def pytest_terminal_summary(terminalreporter):
    if not _PARITY:
        return
    import json

    tr = terminalreporter
    tr.section("parity vs upstream references")
    tr.write_line(f"{'component':<26} {'runtime':<20} {'metric':<20}{'value':>10}{'limit':>10}  result")
    for r in _PARITY:
        v = "inf" if r["value"] == float("inf") else f"{r['value']:.3g}"
        tr.write_line(f"{r['component']:<26} {r['runtime']:<20} {r['metric']:<20}{v:>10}"
                      f"{r['limit']:>10.3g}  {'PASS' if r['passed'] else 'FAIL'}")
    out = ROOT / "build" / "parity.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(_PARITY, indent=1))
    tr.write_line(f"{sum(r['passed'] for r in _PARITY)}/{len(_PARITY)} checks passed; written to {out}")
