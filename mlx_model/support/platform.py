"""Platform set-up for the MLX command lines (docs/deployment-notes.md, "MLX on Linux").

- Linux: MLX's wheel bundles the reference BLAS; Debian's OpenBLAS is ~14x faster for fp32
  matmuls.  ``use_openblas()`` re-executes the CLI process once with LD_PRELOAD set when the
  library exists and is not already preloaded (LD_PRELOAD only works at process start).
- Linux: ``keep_freed_memory()`` stops glibc from handing MLX's large per-call temporaries back
  to the kernel, which then zero-fills them again on every call (page faults).
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


# glibc's mallopt parameters (malloc.h) and the values keep_freed_memory sets
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
HEAP_MMAP_THRESHOLD = 1 << 30  # blocks below 1 GiB come from the heap, never from a fresh mmap
HEAP_TRIM_THRESHOLD = 256 << 20  # free memory at the heap's top kept for reuse, up to 256 MiB


def keep_freed_memory() -> bool:
    """On Linux (glibc), let freed memory be reused instead of handed back to the kernel; True
    when applied.  MLX's CPU backend allocates and frees large temporaries on every call (a
    JIT-dequantized weight, a decode band's buffers).  By default glibc serves each from a
    fresh ``mmap`` that the kernel then zero-fills page by page on every call; with blocks under
    1 GiB taken from the heap and up to 256 MiB of its free top kept, they are reused (figures:
    docs/deployment-notes.md section 6, README Benchmark).  Process-wide, so the commands call
    it (:func:`prepare_cpu_process`), not the library.  Metal allocates through its own buffer
    cache, and macOS's malloc is another."""
    import ctypes
    import platform

    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, HEAP_MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, HEAP_TRIM_THRESHOLD))


def prepare_cpu_process(argv: list[str] | None = None) -> None:
    """What an MLX command line sets up first on Linux: OpenBLAS (:func:`use_openblas`, which may
    re-execute the process) and glibc's malloc keeping freed memory (:func:`keep_freed_memory`)."""
    use_openblas(argv)
    keep_freed_memory()


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


# ------------------------------------------------------------------ memory: phase-wise residency
LOW_MEMORY_ENV = "MOBILEO_LOW_MEMORY"  # 1: force phase-wise residency on, 0: off (overrides the auto choice)
LOW_MEMORY_BELOW = 16 * 1024**3  # auto: on when the machine has less RAM than this


def total_memory() -> int | None:
    """The machine's RAM in bytes (``os.sysconf``; ``sysctl hw.memsize`` on macOS), None if unknown."""
    try:
        n = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        if n > 0:
            return int(n)
    except (ValueError, OSError, AttributeError):
        pass
    if sys.platform == "darwin":
        import subprocess

        try:
            return int(subprocess.run(["sysctl", "-n", "hw.memsize"], capture_output=True, text=True,
                                      timeout=5).stdout.strip())
        except (OSError, ValueError, subprocess.SubprocessError):
            return None
    return None


def low_memory_default() -> bool:
    """Whether pipelines load each component just before its phase and drop it after (as Apple's
    ml-stable-diffusion ``reduceMemory``): ``MOBILEO_LOW_MEMORY=1``/``0`` when set, else on when
    the machine has less than 16 GB of RAM."""
    env = os.environ.get(LOW_MEMORY_ENV, "").strip().lower()
    if env in ("1", "true", "yes", "on"):
        return True
    if env in ("0", "false", "no", "off"):
        return False
    total = total_memory()
    return total is not None and total < LOW_MEMORY_BELOW


def resolve_low_memory(low_memory: bool | None) -> bool:
    return low_memory_default() if low_memory is None else bool(low_memory)


class Component:
    """One model part of a pipeline: held (``value``) and, when it has a ``loader``, loaded
    the first time :meth:`get` is called and dropped again by :meth:`release` (phase-wise
    residency).  A part given without a loader is never dropped."""

    def __init__(self, name: str, value=None, loader=None):
        self.name = name
        self.value = value
        self.loader = loader
        self.loads = 0  # times the loader ran
        self.load_seconds = 0.0  # all loads together

    @property
    def resident(self) -> bool:
        return self.value is not None

    def get(self):
        if self.value is None and self.loader is not None:
            import time

            t = time.perf_counter()
            self.value = self.loader()
            self.loads += 1
            self.load_seconds += time.perf_counter() - t
        return self.value

    def release(self) -> bool:
        """Drop the part (when it can be loaded again) and give its memory back; True if dropped."""
        if self.value is None or self.loader is None:
            return False
        self.value = None
        import gc

        import mlx.core as mx

        gc.collect()
        mx.clear_cache()
        return True


def part(name: str) -> property:
    """A pipeline attribute backed by ``self.parts[name]`` (a :class:`Component`): reading it
    loads the part when it was dropped; assigning a module wraps it (never dropped)."""

    def fget(self):
        return self.parts[name].get()

    def fset(self, value):
        self.parts[name] = value if isinstance(value, Component) else Component(name, value)

    return property(fget, fset, doc=f"The {name} (loaded on first use when it was dropped).")


def dtype_of(name: str | None):
    """An MLX dtype from its name (``"bfloat16"``); None stays None (the platform's default)."""
    if name is None:
        return None
    import mlx.core as mx

    return getattr(mx, name)


def dtype_name(dtype) -> str:
    """``mlx.core.bfloat16`` -> ``"bfloat16"``."""
    return str(dtype).rsplit(".", 1)[-1]
