"""`make bench` runs: tests/tools/bench.py on the demo model, quick (no timing asserts: numbers are reports)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.torch
def test_bench_quick_on_demo(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "tests" / "tools" / "bench.py"), "--model", "demo", "--quick",
                        "--out", str(tmp_path)], capture_output=True, text=True, timeout=600, cwd=ROOT,
                       env={**os.environ, "MOBILEO_LOW_MEMORY": ""})
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    data = json.loads((tmp_path / "bench.json").read_text())
    groups = {row["group"] for row in data["rows"]}
    assert groups == {"generate", "load", "decode", "ops"}
    assert data["blas"]["libraries"] and "unset_env" in data
    ops = [row["result"] for row in data["rows"] if row["group"] == "ops"]
    assert len(ops) == 3 and all(m["dit_step"]["wall_s"] > 0 and m["decode"]["ops_s"]["linear"] > 0 for m in ops)
    for row in data["rows"]:
        assert "error" not in row["result"], row
        assert row["result"]["peak_rss_mb"] > 0
    gen = {row["name"]: row["result"] for row in data["rows"] if row["group"] == "generate"}
    assert all(m["per_step_s"] > 0 and m["total_20_s"] > 0 for m in gen.values())
    low = [m for name, m in gen.items() if "low memory" in name]
    assert low and low[0]["low_memory"] is True
    dec = [row["result"]["token_ids"] for row in data["rows"] if row["group"] == "decode"]
    assert dec[0] == dec[1]  # same weights, greedy: the same tokens
    text = (tmp_path / "bench.txt").read_text()
    assert "whole generation" in text and "per op kind, one DiT call" in text and text.startswith("BLAS: ")
