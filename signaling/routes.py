"""The HTTP side of sessions, in the shape of WHIP (RFC 9725), mounted on the Gateway's FastAPI app:

    POST   /v1/sessions[?render=server|browser]   Content-Type: application/sdp, the offer as body
                               -> 201, the answer SDP as body, Location: /v1/sessions/{id},
                                  Avatar-Render: the session's render mode
    DELETE /v1/sessions/{id}   -> 204 (404 when unknown)
    GET    /v1/sessions        -> {"active_sessions": n, "max_sessions": m, "render": modes,
                                   "sessions": [counters]}
    GET    /v1/avatar          -> the avatar pack for drawing the face in the browser (JSON)

Errors are JSON ``{"error": reason}``: 400 bad SDP, 413 offer over ``sessions.max_offer_bytes``,
415 another content type, 429 + Retry-After when the client's address already holds
``sessions.max_pending_per_client`` sessions that have not connected, 503 + Retry-After when full,
404 unknown session.
"""

from __future__ import annotations

from fastapi import Request, Response

from avatarchat.errors import BadInput
from avatarchat.http_io import json_error, media_type, read_body
from signaling.service import BadOffer, Full, SessionService, TooManyPending

SDP_TYPE = "application/sdp"
RENDER_HEADER = "Avatar-Render"  # the session's render mode: server (video) or browser (motion)


async def create_session(service: SessionService, request: Request) -> Response:
    ctype = media_type(request.headers.get("content-type"))
    if ctype != SDP_TYPE:
        return json_error(415, f"Content-Type must be {SDP_TYPE}, got {ctype or 'none'!r}")
    try:
        body = await read_body(request, service.options.max_offer_bytes)
    except BadInput as err:
        return json_error(err.status, err.reason)
    try:
        offer = body.decode("utf-8")
    except UnicodeDecodeError:
        return json_error(400, "the SDP offer is not UTF-8 text")
    try:
        client = request.client.host if request.client else None
        session_id, answer, render = await service.create(offer, request.query_params.get("render"), client)
    except TooManyPending as err:
        return json_error(429, str(err), {"Retry-After": str(err.retry_after_s)})
    except Full as err:
        return json_error(503, str(err), {"Retry-After": str(service.options.retry_after_s)})
    except BadOffer as err:
        return json_error(400, str(err))
    return Response(answer, status_code=201, media_type=SDP_TYPE,
                    headers={"Location": f"/v1/sessions/{session_id}", RENDER_HEADER: render})


async def delete_session(service: SessionService, session_id: str) -> Response:
    if not await service.end(session_id, "hung up"):
        return json_error(404, f"no session {session_id!r}")
    return Response(status_code=204)


def avatar_for_browser(service: SessionService) -> Response:
    """The pack as the page draws it in render=browser sessions (avatarchat/avatar/browser_pack.py),
    built once per process: ~0.5 MB of JSON, cacheable for as long as the process lives."""
    global _browser_pack
    if _browser_pack is None or _browser_pack[0] is not service.deps.renderer:
        import json

        from avatarchat.avatar.browser_pack import browser_pack

        body = json.dumps(browser_pack(service.deps.renderer), separators=(",", ":")).encode()
        _browser_pack = (service.deps.renderer, body)
    return Response(_browser_pack[1], media_type="application/json",
                    headers={"Cache-Control": "private, max-age=300"})


_browser_pack: tuple[object, bytes] | None = None


def count_sessions(service: SessionService) -> dict:
    return {**service.describe(), "sessions": service.stats()}
