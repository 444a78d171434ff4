"""`make setup`'s last step: the environment imports what the project uses, and torch and
torchvision belong to one build.  A machine-wide pip configuration (an extra index or
find-links with other torch wheels) can install a torchvision whose compiled operators do not
match torch; `import torchvision.ops` then fails with "operator torchvision::nms does not
exist".  Each problem is one line with its fix; exit 1."""

from __future__ import annotations

import sys

PAIR_FIX = ("Fix: PIP_CONFIG_FILE=/dev/null {py} -m pip install --force-reinstall --no-deps "
            "'torch=={torch}' 'torchvision=={vision}' (both from PyPI), or remove .venv and rerun make setup")


def pinned(name: str) -> str:
    """The version pyproject.toml pins for ``name`` (the convert extra pins torch and torchvision)."""
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "pyproject.toml").read_text()
    return re.search(rf'"{re.escape(name)}==([^"]+)"', text).group(1)


def check_torch_pair() -> str | None:
    import torch
    import torchvision

    try:
        import torchvision.ops

        torchvision.ops.nms(torch.zeros(1, 4), torch.zeros(1), 0.5)
    except Exception as e:  # RuntimeError from the operator registry, or an ImportError
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return (f"setup: torch {torch.__version__} and torchvision {torchvision.__version__} are not one build "
                f"({first}). " + PAIR_FIX.format(py=sys.executable, torch=pinned("torch"),
                                                 vision=pinned("torchvision")))
    return None


def main() -> int:
    import contextlib
    import io
    import warnings

    problem = check_torch_pair()  # first: timm and diffusers import torchvision.ops themselves
    if problem:
        print(problem, file=sys.stderr)
        return 1
    try:  # coremltools reports its missing native proxies and untested versions on import: not ours to show
        with contextlib.redirect_stderr(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import coremltools, diffusers, mlx.core, mlx_lm, timm, transformers  # noqa: F401,E401
    except Exception as e:
        print(f"setup: the environment is broken ({type(e).__name__}: {e}). "
              "Fix: remove .venv and rerun make setup", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
