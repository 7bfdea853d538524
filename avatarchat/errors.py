"""Errors a user can act on. Each names where the problem is: a config key, a stage, an input."""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration value is wrong. ``source`` is the file (or args block), ``key`` dotted."""

    def __init__(self, source: str, key: str, message: str):
        self.source, self.key, self.message = source, key, message
        super().__init__(f"{source}: {key}: {message}")


class StageLoadError(RuntimeError):
    """A stage's backend failed to load (missing library, missing model file, bad weights)."""

    def __init__(self, stage: str, backend: str, reason: str):
        self.stage, self.backend, self.reason = stage, backend, reason
        super().__init__(f"stage '{stage}' (backend '{backend}') failed to load: {reason}")


class BadInput(ValueError):
    """A request is malformed or over a limit. ``status`` is the HTTP status to answer with."""

    def __init__(self, reason: str, status: int = 400):
        self.reason, self.status = reason, status
        super().__init__(reason)


class NoBrowserAvatar(Exception):
    """GET /v1/avatar where the avatar draws its own frames: the page has no face to draw."""
