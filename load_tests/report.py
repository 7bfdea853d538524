"""What every benchmark prints: the machine it ran on, and the JSON report (stdout, and a file)."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

import numpy as np


def machine() -> dict:
    model = ""
    try:
        model = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                     if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": model or platform.processor(), "cores": os.cpu_count(), "python": platform.python_version(),
            "system": platform.platform()}


def summary(seconds: list[float]) -> dict:
    """Median and p95 of ``seconds``, rounded to the millisecond."""
    a = np.asarray(seconds, dtype=float)
    return {"median_s": round(float(np.median(a)), 3), "p95_s": round(float(np.percentile(a, 95)), 3)}


def emit(report: dict, json_path: str | None = None) -> None:
    """Print ``report`` as JSON, and write it to ``json_path`` too when given."""
    text = json.dumps(report, indent=2, default=float)
    print(text)
    if json_path:
        Path(json_path).write_text(text + "\n")
