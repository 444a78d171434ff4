"""Where a conversion's memory goes: peak RSS per stage, per component and per run.

    log = StageLog()            # one per component; resets the peak-RSS window (Linux)
    log.mark("load")            # closes the previous stage (its seconds, peak and RSS after)
    ...                         # components may mark their own stages: memory.mark("reference")
    log.close()                 # -> [{"stage", "seconds", "peak_rss_mb", "rss_mb"}, ...]

On Linux the peak of a stage is ``VmHWM`` after ``/proc/self/clear_refs`` reset it to the RSS
at the stage's start, so each stage (and each component: the highest of its stages) reports
its own peak, not the process's high-water mark so far.  Elsewhere the window cannot be
reset and the figures are the process's peak so far; a component converted in its own
process (``--isolate``, :func:`child_peak_mb`) reports its own peak everywhere.
"""

from __future__ import annotations

import contextlib
import os
import time

from weights.core.memory import peak_rss_bytes, rss_bytes

MB = 2**20
_current: "StageLog | None" = None


def reset_peak_rss() -> bool:
    """Start a new peak-RSS window (Linux: /proc/self/clear_refs); False where it cannot."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    return peak_rss_bytes() / MB


def rss_mb() -> float:
    now = rss_bytes()
    return (now if now is not None else peak_rss_bytes()) / MB


# glibc's malloc keeps freed memory in its heaps (and raises its mmap threshold after big frees,
# so later big arrays come from the heaps too): a child converting one component gets a fixed
# threshold -- arrays of 1 MiB and more are mapped and go back to the system when freed -- and
# every stage boundary trims the heaps (malloc_trim)
CHILD_ENV = {"MALLOC_MMAP_THRESHOLD_": str(1 << 20), "MALLOC_TRIM_THRESHOLD_": str(1 << 20)}


def release_free_memory() -> None:
    """Return the heaps' free pages to the system (glibc ``malloc_trim``; elsewhere a no-op)."""
    import gc

    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class StageLog:
    """Seconds, peak RSS (MB) and RSS after each stage of one component's conversion."""

    def __init__(self):
        self.stages: list[dict] = []
        self._name: str | None = None
        self._t0 = time.perf_counter()

    def mark(self, name: str) -> None:
        """End the running stage (if any) and start ``name``."""
        self._end()
        release_free_memory()
        self._name = name
        reset_peak_rss()
        self._t0 = time.perf_counter()

    def _end(self) -> None:
        if self._name is None:
            return
        self.stages.append({"stage": self._name, "seconds": round(time.perf_counter() - self._t0, 2),
                            "peak_rss_mb": round(peak_rss_mb(), 1), "rss_mb": round(rss_mb(), 1)})
        self._name = None

    def close(self) -> list[dict]:
        self._end()
        return self.stages

    @property
    def peak_mb(self) -> float:
        """The component's own peak: the highest stage peak (ended stages)."""
        return max((s["peak_rss_mb"] for s in self.stages), default=peak_rss_mb())


@contextlib.contextmanager
def logging_stages(log: StageLog):
    """Make ``log`` the one :func:`mark` writes to (components mark their inner stages)."""
    global _current
    previous, _current = _current, log
    try:
        yield log
    finally:
        _current = previous


def mark(name: str) -> None:
    """Start stage ``name`` of the component being converted (no-op outside a conversion)."""
    if _current is not None:
        _current.mark(name)


def child_peak_mb(pid: int) -> tuple[int, float]:
    """Wait for child ``pid``: (exit status as subprocess gives it, its own peak RSS in MB from
    ``wait4``'s rusage; ru_maxrss is KiB on Linux, bytes on macOS)."""
    import sys

    _, status, usage = os.wait4(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    peak = usage.ru_maxrss if sys.platform == "darwin" else usage.ru_maxrss * 1024
    return code, peak / MB


def checkpoint_bytes(ckpt) -> int:
    """Bytes of every tensor of a checkpoint, from its headers (nothing read)."""
    total = 0
    for key in getattr(ckpt, "key_files", {}):
        info = ckpt.info(key)
        total += info.end - info.start
    return total
