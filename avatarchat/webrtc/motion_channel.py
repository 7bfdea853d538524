"""Browser-side rendering: the face's motion goes out as a few numbers per frame instead of video.

In ``render: browser`` sessions no video track is sent. The client opens a data channel labelled
``motion`` (unordered, no retransmits: a late frame is useless) and the server sends one small
binary packet per video frame, paced by the session's ``MediaClock`` exactly as the video track
would send its frame: at media time ``k / fps``, the face that goes with the audio being sent then.
The client shows each face as soon as the audio sent with it plays (its jitter-buffer delay after
arrival), so sound and mouth stay together with nothing to encode.

Packet (little-endian, 5 + 4 * len(FIELDS) bytes)::

    uint32 k            frame index on the session's media clock (time k / fps)
    uint8  flags        bit 0: a speaking frame (reply audio is playing)
    float32 * FIELDS    FaceMotion values in FIELDS order (avatarchat.messages.FaceMotion)
"""

from __future__ import annotations

import struct

from avatarchat.messages import FaceMotion

LABEL = "motion"
FIELDS = tuple(FaceMotion.__dataclass_fields__)
PACKET = struct.Struct("<IB" + "f" * len(FIELDS))
# A sender that fell this far behind the clock (a starved process) skips ahead instead of bursting.
MAX_LATE_S = 0.2


def pack(k: int, motion: FaceMotion, speaking: bool) -> bytes:
    return PACKET.pack(k & 0xFFFFFFFF, 1 if speaking else 0, *motion.as_list())


def unpack(data: bytes) -> tuple[int, FaceMotion, bool]:
    """(frame index, motion, speaking) from one packet; ValueError for anything else."""
    if len(data) != PACKET.size:
        raise ValueError(f"motion packet of {len(data)} bytes, expected {PACKET.size}")
    k, flags, *values = PACKET.unpack(data)
    return k, FaceMotion.from_list(values), bool(flags & 1)


class MotionSender:
    """Sends a session's face, frame by frame, on its ``motion`` channel until cancelled or the
    channel closes. The counters mirror the video track's."""

    def __init__(self, playout):
        self.playout = playout
        self.frames_sent = 0
        self.frames_skipped = 0  # frames never sent because the sender ran late

    async def run(self, channel) -> None:
        fps, clock = self.playout.fps, self.playout.clock
        k = int(clock.now() * fps)
        while channel.readyState == "open":
            late = await clock.wait(k / fps)
            if late > MAX_LATE_S:
                skip_to = int(clock.now() * fps)
                self.frames_skipped += max(0, skip_to - k)
                k = skip_to
            motion, speaking = self.playout.frame_at(k / fps)
            try:
                channel.send(pack(k, motion, speaking))
            except Exception:  # noqa: BLE001 - the channel closed under us; the session ends it
                return
            k += 1
            self.frames_sent += 1

    def stop(self) -> None:
        """Nothing to release (the task is the session's); kept so both outputs close alike."""
