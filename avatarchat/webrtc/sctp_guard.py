"""A guard on aiortc's data-channel receive dispatch: no bytes a peer sends may end its transport.

aiortc 1.16 (``RTCSctpTransport._data_channel_receive``) runs inside the DTLS transport's receive
loop, where any exception ends the DTLS transport, and with it the session's media and data
channels, without a word to the client. Peer bytes raise there in two ways (a library bug):

- a string message (PPID 51, WEBRTC_STRING) that is not UTF-8: ``data.decode("utf8")`` raises
  UnicodeDecodeError. The guard hands such a message on as a binary one (PPID 53), its bytes as
  they came: the session already answers bytes that are not UTF-8 text with an ``error`` event
  (avatarchat/webrtc/client_messages.py), and a channel nobody reads drops it as before.
- a malformed control message (PPID 50, DCEP): an OPEN whose label or protocol is not UTF-8, an
  OPEN for a stream already open, an ACK for no channel (asserts). Each is checked before aiortc
  changes anything, so the guard drops it: the peer's channel simply never opens.

``install()`` wraps the method once per process; aiortc is not otherwise changed.
"""

from __future__ import annotations

import logging

from aiortc import rtcsctptransport

log = logging.getLogger("ray.serve")


def install() -> None:
    """Wrap ``RTCSctpTransport._data_channel_receive`` (a second call does nothing)."""
    cls = rtcsctptransport.RTCSctpTransport
    original = cls._data_channel_receive
    if getattr(original, "_guarded", False):
        return

    async def guarded(self, stream_id: int, pp_id: int, data: bytes) -> None:
        if pp_id == rtcsctptransport.WEBRTC_STRING and not _is_utf8(data):
            pp_id = rtcsctptransport.WEBRTC_BINARY
        if pp_id != rtcsctptransport.WEBRTC_DCEP:
            await original(self, stream_id, pp_id, data)
            return
        try:
            await original(self, stream_id, pp_id, data)
        except (UnicodeDecodeError, AssertionError) as err:
            # debug: a peer may send these as fast as it likes, and its bytes stay out of the logs
            log.debug("data channel: dropped a malformed control message on stream %d (%s)",
                      stream_id, type(err).__name__)

    guarded._guarded = True
    cls._data_channel_receive = guarded


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf8")
    except UnicodeDecodeError:
        return False
    return True
