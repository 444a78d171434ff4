"""This process's memory, as every report here gives it (the converter's table, ``make bench``,
the server's ``/health``): resident now and at its peak, in bytes.  Standard library only."""

from __future__ import annotations

import os
import resource
import sys

__all__ = ["rss_bytes", "peak_rss_bytes"]


def rss_bytes() -> int | None:
    """Resident set size now (``/proc/self/statm``); None where there is no /proc (macOS)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def peak_rss_bytes() -> int:
    """The process's high-water mark: ``VmHWM`` on Linux, else ``ru_maxrss`` (bytes on macOS,
    KiB elsewhere)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024
