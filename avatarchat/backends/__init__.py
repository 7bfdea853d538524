"""Stage backends: one folder per stage, one module per backend (see avatarchat.registry)."""
