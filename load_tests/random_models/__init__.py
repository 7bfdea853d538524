"""Random-weight models of the production architectures, built from their real configs.

Weights are not reachable here, so each production backend is proven with its real library running
a model of the real architecture whose weights are random: ``tiny`` for the test suite on CPU,
``full`` (the released shapes) for the GPU check (load_tests/gpu_check.py). Random weights give
meaningless words; what the code controls (shapes, streaming, cancellation, batching) is exactly
what a real checkpoint would run.
"""
