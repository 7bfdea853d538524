"""AvatarClient: a Python client that speaks the session protocol (docs/protocol.md).

It plays a WAV file as its microphone in real time (then silence, as an open mic does), records what
it receives (audio as numpy, video as arrival times plus small thumbnails and mouth-region crops, all
events) and can type, interrupt and hang up. For tests and load tests::

    client = AvatarClient("http://127.0.0.1:8000", host_addresses=["127.0.0.1"])
    # over HTTPS with a self-signed certificate: AvatarClient("https://...", verify="certs/cert.pem")
    await client.connect()
    client.say(samples, rate)           # or: client.send_text("What is your name?")
    await client.wait_for_event(lambda e: e["type"] == "transcript" and e["role"] == "avatar"
                                and e["final"])
    await client.close()
"""

from __future__ import annotations

import asyncio
import fractions
import json
import os
import ssl
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import av
import httpx
import numpy as np
from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

from avatarchat.audio import StreamResampler, read_wav, resample, to_pcm16
from avatarchat.messages import FaceMotion
from avatarchat.webrtc import motion_channel

RATE = 48000
# A 429 (this address has sessions.max_pending_per_client sessions still connecting: several
# clients connecting at once from one host) is retried after its Retry-After, this many times.
PENDING_RETRIES = 3
MAX_RETRY_WAIT_S = 15.0
MAX_MOTIONS = 45_000  # faces kept in render=browser: 30 min at 25 fps
FRAME_SAMPLES = 960  # 20 ms
# The server sends audio every 20 ms, silence included, for as long as the session lives: this
# long without any means its process is gone (a lost node, a killed replica), which ICE would only
# notice after ~30 s of failed consent checks. 5 s, not less: a box overloaded enough (two clusters
# on two cores in the test suite) stalled a live replica's audio for 3 s.
MEDIA_GAP_S = 5.0
LOST = "the server stopped sending media"


class Microphone(MediaStreamTrack):
    """An audio track that plays queued samples in real time, 20 ms a frame, silence in between."""

    kind = "audio"

    def __init__(self):
        super().__init__()
        self._queue: deque[np.ndarray] = deque()
        self._n = 0
        self._t0: float | None = None
        self._queued = 0  # frames ever queued by play()
        # sent_times[k]: monotonic time the k-th queued frame was handed to the sender (the time
        # its first sample went out; the frame's samples span the next 20 ms of the stream)
        self.sent_times: list[float] = []
        self.plays: list[int] = []  # per play() call, the index of its first queued frame

    def play(self, samples: np.ndarray, sample_rate: int) -> float:
        """Queue ``samples`` (mono float32) to be spoken; returns their duration in seconds."""
        x = resample(np.asarray(samples, np.float32), sample_rate, RATE)
        pad = (-len(x)) % FRAME_SAMPLES
        x = np.concatenate([x, np.zeros(pad, np.float32)])
        self.plays.append(self._queued)
        for i in range(0, len(x), FRAME_SAMPLES):
            self._queue.append(x[i:i + FRAME_SAMPLES])
        self._queued += len(x) // FRAME_SAMPLES
        return len(x) / RATE

    def sent_at(self, sample: int, sample_rate: int = RATE, play: int = -1) -> float | None:
        """Monotonic time at which sample index ``sample`` (counted at ``sample_rate``) of the
        ``play``-th play() call (default: the last) went out: its frame's send time plus its offset
        in the frame. None while it has not been sent."""
        if not self.plays:
            return None
        n = int(sample * RATE // sample_rate)
        k = self.plays[play] + n // FRAME_SAMPLES
        if k >= len(self.sent_times):
            return None
        return self.sent_times[k] + (n % FRAME_SAMPLES) / RATE

    @property
    def playing(self) -> bool:
        return bool(self._queue)

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._t0 is None:
            self._t0 = time.monotonic()
        delay = self._t0 + self._n * FRAME_SAMPLES / RATE - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        if self._queue:
            samples = self._queue.popleft()
            self.sent_times.append(time.monotonic())
        else:
            samples = np.zeros(FRAME_SAMPLES, np.float32)
        frame = av.AudioFrame.from_ndarray(to_pcm16(samples).reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = RATE
        frame.pts = self._n * FRAME_SAMPLES
        frame.time_base = fractions.Fraction(1, RATE)
        self._n += 1
        return frame


@dataclass
class Received:
    """What the client got. ``video_times`` are arrival times (client monotonic clock);
    ``thumbnails`` 32x32 RGB per frame; ``mouth`` the mouth-box crop (luma) per frame when a box
    was given."""

    audio: list[np.ndarray] = field(default_factory=list)   # 48 kHz mono float32 pieces
    audio_times: list[float] = field(default_factory=list)
    video_times: list[float] = field(default_factory=list)
    thumbnails: list[np.ndarray] = field(default_factory=list)
    mouth: list[np.ndarray] = field(default_factory=list)
    events: list[dict] = field(default_factory=list)
    event_times: list[float] = field(default_factory=list)
    # render=browser sessions: the face as numbers, one per frame (arrival time, frame index, motion)
    motions: list[tuple[float, int, FaceMotion]] = field(default_factory=list)
    frame_size: tuple[int, int] | None = None  # (width, height) of the last video frame

    def audio_samples(self) -> np.ndarray:
        return np.concatenate(self.audio) if self.audio else np.zeros(0, np.float32)

    def fps(self, since: float | None = None) -> float:
        """Faces received per second: video frames, or motion packets in render=browser."""
        times = self.video_times or [t for t, _, _ in self.motions]
        times = [t for t in times if since is None or t >= since]
        if len(times) < 2:
            return 0.0
        return (len(times) - 1) / (times[-1] - times[0])


class AvatarClient:
    def __init__(self, server: str, *, host_addresses: list[str] | None = None,
                 mouth_box: tuple[int, int, int, int] | None = None, keep_frames: int = 3000,
                 timeout_s: float = 30.0, http_transport: httpx.AsyncBaseTransport | None = None,
                 verify: bool | str | os.PathLike = True, render: str | None = None,
                 token: str | None = None, media_gap_s: float = MEDIA_GAP_S):
        self.server = server.rstrip("/")
        # sent as "Authorization: Bearer" on every request, as WHIP clients do (access.user_token_env)
        self._headers = {"authorization": f"Bearer {token}"} if token else {}
        # True (the system's CAs), False, or a CA/certificate file to trust (a self-signed HTTPS server)
        self.verify = verify if isinstance(verify, bool) else ssl.create_default_context(cafile=str(verify))
        self.host_addresses, self.mouth_box = host_addresses, mouth_box
        # None: the server's default; "browser": no video, the face's motion on a data channel
        self.requested_render = render
        self.render: str | None = None  # what the server chose (the Avatar-Render header)
        self.keep_frames, self.timeout_s, self.media_gap_s = keep_frames, timeout_s, media_gap_s
        self._http_transport = http_transport  # e.g. httpx.ASGITransport(app) in in-process tests
        self.mic = Microphone()
        self.received = Received()
        self.location: str | None = None
        self.connect_s: float | None = None
        self.pc: RTCPeerConnection | None = None
        self._channel = None
        self._channel_open = asyncio.Event()
        self._event_added = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._last_audio_at = 0.0
        self._media_timer: asyncio.TimerHandle | None = None

    def _http(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(timeout=self.timeout_s, transport=self._http_transport, verify=self.verify,
                                 headers=self._headers)

    # -- connecting ------------------------------------------------------------------------------
    async def connect(self) -> "AvatarClient":
        if self.host_addresses:
            from avatarchat.webrtc.service import use_host_addresses

            use_host_addresses(self.host_addresses)
        t0 = time.monotonic()
        self.pc = pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        pc.addTrack(self.mic)
        browser = self.requested_render == "browser"
        if not browser:
            pc.addTransceiver("video", direction="recvonly")
        self._channel = pc.createDataChannel("events")
        self._channel.on("open", self._channel_open.set)
        self._channel.on("message", self._on_message)
        if browser:
            motion = pc.createDataChannel(motion_channel.LABEL, ordered=False, maxRetransmits=0)
            motion.on("message", self._on_motion)
        pc.on("track", self._on_track)
        await pc.setLocalDescription(await pc.createOffer())
        query = f"?render={self.requested_render}" if self.requested_render else ""
        for attempt in range(PENDING_RETRIES + 1):
            async with self._http() as http:
                r = await http.post(f"{self.server}/v1/sessions{query}", content=pc.localDescription.sdp,
                                    headers={"content-type": "application/sdp"})
            if r.status_code != 429 or attempt == PENDING_RETRIES:
                break
            await asyncio.sleep(_retry_after_s(r))
        if r.status_code != 201:
            await pc.close()
            raise SessionRefused(r.status_code, _reason(r), r.headers.get("retry-after"))
        self.location = r.headers["location"]
        self.render = r.headers.get("avatar-render")
        await pc.setRemoteDescription(RTCSessionDescription(sdp=r.text, type="answer"))
        await asyncio.wait_for(self._channel_open.wait(), self.timeout_s)
        self.connect_s = time.monotonic() - t0
        return self

    @property
    def session_id(self) -> str | None:
        return self.location.rsplit("/", 1)[-1] if self.location else None

    def _on_track(self, track) -> None:
        reader = self._read_audio if track.kind == "audio" else self._read_video
        self._tasks.append(asyncio.get_running_loop().create_task(reader(track)))

    async def _read_audio(self, track) -> None:
        resampler = StreamResampler(RATE)
        self._last_audio_at = time.monotonic()
        self._watch_media(self.media_gap_s)
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            self._last_audio_at = time.monotonic()
            samples = resampler.feed_frame(frame)
            if len(samples):
                self.received.audio.append(samples)
                self.received.audio_times.append(time.monotonic())

    def _watch_media(self, delay: float) -> None:
        """A deadline, moved on as audio arrives: it fires once per media_gap_s at most (a
        wait_for around every 20 ms frame cost a task and a timer per frame)."""
        self._media_timer = asyncio.get_running_loop().call_later(delay, self._check_media)

    def _check_media(self) -> None:
        quiet = time.monotonic() - self._last_audio_at
        if quiet < self.media_gap_s:
            self._watch_media(self.media_gap_s - quiet)
            return
        # as the server's own "closed" event would read; "local": this client decided it
        self._on_message(json.dumps({"type": "closed", "reason": f"{LOST} for {self.media_gap_s:g} s",
                                     "local": True}))

    async def _read_video(self, track) -> None:
        r = self.received
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            r.video_times.append(time.monotonic())
            r.frame_size = (frame.width, frame.height)
            if len(r.thumbnails) >= self.keep_frames:
                continue
            r.thumbnails.append(frame.reformat(width=32, height=32, format="rgb24").to_ndarray())
            if self.mouth_box is not None:
                x0, y0, x1, y1 = self.mouth_box
                if frame.format.name == "yuv420p":  # the luma plane: no colour conversion
                    r.mouth.append(frame.to_ndarray()[y0:y1, x0:x1].copy())
                else:
                    r.mouth.append(frame.to_ndarray(format="gray")[y0:y1, x0:x1].copy())

    def _on_motion(self, raw) -> None:
        try:
            k, motion, _ = motion_channel.unpack(raw)
        except (ValueError, TypeError):
            return
        if len(self.received.motions) < MAX_MOTIONS:
            self.received.motions.append((time.monotonic(), k, motion))

    def _on_message(self, raw) -> None:
        try:
            event = json.loads(raw)
        except ValueError:
            event = {"type": "unparsed", "raw": str(raw)}
        self.received.events.append(event)
        self.received.event_times.append(time.monotonic())
        self._event_added.set()

    # -- talking ---------------------------------------------------------------------------------
    def say(self, samples: np.ndarray, sample_rate: int) -> float:
        """Speak ``samples`` into the microphone (real time); returns their duration."""
        return self.mic.play(samples, sample_rate)

    def say_wav(self, path) -> float:
        samples, rate = read_wav(path)
        return self.say(samples, rate)

    def send(self, message: dict | str) -> None:
        self._channel.send(message if isinstance(message, str) else json.dumps(message))

    def send_text(self, text: str) -> None:
        self.send({"type": "text", "text": text})

    def interrupt(self) -> None:
        self.send({"type": "interrupt"})

    async def wait_for_event(self, predicate: Callable[[dict], bool], timeout_s: float = 60.0,
                             start: int = 0) -> dict:
        """The first event (from index ``start``) matching ``predicate``, waiting up to ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        seen = start
        while True:
            events = self.received.events
            for event in events[seen:]:
                if predicate(event):
                    return event
            seen = len(events)
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no matching event in {timeout_s} s; got {events[start:][-10:]}")
            self._event_added.clear()
            try:
                await asyncio.wait_for(self._event_added.wait(), left)
            except TimeoutError:
                pass

    def events_of(self, kind: str, **match) -> list[dict]:
        return [e for e in self.received.events
                if e.get("type") == kind and all(e.get(k) == v for k, v in match.items())]

    # -- hanging up --------------------------------------------------------------------------------
    async def close(self) -> int | None:
        """Hang up: DELETE the session, then close the peer connection. Returns DELETE's status."""
        status = None
        if self.location:
            try:
                async with self._http() as http:
                    status = (await http.delete(f"{self.server}{self.location}")).status_code
            except httpx.HTTPError:
                pass
        await self._stop()
        return status

    async def vanish(self) -> None:
        """Disappear without hanging up, as a killed browser tab does: no DELETE, no DTLS or SCTP
        goodbye; the UDP sockets just close."""
        if self.pc is not None:
            for transceiver in self.pc.getTransceivers():
                transport = transceiver.sender.transport
                ice = getattr(getattr(transport, "transport", None), "_connection", None)
                for protocol in getattr(ice, "_protocols", []):
                    if protocol.transport is not None:
                        protocol.transport.close()
            sctp = self.pc.sctp
            ice = getattr(getattr(getattr(sctp, "transport", None), "transport", None), "_connection", None)
            for protocol in getattr(ice, "_protocols", []):
                if protocol.transport is not None:
                    protocol.transport.close()
        self.mic.stop()
        self.location = None
        await self._stop()

    async def _stop(self) -> None:
        if self._media_timer is not None:
            self._media_timer.cancel()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        self.mic.stop()
        if self.pc is not None:
            try:
                await asyncio.wait_for(self.pc.close(), 5)
            except Exception:  # noqa: BLE001
                pass


class SessionRefused(Exception):
    def __init__(self, status: int, reason: str, retry_after: str | None = None):
        super().__init__(f"{status}: {reason}")
        self.status, self.reason, self.retry_after = status, reason, retry_after


def _retry_after_s(response: httpx.Response) -> float:
    try:
        return min(MAX_RETRY_WAIT_S, max(0.0, float(response.headers.get("retry-after", "1"))))
    except ValueError:  # an HTTP date: not sent by this server
        return 1.0


def _reason(response: httpx.Response) -> str:
    try:
        return response.json().get("error", response.text)
    except ValueError:
        return response.text
