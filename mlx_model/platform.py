"""Platform set-up for the MLX command lines (docs/deployment-notes.md, "MLX on Linux").

- Linux: MLX's wheel bundles the reference BLAS; Debian's OpenBLAS is ~14x faster for fp32
  matmuls.  ``use_openblas()`` re-executes the CLI process once with LD_PRELOAD set when the
  library exists and is not already preloaded (LD_PRELOAD only works at process start).
- Without Metal (CPU), activations stay fp32: quantized matmuls with fp16/bf16 activations are
  20-70x slower there.  On Metal, bfloat16 (what Mobile-O itself runs in).
"""

from __future__ import annotations

import os
import sys

OPENBLAS_CANDIDATES = (
    "/usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3",
    "/usr/lib/aarch64-linux-gnu/openblas-pthread/libblas.so.3",
)
REEXEC_MARK = "MOBILEO_OPENBLAS_REEXEC"  # set in the re-executed process: never loop
DISABLE = "MOBILEO_NO_OPENBLAS"  # set to 1 to keep MLX's bundled BLAS


def openblas_path() -> str | None:
    return next((p for p in OPENBLAS_CANDIDATES if os.path.isfile(p)), None)


def _preloaded(lib: str) -> bool:
    parts = os.environ.get("LD_PRELOAD", "").replace(":", " ").split()
    return any(os.path.realpath(p) == os.path.realpath(lib) for p in parts)


def use_openblas(argv: list[str] | None = None) -> None:
    """On Linux, re-exec this process once with Debian's OpenBLAS preloaded (when present)."""
    if not sys.platform.startswith("linux") or os.environ.get(REEXEC_MARK) or os.environ.get(DISABLE):
        return
    lib = openblas_path()
    if lib is None or _preloaded(lib):
        return
    argv = list(sys.orig_argv[1:] if argv is None else argv)
    env = dict(os.environ)
    env["LD_PRELOAD"] = " ".join(filter(None, [lib, env.get("LD_PRELOAD", "")]))
    env[REEXEC_MARK] = "1"
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, [sys.executable, *argv], env)
    except OSError:  # cannot re-exec: run on with the bundled BLAS
        return


def metal_available() -> bool:
    import mlx.core as mx

    try:
        return bool(mx.metal.is_available())
    except Exception:  # no Metal module in the CPU wheel
        return False


def default_dtype():
    """fp32 activations on CPU, bfloat16 on Metal."""
    import mlx.core as mx

    return mx.bfloat16 if metal_available() else mx.float32
