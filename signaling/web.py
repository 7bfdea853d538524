"""The web page at ``/``: plain HTML, JS and CSS from ``signaling/static/`` (no build step).

The Gateway serves them (``GET /`` and ``GET /static/{name}``) beside the session API; the page
talks to ``POST /v1/sessions`` and the ``events`` data channel as docs/protocol.md describes, and
asks ``GET /v1/ice`` for its ICE servers. Only the files present in the folder are served, by name.
"""

from __future__ import annotations

from pathlib import Path

from fastapi.responses import FileResponse, Response

from avatarchat.http_io import json_error

STATIC_DIR = Path(__file__).resolve().parent / "static"
_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
          ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml", ".png": "image/png"}
# The page is small and changes with the code: always revalidate, never serve a stale copy.
_HEADERS = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}


# Listed once: only these files are ever served, whatever name a request asks for.
_FILES = {p.name: p for p in STATIC_DIR.iterdir() if p.is_file() and p.suffix in _TYPES}


def static_file(name: str) -> Response:
    path = _FILES.get(name)
    if path is None:
        return json_error(404, f"no static file {name!r}")
    return FileResponse(path, media_type=_TYPES[path.suffix], headers=_HEADERS)


def index() -> Response:
    return static_file("index.html")
