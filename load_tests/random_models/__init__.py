"""Random-weight models of the production architectures, built from their real configs.

Weights are not reachable here, so each production backend is proven with its real library running
a model of the real architecture whose weights are random: ``tiny`` for the test suite on CPU,
``full`` (the released shapes) for the GPU check (load_tests/gpu_check.py). Random weights give
meaningless words; what the code controls (shapes, streaming, cancellation, batching) is exactly
what a real checkpoint would run.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path


def cli(doc: str, sizes, build: Callable[[Path, str], Path], argv: list[str] | None = None) -> int:
    """A builder's command line: ``python -m load_tests.random_models.NAME DEST [--size ...]``
    builds the model directory DEST and prints its path."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("dest", type=Path)
    parser.add_argument("--size", choices=sorted(sizes), default="tiny")
    args = parser.parse_args(argv)
    print(build(args.dest, args.size))
    return 0
