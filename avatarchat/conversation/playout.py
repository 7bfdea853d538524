"""One session's media clock and reply buffer.

Both outgoing tracks run off one ``MediaClock``: audio frame ``n`` (20 ms) is due at ``n * 0.02`` s
and video frame ``k`` at ``k / fps`` s on the same clock. The reply's audio plays from a FIFO;
whatever reply time is being heard at a moment decides which face-motion frame the video shows, so
sound and mouth stay together even when the pipeline runs late (an underflow plays silence and holds
the mouth; nothing drifts). With no reply queued the audio is silence and the face is
``idle_motion`` on the session clock.

Everything is bounded: at most ``max_buffer_s`` of reply audio and its frames are held; the turn
already paces itself to ``lead_s`` ahead of real time, so the cap is only a safety net.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import replace

import numpy as np

from avatarchat.messages import AvatarChunk, FaceMotion, Frame
from avatarchat.audio import StreamResampler
from avatarchat.pacing import REAL_CLOCK, AsyncClock, MediaClock

OUT_RATE = 48000
AUDIO_FRAME_S = 0.02
AUDIO_FRAME_SAMPLES = int(OUT_RATE * AUDIO_FRAME_S)  # 960


class Playout:
    """The reply being played: audio FIFO at 48 kHz and its face-motion frames by reply frame index."""

    def __init__(self, fps: int, idle_seed: int = 0, max_buffer_s: float = 30.0,
                 clock: AsyncClock = REAL_CLOCK):
        self.fps, self.idle_seed, self.max_buffer_s = fps, idle_seed, max_buffer_s
        self.clock = MediaClock(clock)
        self._audio: deque[np.ndarray] = deque()   # 48 kHz pieces, oldest first
        self._queued = 0                            # samples in _audio
        self._head_reply_t = 0.0                    # reply time of the FIFO's first sample
        self._frames: dict[int, Frame] = {}         # reply frame index -> its frame
        self._resampler: StreamResampler | None = None
        self._heard: tuple[float, float] | None = None  # (media time, reply time) of the last audio frame
        self._reply_open = False
        self._sentences: dict[int, list] = {}        # sentence -> [reply start, reply end, text]
        self.held = False                           # paused while the user may be talking over it
        self.silent_since: float | None = None      # when the first silent frame of a hold left
        self.first_audio_at: float | None = None    # when this reply's first audio left (clock time)
        self.generation = 0                         # bumped by every flush
        self._last_face: tuple[float, FaceMotion] | None = None  # (media time, face) last spoken

    # -- producer side (the session's turn task) -------------------------------------------
    @property
    def speaking(self) -> bool:
        return self._queued > 0 or self._reply_open

    @property
    def queued_s(self) -> float:
        return self._queued / OUT_RATE

    def start_reply(self) -> int:
        """Begin a new reply (dropping anything queued); returns its token for ``end_reply``."""
        self.flush()
        self._reply_open = True
        return self.generation

    def push(self, chunk: AvatarChunk) -> None:
        audio = chunk.audio
        if self._resampler is None or self._resampler.src_rate != audio.sample_rate:
            self._resampler = StreamResampler(OUT_RATE, audio.sample_rate)
        self._append(self._resampler.feed(audio.samples))
        for i, motion in enumerate(chunk.frames):
            self._frames[chunk.first_frame + i] = motion
        span = self._sentences.setdefault(chunk.sentence, [audio.start, audio.end, chunk.text])
        span[1] = max(span[1], audio.end)
        # Safety net: never hold more than max_buffer_s (the turn's pacing keeps it near lead_s).
        while self._queued > self.max_buffer_s * OUT_RATE and self._audio:
            self._drop_head(len(self._audio[0]))

    def end_reply(self, token: int | None = None) -> None:
        """The reply's last chunk was pushed. A stale token (the reply was flushed since) is ignored."""
        if token is not None and token != self.generation:
            return
        if self._resampler is not None:
            self._append(self._resampler.flush())
        self._resampler = None
        self._reply_open = False

    def hold(self) -> None:
        """Pause: silence and the idle face until ``release`` (nothing queued is lost)."""
        if not self.held:
            self.held, self.silent_since = True, None

    def release(self) -> None:
        self.held = False

    def heard_text(self) -> str:
        """The part of the reply played so far: whole sentences, and of the sentence being played
        the share of its words that its played audio covers."""
        heard, words = self._head_reply_t, []
        for _, (start, end, text) in sorted(self._sentences.items()):
            if start >= heard:
                break
            parts = text.split()
            share = 1.0 if end <= heard else (heard - start) / max(end - start, 1e-6)
            words += parts[:round(len(parts) * share)]
        return " ".join(words)

    def flush(self) -> None:
        """Drop everything queued (interrupt); the face goes back to idle at the next frame."""
        self._audio.clear()
        self._sentences.clear()
        self.held = False
        self.first_audio_at = None
        self._queued = 0
        self._head_reply_t = 0.0
        self._frames.clear()
        self._resampler = None
        self._heard = None
        self._reply_open = False
        self.generation += 1

    def _append(self, samples: np.ndarray) -> None:
        if len(samples):
            self._audio.append(samples)
            self._queued += len(samples)

    def _drop_head(self, n: int) -> np.ndarray:
        out, need = [], n
        while need and self._audio:
            head = self._audio[0]
            take = head[:need]
            out.append(take)
            if len(take) == len(head):
                self._audio.popleft()
            else:
                self._audio[0] = head[need:]
            need -= len(take)
        got = n - need
        self._queued -= got
        self._head_reply_t += got / OUT_RATE
        return np.concatenate(out) if out else np.zeros(0, np.float32)

    # -- consumer side (the tracks) ------------------------------------------------------------
    def audio_frame(self, media_t: float) -> np.ndarray:
        """The 20 ms of audio to play at ``media_t``: reply audio, padded with silence."""
        if self.held and self.silent_since is None:
            self.silent_since = self.clock.clock()
        if self._queued and not self.held:
            if self.first_audio_at is None:
                self.first_audio_at = self.clock.clock()
            reply_t = self._head_reply_t
            samples = self._drop_head(AUDIO_FRAME_SAMPLES)
            self._heard = (media_t, reply_t)
            if len(samples) < AUDIO_FRAME_SAMPLES:
                samples = np.concatenate([samples, np.zeros(AUDIO_FRAME_SAMPLES - len(samples), np.float32)])
            # frames the listener has heard past are no longer needed
            done = int(reply_t * self.fps) - 1
            for k in [k for k in self._frames if k < done]:
                del self._frames[k]
            return samples
        if not self._reply_open:
            self._heard = None
        return np.zeros(AUDIO_FRAME_SAMPLES, np.float32)

    def frame_at(self, media_t: float) -> tuple[Frame, bool]:
        """The frame to show at ``media_t`` and whether it is a speaking frame: the reply's frame
        (FaceMotion or a drawn VideoFrame) being heard, else the idle face (a FaceMotion)."""
        if self._heard is not None and self._frames and not self.held:
            heard_media, heard_reply = self._heard
            reply_t = heard_reply + min(max(media_t - heard_media, 0.0), AUDIO_FRAME_S)
            k = int(reply_t * self.fps + 1e-6)
            motion = self._frames.get(k)
            if motion is None and self._frames:
                # the nearest frame we hold (an underflow holds the mouth where it was)
                nearest = min(self._frames, key=lambda j: abs(j - k))
                if abs(nearest - k) <= 2:
                    motion = self._frames[nearest]
            if motion is not None:
                if isinstance(motion, FaceMotion):  # its expression eases out into the idle face
                    self._last_face = (media_t, motion)
                return motion, True
        return self._idle(media_t), False

    def _idle(self, media_t: float) -> FaceMotion:
        """The idle face, with the last reply's expression easing back to neutral."""
        from avatarchat.avatar import expression
        from avatarchat.avatar.motion import idle_motion

        idle = idle_motion(media_t, self.idle_seed)
        if self._last_face is None:
            return idle
        since, last = self._last_face
        fade = math.exp(-max(media_t - since, 0.0) / expression.BLEND_OUT_S)
        face = expression.Expression(last.smile * fade, last.surprise * fade)
        if abs(face.smile) < 0.005 and face.surprise < 0.005:
            self._last_face = None
            return idle
        extra = expression.offsets(face)
        return replace(idle, brow=idle.brow + extra.brow, head_pitch=idle.head_pitch + extra.head_pitch,
                       mouth_open=extra.mouth_open, smile=face.smile, surprise=face.surprise)
