"""What a process holds right now, for leak checks (the soak: load_tests/soak.py): resident memory,
OS threads (native ones too: codecs and ONNX Runtime start their own) and asyncio tasks."""

from __future__ import annotations

import asyncio
import os


def _status_field(name: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(name + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def process_stats() -> dict:
    """{"rss_mb", "threads", "asyncio_tasks"}; a value is None where the platform does not tell
    (no /proc) or there is no running loop."""
    rss_kb = _status_field("VmRSS")
    try:
        tasks = len(asyncio.all_tasks())
    except RuntimeError:
        tasks = None
    return {"pid": os.getpid(), "rss_mb": None if rss_kb is None else round(rss_kb / 1024, 1),
            "threads": _status_field("Threads"), "asyncio_tasks": tasks}
