"""What a process holds right now, for leak checks (the soak: load_tests/soak.py): resident memory,
OS threads (native ones too: codecs and ONNX Runtime start their own) and asyncio tasks."""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import os
from functools import cache


def _status_field(name: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(name + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


@cache
def _libc():
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name) if name else None
    except OSError:
        return None


def trim_heap() -> bool:
    """Hand freed heap memory back to the OS (glibc's malloc_trim). glibc keeps what threads freed
    in per-thread arenas, so resident memory stays at its high-water mark after a burst of sessions
    although nothing is held; trimming first makes resident memory measure what is in use."""
    libc = _libc()
    if libc is None or not hasattr(libc, "malloc_trim"):
        return False
    libc.malloc_trim(0)
    return True


def process_stats(trim: bool = False) -> dict:
    """{"pid", "rss_mb", "threads", "asyncio_tasks"}; a value is None where the platform does not
    tell (no /proc) or there is no running loop. ``trim``: trim the heap before measuring."""
    if trim:
        trim_heap()
    rss_kb = _status_field("VmRSS")
    try:
        tasks = len(asyncio.all_tasks())
    except RuntimeError:
        tasks = None
    return {"pid": os.getpid(), "rss_mb": None if rss_kb is None else round(rss_kb / 1024, 1),
            "threads": _status_field("Threads"), "asyncio_tasks": tasks}
