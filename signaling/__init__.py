"""The signaling server: the HTTP side of live sessions, WHIP-shaped (see docs/protocol.md).

    routes.py      POST /v1/sessions, DELETE /v1/sessions/{id}, GET /v1/sessions, GET /v1/avatar,
                   over a SessionPlane (the Media replicas, or this process's sessions)
    web.py         the web page (static/: HTML + JS + CSS)
    standalone.py  the session routes and the page from a plain process beside Ray

The sessions themselves (peer connections, tracks) are the live-media runtime, avatarchat/webrtc/.
"""
