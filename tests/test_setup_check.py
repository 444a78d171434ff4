"""`make setup` refuses a torch / torchvision pair that are not one build, in one line with
the fix (tests/tools/check_setup.py), and passes the pair `make setup` installed."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

TOOL = Path(__file__).parent / "tools" / "check_setup.py"
pytestmark = pytest.mark.torch


def run(tmp_path, stub: str | None):
    env = dict(os.environ)
    if stub is not None:  # a torchvision whose compiled operators do not match torch, first on the path
        pkg = tmp_path / "torchvision"
        (pkg / "ops").mkdir(parents=True)
        (pkg / "__init__.py").write_text('__version__ = "0.0.0+other"\n')
        (pkg / "ops" / "__init__.py").write_text(stub)
        env["PYTHONPATH"] = str(tmp_path)
    return subprocess.run([sys.executable, str(TOOL)], capture_output=True, text=True, env=env, timeout=300)


def test_mismatched_pair_is_one_line_with_the_fix(tmp_path):
    r = run(tmp_path, 'raise RuntimeError("operator torchvision::nms does not exist")\n')
    assert r.returncode == 1, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.startswith("setup:")]
    assert len(lines) == 1, r.stderr
    line = lines[0]
    assert "torchvision 0.0.0+other" in line and "torchvision::nms does not exist" in line
    assert "--force-reinstall" in line and "'torch==" in line and "'torchvision==" in line


def test_installed_pair_passes(tmp_path):
    r = run(tmp_path, None)
    assert r.returncode == 0, r.stderr
