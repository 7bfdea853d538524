"""CPU priority of the service's processes: live media before model work.

Each Media replica draws and encodes every session's audio and video on a fixed 25 fps clock; the
model stages only have to stay ahead of playback. When the CPU is short, a frame that misses its
slot is lost for good while a model step that waits a few milliseconds costs nothing the user
sees, so media gets the higher priority (docs/architecture.md has the measurements).

Linux keeps a nice value per thread and a new thread inherits its creator's, so a whole process is
moved by setting every thread it has now.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger("ray.serve")


def niceness() -> int:
    return os.getpriority(os.PRIO_PROCESS, 0)


def set_niceness(value: int) -> None:
    """Give every thread of this process nice ``value`` (clamped to -20..19).
    Raises PermissionError when that raises priority without root or CAP_SYS_NICE."""
    value = max(-20, min(19, value))
    tasks = "/proc/self/task"
    tids = [int(t) for t in os.listdir(tasks)] if os.path.isdir(tasks) else [0]
    for tid in tids:
        try:
            os.setpriority(os.PRIO_PROCESS, tid, value)
        except ProcessLookupError:  # the thread ended meanwhile
            pass


def _own_process() -> bool:
    """True in a Ray worker. In Serve's local testing mode the deployments run inside the caller's
    process (a test, a script), whose priority is not ours to change."""
    import ray

    return ray.is_initialized()


def lower_priority(by: int, what: str) -> int:
    """Add ``by`` to this process's niceness (always allowed); returns the new niceness."""
    if by > 0 and _own_process():
        set_niceness(niceness() + by)
        log.info("%s runs at nice %d", what, niceness())
    return niceness()


def ask_for_priority(target: int, what: str) -> int:
    """Move this process to nice ``target`` if it is at a lower priority and allowed to; returns
    the niceness it runs at. Without the right to, it says how to start Ray instead."""
    if niceness() > target and _own_process():
        try:
            set_niceness(target)
        except PermissionError:
            log.warning("%s stays at nice %d (raising priority needs root or CAP_SYS_NICE); start "
                        "Ray with RAY_worker_niceness=%d, as scripts/serve.sh does, so live video "
                        "keeps its frame rate on a busy machine", what, niceness(), target)
    return niceness()
