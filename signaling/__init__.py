"""Live conversations over WebRTC: a WHIP-shaped offer/answer endpoint, one session per peer
connection, held by the Gateway replica (see docs/protocol.md).

    messages.py  the data channel's client messages, parsed and checked
    sessions.py  the registry: session limit, idle / duration / media timeouts, the reaper
    playout.py   one session's media clock and reply buffer (audio + face motion)
    tracks.py    the outgoing aiortc audio and video tracks, driven by the playout
    session.py   one session's transport: peer connection, tracks, data channels; it feeds the
                 conversation core (avatarchat/conversation/) and sends its events
    service.py   the gateway's sessions: answering offers (ICE settings), ending sessions, counts
    routes.py    the HTTP side: POST /v1/sessions, DELETE /v1/sessions/{id}
    client.py    AvatarClient, a Python client that speaks the protocol (tests, load tests)
"""
