import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


@pytest.fixture(scope="session")
def tiny_ckpt_dir(tmp_path_factory):
    """A seeded tiny synthetic checkpoint in the released layout (written once per run)."""
    from weights.synthetic import write_checkpoint

    return write_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", "tiny")


@pytest.fixture(scope="session")
def tiny_ckpt(tiny_ckpt_dir):
    from weights.checkpoint import Checkpoint

    return Checkpoint.open(tiny_ckpt_dir)


@pytest.fixture(scope="session")
def full_ckpt():
    """The full-size random checkpoint written by `make full-checkpoint` (marker `full`)."""
    path = os.environ.get("MOBILEO_FULL_CHECKPOINT", str(ROOT / "checkpoints" / "full"))
    if not Path(path, "model.safetensors.index.json").is_file():
        pytest.skip(f"no full-size checkpoint at {path}: run `make full-checkpoint`")
    from weights.checkpoint import Checkpoint

    return Checkpoint.open(path)
