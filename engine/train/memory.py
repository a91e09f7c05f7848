"""Memory figures for step events: per accelerator device from JAX, or the process's resident memory on the CPU."""

from __future__ import annotations

import os
import resource
import sys
from typing import Any


def process_rss() -> tuple[int, int]:
    """(current, peak) resident set size of this process, in bytes."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    peak = peak if sys.platform == "darwin" else peak * 1024  # Linux reports KiB
    current = peak
    try:
        with open("/proc/self/statm", "rb") as fh:
            current = int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        try:
            import psutil
            current = int(psutil.Process().memory_info().rss)
        except Exception:
            pass
    return current, max(peak, current)


_LIBC: object | None = None


def trim_host_memory() -> bool:
    """Give freed heap memory back to the system (glibc `malloc_trim`); False where that is not available.

    XLA's CPU buffers of one phase (rollout, reference, update) are freed when it ends, but the C allocator keeps
    the pages, so without this the resident memory grows to the sum of the phases' peaks instead of the largest."""
    global _LIBC
    if _LIBC is None:
        try:
            import ctypes

            _LIBC = ctypes.CDLL("libc.so.6")
            _LIBC.malloc_trim.argtypes = [ctypes.c_size_t]
        except (OSError, AttributeError):
            _LIBC = False
    if not _LIBC:
        return False
    _LIBC.malloc_trim(0)
    return True


def total_ram() -> int | None:
    """Physical memory of the machine in bytes (None if unknown)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None


def memory_stats(devices: list[Any] | None = None) -> list[dict[str, Any]]:
    """One entry per device: {"device", "in_use", "peak", "limit"} in bytes.

    Devices whose `memory_stats()` reports nothing (the CPU) are described by the process's resident memory,
    once, as device "cpu (process RSS)".
    """
    if devices is None:
        import jax
        devices = jax.local_devices()
    out: list[dict[str, Any]] = []
    need_rss = False
    for dev in devices:
        stats = None
        try:
            stats = dev.memory_stats()
        except Exception:
            stats = None
        if stats and "bytes_in_use" in stats:
            out.append({"device": f"{dev.platform}:{dev.id}", "in_use": int(stats["bytes_in_use"]),
                        "peak": int(stats.get("peak_bytes_in_use", stats["bytes_in_use"])),
                        "limit": int(stats["bytes_limit"]) if stats.get("bytes_limit") else None})
        else:
            need_rss = True
    if need_rss or not out:
        current, peak = process_rss()
        out.append({"device": "cpu (process RSS)", "in_use": current, "peak": peak, "limit": total_ram()})
    return out
