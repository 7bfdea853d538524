"""One live session: its peer connection, the tasks that serve it, its state and its history.

    mic track -> 16 kHz mono -> this session's VAD stream -> EndOfTurn (VAD pauses + turn model)
              -> on SpeechEnded: a Turn through the stage deployments, with this session's history
    Turn events -> AvatarChunks into the Playout (the tracks play them), the rest as JSON on the
                   ``events`` data channel (avatarchat.wire.encode)

Barge-in: speech that starts while a turn is still thinking cancels it, and its utterance is
answered together with the next one, so a pause in a question does not split it. Voice while the
avatar speaks pauses it at the first voiced chunk and, once it has lasted
``interruption.min_speech_ms``, cancels the reply (its queued audio and frames are dropped) and the
new utterance is answered on its own; a shorter sound only pauses it (signaling/barge_in.py). The
history keeps only the part of an interrupted reply the user heard. A typed message while a turn
runs replaces it; ``{"type": "interrupt"}`` only cancels. Each session's VAD state, history and playout
are its own: sessions never hear each other.
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

from avatarchat import wire
from avatarchat.audio import StreamResampler
from avatarchat.avatar.renderer import PortraitRenderer
from avatarchat.config import Interruption, Limits, Pacing, Sessions
from avatarchat.events import ReplyDone, StateChanged, TurnFailed
from avatarchat.metrics import NoMetrics, SessionMetrics
from avatarchat.messages import AudioChunk, AvatarChunk, ChatMessage, Transcript, TurnTimings
from avatarchat.pacing import Clock, monotonic
from avatarchat.rate_limit import TokenBucket
from avatarchat.ports import StagePorts
from avatarchat.end_of_turn import end_of_turn_for
from avatarchat.segmenter import SpeechEnded, SpeechStarted
from avatarchat.turn import Turn, TurnOptions
from signaling import motion_channel
from signaling.barge_in import BargeIn, BargeInDetector
from signaling.messages import BadMessage, Interrupt, TextInput, parse_client_message
from signaling.playout import Playout
from signaling.sessions import session_tag
from signaling.tracks import AvatarAudioTrack, AvatarVideoTrack

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
    """What every session of one gateway shares: stage ports, the loaded VAD, the renderer."""

    ports: StagePorts
    vad: object               # a loaded VAD backend; each session takes its own new_stream()
    renderer: PortraitRenderer
    fps: int
    limits: Limits
    pacing: Pacing
    sessions: Sessions = Sessions()
    interruption: Interruption = Interruption()
    metrics: SessionMetrics | NoMetrics = NoMetrics()
    turn: object | None = None  # a loaded end-of-turn backend (stage "turn"); None: the VAD alone
    clock: Clock = monotonic


class Session:
    def __init__(self, session_id: str, pc: RTCPeerConnection, deps: SessionDeps, seed: int = 0,
                 render: str = "server"):
        self.id, self.pc, self.deps = session_id, pc, deps
        # what logs and task names call it: the id alone ends the session (DELETE), so it stays out
        self.tag = session_tag(session_id)
        self.render = render  # "server": video track; "browser": face motion on the motion channel
        now = deps.clock()
        self.created_at = self.last_input_at = now
        self.connected_at: float | None = None
        self.last_media_at: float | None = None
        self.closed = False
        self.state = "listening"
        self.history: list[ChatMessage] = []
        self.turns = 0
        self.playout = Playout(deps.fps, idle_seed=seed, clock=deps.clock)
        self.audio_out = AvatarAudioTrack(self.playout)
        self.video_out = AvatarVideoTrack(self.playout, deps.renderer)
        self.motion_out = motion_channel.MotionSender(self.playout)
        self._channel: RTCDataChannel | None = None
        self._unsent: deque[str] = deque(maxlen=_PENDING_EVENTS)
        self._tasks: set[asyncio.Task] = set()
        self._turn: asyncio.Task | None = None
        self._turn_input: AudioChunk | str | None = None
        self._pending: AudioChunk | None = None   # an utterance whose turn the user talked over
        self._reply_user: str | None = None       # the question of the reply being played
        self._reply_remembered = False            # its full text is in the history already
        ivl = deps.interruption
        self._talk_over = BargeInDetector(
            chunk_s=deps.vad.chunk_samples / deps.vad.sample_rate,
            threshold=getattr(deps.vad.options, "threshold", 0.5),
            neg_threshold=getattr(deps.vad.options, "neg_threshold", 0.35),
            min_speech_s=ivl.min_speech_ms / 1000, resume_after_s=ivl.resume_after_ms / 1000)
        self._talk_over_onset: float | None = None  # clock time the voice over the avatar began
        self._seed = seed
        self._close_task: asyncio.Task | None = None
        self._message_budget = TokenBucket(deps.sessions.max_messages_per_s, deps.sessions.message_burst,
                                           deps.clock)
        pc.on("track", self._on_track)
        pc.on("datachannel", self._on_datachannel)
        pc.on("connectionstatechange", self._on_connection_state)

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

    def _set_state(self, state: str) -> None:
        if state != self.state:
            self.state = state
            self.send({"type": "state", "state": state})

    # -- input -----------------------------------------------------------------------------------
    async def _listen(self, track) -> None:
        """Inbound mic audio -> 16 kHz mono -> VAD -> utterances -> turns."""
        vad = self.deps.vad
        stream = vad.new_stream()
        segmenter = end_of_turn_for(vad, self.deps.turn, max_utterance_s=self.deps.limits.max_utterance_s)
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
                probability = stream.probability(chunk)
                self._watch_talk_over(probability)
                for event in await segmenter.afeed(probability, chunk):
                    if isinstance(event, SpeechStarted):
                        self.last_input_at = self.deps.clock()
                        if not self.playout.speaking:
                            self._barge_in()  # a pause mid-question: answer both parts together
                    elif isinstance(event, SpeechEnded):
                        if self.playout.speaking:
                            continue  # too short to interrupt the avatar (_watch_talk_over): a noise
                        # how long after the speech ended the decision came, and when it ended
                        waited = event.decision_delay_s
                        audio = merge_utterances(self._pending, event.audio, self.deps.limits.max_utterance_s)
                        self._pending = None
                        self.submit(audio, speech_end=event.at_s,
                                    ended_at=self.deps.clock() - waited, decision_s=waited)

    def _watch_talk_over(self, probability: float) -> None:
        """Voice while the avatar speaks pauses it at once and interrupts it after
        ``interruption.min_speech_ms``; a shorter sound lets it go on (signaling/barge_in.py)."""
        if not self.playout.speaking:
            self._talk_over.reset()
            return
        action = self._talk_over.feed(probability)
        if action is BargeIn.PAUSE:
            self._talk_over_onset = self.deps.clock() - self._talk_over.chunk_s
            self.playout.hold()
        elif action is BargeIn.RESUME:
            self.playout.release()
        elif action is BargeIn.INTERRUPT:
            self._interrupted("voice")
            self._barge_in()

    def _interrupted(self, cause: str) -> None:
        """Tell the client how fast the avatar went quiet, and what of the reply it had heard."""
        silent_at, onset = self.playout.silent_since, self._talk_over_onset
        event = {"type": "interruption", "cause": cause, "heard_text": self.playout.heard_text()}
        if cause == "voice" and silent_at is not None and onset is not None:
            event["speech_onset_to_silence"] = round(max(silent_at - onset, 0.0), 4)
            self.deps.metrics.interruption(event["speech_onset_to_silence"])
        self.send(event)

    def _barge_in(self) -> None:
        """The user started speaking (see the module docstring): stop the turn in progress, or
        the end of a reply still playing."""
        running = self._turn is not None and not self._turn.done()
        if not running and not self.playout.speaking:
            return
        if running and isinstance(self._turn_input, AudioChunk) and self.state != "speaking":
            self._pending = merge_utterances(self._pending, self._turn_input, self.deps.limits.max_utterance_s)
        self.interrupt()

    def submit(self, user: AudioChunk | str, speech_end: float | None = None,
               ended_at: float | None = None, decision_s: float | None = None) -> None:
        """Answer ``user`` (an utterance or typed text), interrupting a reply still running.
        ``ended_at``: clock time the user's speech ended; ``decision_s``: how long after that the
        end of the turn was decided."""
        if self.closed:
            return
        self.last_input_at = self.deps.clock()
        previous = self._turn
        self._turn_input = user
        started = TurnClock(ended_at if ended_at is not None else self.deps.clock(), decision_s,
                            spoken=isinstance(user, AudioChunk))
        self._turn = self._spawn(self._run_turn(user, speech_end, previous, started), "turn")

    def interrupt(self, cause: str | None = None) -> None:
        """Cancel the current turn, drop its queued audio and frames, back to the idle face.
        ``cause`` ("message") also tells the client, as a voice interruption does."""
        if cause is not None and self.playout.speaking:
            self._interrupted(cause)
        if self._turn is not None and not self._turn.done():
            self._turn.cancel()  # kept in self._turn: the next turn waits for it to finish
        self._turn_input = None
        self._keep_what_was_heard()
        self.playout.flush()
        self._talk_over.reset()
        self._set_state("listening")

    async def _run_turn(self, user, speech_end: float | None, previous: asyncio.Task | None,
                        started: "TurnClock") -> None:
        if previous is not None and not previous.done():
            previous.cancel()
            await asyncio.gather(previous, return_exceptions=True)
        self._keep_what_was_heard()
        self.playout.flush()
        limits, pacing = self.deps.limits, self.deps.pacing
        turn = Turn(self.deps.ports, self.history,
                    TurnOptions(lead_s=pacing.lead_s, realtime=True,
                                max_history_messages=limits.max_history_messages, seed=self._seed))
        turn.timings.speech_end_in_input = speech_end
        self.turns += 1
        events = turn.run(user)
        user_text, reply = None, None
        try:
            async with asyncio.timeout(limits.turn_timeout_s):
                async for event in events:
                    if isinstance(event, AvatarChunk):
                        if reply is None:
                            reply = self.playout.start_reply()
                        self.playout.push(event)
                        continue
                    if isinstance(event, StateChanged):
                        self._set_state(event.state)
                        continue
                    if isinstance(event, Transcript):
                        user_text = self._reply_user = event.text or None
                    elif isinstance(event, ReplyDone) and user_text:
                        self._remember(user_text, event.text)
                        self._reply_remembered = True
                    elif isinstance(event, TurnTimings):
                        event.extra["session_turn"] = float(self.turns)
                        event.extra.update(started.measures(self.playout.first_audio_at))
                        encoded = wire.encode(event)
                        self.deps.metrics.turn(encoded)
                        self.send(encoded)
                        continue
                    self.send(wire.encode(event))
        except TimeoutError:
            self.send(wire.encode(TurnFailed("turn", f"turn exceeded turn_timeout_s={limits.turn_timeout_s}")))
        finally:
            await events.aclose()
            if reply is not None:
                self.playout.end_reply(reply)
            if not self.closed and asyncio.current_task() is self._turn:
                self._set_state("listening")

    def _keep_what_was_heard(self) -> None:
        """Before a reply is dropped: the history keeps only the part of it the user heard."""
        user, remembered = self._reply_user, self._reply_remembered
        self._reply_user, self._reply_remembered = None, False
        if user is None:
            return
        heard = self.playout.heard_text()
        if remembered and self.history and self.history[-1].role == "assistant":
            self.history = self.history[:-1] + [ChatMessage("assistant", heard)] if heard else self.history[:-2]
        elif not remembered and heard:
            self._remember(user, heard)

    def _remember(self, user_text: str, reply_text: str) -> None:
        self.history += [ChatMessage("user", user_text), ChatMessage("assistant", reply_text)]
        keep = self.deps.limits.max_history_messages
        self.history = self.history[-keep:] if keep else []

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
            self.playout.flush()
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


@dataclass(frozen=True, slots=True)
class TurnClock:
    """When a turn's input ended (clock time), for the per-turn measures sent with its timings."""

    ended_at: float
    decision_s: float | None
    spoken: bool

    def measures(self, first_audio_at: float | None) -> dict[str, float]:
        out = {}
        if self.decision_s is not None:
            out["end_of_turn_decision"] = self.decision_s
        if first_audio_at is not None:
            # end of the user's speech (or the typed message's arrival) -> first reply audio sent
            out["voice_to_voice" if self.spoken else "text_to_voice"] = first_audio_at - self.ended_at
        return out


def merge_utterances(first: AudioChunk | None, second: AudioChunk, max_s: float) -> AudioChunk:
    """``second`` preceded by ``first`` (an earlier utterance of the same stream), without the part
    they share (their pre- and post-roll may overlap); keeps at most the last ``max_s`` seconds."""
    if first is None or len(first.samples) == 0:
        return second
    rate = second.sample_rate
    overlap = max(0, int(round((first.end - second.start) * rate)))
    samples = np.concatenate([first.samples, second.samples[overlap:]])
    limit = int(max_s * rate)
    if len(samples) > limit:
        samples = samples[-limit:]
    return AudioChunk(samples, rate, second.end - len(samples) / rate)
