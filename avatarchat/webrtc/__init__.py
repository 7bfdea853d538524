"""The live-media runtime: sessions over WebRTC, held by a Media replica (deployments/media.py).

    offers.py            SDP offers checked before anything is held (BadOffer)
    service.py           the sessions of one process: answering offers (ICE settings), ending, counts
    sessions.py          the registry: session limit, timeouts, the reaper; session ids naming their owner
    session.py           one session's transport: peer connection, tracks, data channels; it feeds the
                         conversation core (avatarchat/conversation/) and sends its events
    tracks.py            the outgoing aiortc audio and video tracks, driven by the playout
    motion_channel.py    render=browser: face motion on a data channel
    client_messages.py   the data channel's client messages, parsed and checked
    sctp_guard.py        a guard around aiortc's SCTP receive loop
    turn_credentials.py  time-limited TURN passwords (the TURN REST scheme)

The HTTP side (offer/answer routes, the page) is signaling/; the Python client is
avatarchat/client/avatar_client.py.
"""
