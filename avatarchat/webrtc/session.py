"""One live session's transport: its peer connection, tracks and data channels.

    mic track -> 16 kHz mono -> this session's VAD stream -> Conversation.hear (probability, chunk)
    events data channel -> parsed, rate-limited messages -> Conversation.submit / interrupt
    Conversation (avatarchat/conversation/core.py) -> its Playout, read by the outgoing tracks
                                                   -> events, sent as JSON on the events channel

The conversation itself (turns, barge-in, history, states) is the core's; this module only carries
media and messages between it and the peer, and ends everything the session holds. Each session's
VAD state, conversation and playout are its own: sessions never hear each other.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import deque
from dataclasses import dataclass

import numpy as np
from aiortc import RTCDataChannel, RTCPeerConnection
from aiortc.mediastreams import MediaStreamError

from avatarchat.audio import StreamResampler
from avatarchat.avatar.painter import FramePainter
from avatarchat.config import Interruption, Limits, Pacing, Sessions
from avatarchat.conversation.core import Conversation
from avatarchat.conversation.measures import TurnClock
from avatarchat.conversation.utterances import merge_utterances
from avatarchat.end_of_turn import end_of_turn_for
from avatarchat.messages import AudioChunk, ChatMessage
from avatarchat.metrics import NoMetrics, SessionMetrics
from avatarchat.pacing import REAL_CLOCK, AsyncClock
from avatarchat.ports import StagePorts
from avatarchat.rate_limit import TokenBucket
from avatarchat.webrtc import motion_channel
from avatarchat.webrtc.client_messages import BadMessage, Interrupt, TextInput, parse_client_message
from avatarchat.conversation.playout import Playout
from avatarchat.webrtc.sessions import session_tag
from avatarchat.webrtc.tracks import AvatarAudioTrack, AvatarVideoTrack

__all__ = ["Session", "SessionDeps", "TurnClock", "merge_utterances"]  # the last two: from the core

log = logging.getLogger("ray.serve")

# Events sent before the data channel opens are kept (a few), then dropped oldest first.
_PENDING_EVENTS = 64
# How long a session's close waits for its peer connection to close (which goes on regardless).
PC_CLOSE_WAIT_S = 5.0
# How long it waits for its own tasks to end once cancelled (one that will not is logged and left).
TASK_STOP_WAIT_S = 5.0
# Closes in progress, held here: the event loop keeps only weak references to tasks.
_closing: set[asyncio.Task] = set()


def _keep(task: asyncio.Task) -> asyncio.Task:
    _closing.add(task)
    task.add_done_callback(_closing.discard)
    return task


@dataclass
class SessionDeps:
    """What every session of one media process shares: stage ports, the loaded VAD, the painter."""

    ports: StagePorts
    vad: object               # a loaded VAD backend; each session takes its own new_stream()
    painter: FramePainter     # the avatar's frames to pixels (avatarchat/avatar/painter.py)
    limits: Limits
    pacing: Pacing
    sessions: Sessions = Sessions()
    interruption: Interruption = Interruption()
    metrics: SessionMetrics | NoMetrics = NoMetrics()
    turn: object | None = None  # a loaded end-of-turn backend (stage "end_of_turn"); None: the VAD alone
    clock: AsyncClock = REAL_CLOCK


class Session:
    def __init__(self, session_id: str, pc: RTCPeerConnection, deps: SessionDeps, seed: int = 0,
                 render: str = "server"):
        self.id, self.pc, self.deps = session_id, pc, deps
        # what logs and task names call it: the id alone ends the session (DELETE), so it stays out
        self.tag = session_tag(session_id)
        self.render = render  # "server": video track; "browser": face motion on the motion channel
        self.connected_at: float | None = None
        self.last_media_at: float | None = None
        self.closed = False
        self._channel: RTCDataChannel | None = None
        self._unsent: deque[str] = deque(maxlen=_PENDING_EVENTS)
        self._tasks: set[asyncio.Task] = set()
        self._close_task: asyncio.Task | None = None
        self.conversation = Conversation(
            ports=deps.ports, send=self.send, fps=deps.painter.fps, limits=deps.limits, pacing=deps.pacing,
            segmenter=end_of_turn_for(deps.vad, deps.turn, max_utterance_s=deps.limits.max_utterance_s),
            interruption=deps.interruption, metrics=deps.metrics, clock=deps.clock, seed=seed,
            spawn=self._spawn)
        self.created_at = self.conversation.last_input_at
        self.audio_out = AvatarAudioTrack(self.playout)
        self.video_out = AvatarVideoTrack(self.playout, deps.painter)
        self.motion_out = motion_channel.MotionSender(self.playout)
        self._message_budget = TokenBucket(deps.sessions.max_messages_per_s, deps.sessions.message_burst,
                                           deps.clock)
        pc.on("track", self._on_track)
        pc.on("datachannel", self._on_datachannel)
        pc.on("connectionstatechange", self._on_connection_state)

    # -- the conversation, as the registry, the service and tests see it ------------------------
    @property
    def state(self) -> str:
        """What the client was last told: listening, thinking or speaking."""
        return self.conversation.wire_state

    @property
    def history(self) -> list[ChatMessage]:
        return self.conversation.history

    @property
    def turns(self) -> int:
        return self.conversation.turns

    @property
    def playout(self) -> Playout:
        return self.conversation.playout

    @property
    def last_input_at(self) -> float:
        return self.conversation.last_input_at

    def submit(self, user: AudioChunk | str, speech_end: float | None = None,
               ended_at: float | None = None, decision_s: float | None = None) -> None:
        if not self.closed:
            self.conversation.submit(user, speech_end, ended_at, decision_s)

    def interrupt(self, cause: str | None = None) -> None:
        self.conversation.interrupt(cause)

    # -- peer connection events ----------------------------------------------------------------
    def _on_track(self, track) -> None:
        if track.kind == "audio" and not self.closed:
            self._spawn(self._listen(track), "listen")

    def _on_datachannel(self, channel: RTCDataChannel) -> None:
        if channel.label == motion_channel.LABEL and self.render == "browser":
            start = lambda: self._spawn(self.motion_out.run(channel), "motion")  # noqa: E731
            if channel.readyState == "open":
                start()
            else:
                channel.on("open", start)
            return
        if channel.label != "events":
            return
        self._channel = channel
        channel.on("message", self._on_message)
        if channel.readyState == "open":
            self._on_channel_open()
        else:
            channel.on("open", self._on_channel_open)

    def _on_channel_open(self) -> None:
        while self._unsent and self._channel is not None:
            self._channel.send(self._unsent.popleft())
        self.send({"type": "state", "state": self.state})

    async def _on_connection_state(self) -> None:
        state = self.pc.connectionState
        if state == "connected" and self.connected_at is None:
            self.connected_at = self.deps.clock()
        elif state in ("failed", "closed"):
            self.closed = True  # the registry's reaper ends it within its interval

    def _on_message(self, raw) -> None:
        """Never raises: pyee turns a handler's exception into an "error" event, which with no
        handler is raised again inside aiortc's SCTP receive loop and ends the whole transport."""
        try:
            self._handle_message(raw)
        except Exception:  # noqa: BLE001 - a bug of ours, never the peer's doing: log it, carry on
            log.exception("session %s: handling a data-channel message", self.tag)
            self.send({"type": "error", "stage": "input", "reason": "the server failed on this message"})

    def _handle_message(self, raw) -> None:
        if not self._message_budget.allow():
            limit = self.deps.sessions.max_messages_per_s
            self.send({"type": "error", "stage": "input",
                       "reason": f"too many messages: at most {limit:g} a second; this one was dropped"})
            return
        try:
            message = parse_client_message(raw, self.deps.limits.max_text_chars)
        except BadMessage as err:
            self.send({"type": "error", "stage": "input", "reason": str(err)})
            return
        if isinstance(message, Interrupt):
            self.interrupt("message")
        elif isinstance(message, TextInput):
            self.submit(message.text)

    # -- sending ---------------------------------------------------------------------------------
    def send(self, event: dict) -> None:
        text = json.dumps(event)
        channel = self._channel
        if channel is not None and channel.readyState == "open":
            try:
                channel.send(text)
            except Exception:  # noqa: BLE001 - a closing channel; the reaper handles the session
                pass
        elif not self.closed:
            self._unsent.append(text)

    # -- input -----------------------------------------------------------------------------------
    async def _listen(self, track) -> None:
        """Inbound mic audio -> 16 kHz mono -> VAD chunks -> the conversation."""
        vad = self.deps.vad
        stream = vad.new_stream()
        resampler = StreamResampler(vad.sample_rate)
        n = vad.chunk_samples
        buf = np.zeros(0, np.float32)
        while not self.closed:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            self.last_media_at = self.deps.clock()
            samples = resampler.feed_frame(frame)
            if not len(samples):
                continue
            buf = np.concatenate([buf, samples])
            while len(buf) >= n:
                chunk, buf = buf[:n], buf[n:]
                await self.conversation.hear(stream.probability(chunk), chunk)

    # -- lifecycle -------------------------------------------------------------------------------
    def _spawn(self, coro, name: str) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro, name=f"session-{self.tag}-{name}")
        if self.closed:  # a track or event arriving while the session closes starts nothing
            task.cancel()
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("session %s: task %s failed: %r", self.tag, task.get_name(), task.exception())

    @property
    def frames_out(self):
        """What sends this session's face: the video track, or the motion sender in browser mode."""
        return self.motion_out if self.render == "browser" else self.video_out

    @property
    def active_tasks(self) -> int:
        return len(self._tasks)

    async def close(self, reason: str = "closed") -> None:
        """End everything this session holds: its turn, tasks, tracks and peer connection.

        The ending runs in a task of its own that no caller can cut short: a caller cancelled
        meanwhile (Serve cancels a DELETE or an offer whose HTTP client gave up) only stops
        waiting, and a second caller waits for the same ending."""
        if self._close_task is None:
            if self._channel is not None and self._channel.readyState == "open":
                try:
                    self._channel.send(json.dumps({"type": "closed", "reason": reason}))
                except Exception:  # noqa: BLE001
                    pass
            self.closed = True
            self.conversation.close()
            self._close_task = _keep(asyncio.get_running_loop().create_task(
                self._release(), name=f"session-{self.tag}-close"))
        await asyncio.shield(self._close_task)

    async def _release(self) -> None:
        try:
            # Until none is left: a task being cancelled may still have spawned another (a late
            # track). A task that will not end is left behind (logged), never waited for for good.
            while self._tasks:
                tasks = list(self._tasks)
                for task in tasks:
                    task.cancel()
                _, stuck = await asyncio.wait(tasks, timeout=TASK_STOP_WAIT_S)
                self._tasks.difference_update(tasks)
                if stuck:
                    log.warning("session %s: %d task(s) still running after cancel: %s", self.tag,
                                len(stuck), [t.get_name() for t in stuck])
            self.audio_out.stop()
            self.video_out.stop()
            self.deps.metrics.frames_skipped(self.frames_out.frames_skipped)
        finally:
            await self._close_peer_connection()

    async def _close_peer_connection(self) -> None:
        # Never cancelled: aiortc's close() marks the connection closed before it stops anything,
        # and a second call only waits for the first, so one cut short leaves transports and RTCP
        # tasks running for good. A slow one finishes on its own; we wait PC_CLOSE_WAIT_S at most.
        closing = _keep(asyncio.ensure_future(self.pc.close()))
        closing.add_done_callback(self._log_close_failure)
        try:
            await asyncio.wait_for(asyncio.shield(closing), PC_CLOSE_WAIT_S)
        except TimeoutError:
            log.warning("session %s: its peer connection is still closing after %g s", self.tag,
                        PC_CLOSE_WAIT_S)
        except Exception:  # noqa: BLE001 - logged by the done callback
            pass

    def _log_close_failure(self, closing: asyncio.Future) -> None:
        if not closing.cancelled() and closing.exception() is not None:
            log.warning("session %s: closing its peer connection: %r", self.tag, closing.exception())
