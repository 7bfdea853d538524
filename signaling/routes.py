"""The HTTP side of sessions, in the shape of WHIP (RFC 9725), mounted on the Gateway's FastAPI app
(and on signaling/standalone.py's):

    POST   /v1/sessions[?render=server|browser]   Content-Type: application/sdp, the offer as body
                               -> 201, the answer SDP as body, Location: /v1/sessions/{id},
                                  Avatar-Render: the session's render mode
    DELETE /v1/sessions/{id}   -> 204 (404 when unknown)
    GET    /v1/sessions        -> {"active_sessions": n, "max_sessions": m, "render": modes,
                                   "sessions": [counters]}
    GET    /v1/avatar          -> the avatar pack for drawing the face in the browser (JSON); 404 when
                                  the avatar draws its own frames (no render=browser)

Errors are JSON ``{"error": reason}``: 400 bad SDP, 413 offer over ``sessions.max_offer_bytes``,
415 another content type, 429 + Retry-After when the client's address already holds
``sessions.max_pending_per_client`` sessions that have not connected, 503 + Retry-After when full,
404 unknown session.

The routes talk to a ``SessionPlane``: the sessions of this process (avatarchat.webrtc.service.SessionService)
or the Media replicas behind the Gateway (deployments/media_plane.py); both answer alike.
"""

from __future__ import annotations

from typing import Protocol

from fastapi import Request, Response

from avatarchat.config import Sessions as SessionOptions
from avatarchat.errors import BadInput, NoBrowserAvatar
from avatarchat.http_io import json_error, media_type, read_body
from avatarchat.webrtc.offers import BadOffer
from avatarchat.webrtc.sessions import Full, TooManyPending


class SessionPlane(Protocol):
    options: SessionOptions

    async def create(self, offer_sdp: str, render: str | None = None,
                     client: str | None = None) -> tuple[str, str, str]:
        """(session id, answer SDP, render mode); raises BadOffer, TooManyPending or Full."""

    async def end(self, session_id: str, reason: str = "hung up") -> bool: ...

    async def describe_sessions(self) -> dict: ...

    async def browser_pack(self) -> bytes: ...

SDP_TYPE = "application/sdp"
RENDER_HEADER = "Avatar-Render"  # the session's render mode: server (video) or browser (motion)


async def create_session(service: SessionPlane, request: Request) -> Response:
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


async def delete_session(service: SessionPlane, session_id: str) -> Response:
    if not await service.end(session_id, "hung up"):
        return json_error(404, f"no session {session_id!r}")
    return Response(status_code=204)


async def avatar_for_browser(service: SessionPlane) -> Response:
    """The pack as the page draws it in render=browser sessions (avatarchat/avatar/browser_pack.py):
    ~0.5 MB of JSON, cacheable for as long as the process lives."""
    try:
        pack = await service.browser_pack()
    except NoBrowserAvatar as err:
        return json_error(404, str(err))
    return Response(pack, media_type="application/json", headers={"Cache-Control": "private, max-age=300"})


async def count_sessions(service: SessionPlane) -> dict:
    return await service.describe_sessions()
