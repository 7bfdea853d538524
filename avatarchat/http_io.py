"""What every HTTP route shares: a size-checked body reader, the media type of a request, and the
one shape of an error answer (``{"error": reason}``), so all routes fail alike."""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import JSONResponse

from avatarchat.errors import BadInput


def json_error(status: int, reason: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": reason}, status_code=status, headers=headers)


def media_type(content_type: str | None) -> str:
    """``"Application/SDP; charset=x"`` -> ``"application/sdp"``."""
    return (content_type or "").split(";")[0].strip().lower()


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing (413) as soon as it passes ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BadInput(f"body of {declared} bytes is over the limit of {limit}", 413)
    body = bytearray()
    async for part in request.stream():
        body += part
        if len(body) > limit:
            raise BadInput(f"body is over the limit of {limit} bytes", 413)
    return bytes(body)
