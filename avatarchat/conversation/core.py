"""The conversation core: one user and the avatar taking turns, with no transport in sight.

    hear(VAD probability, 16 kHz chunk)  -> barge-in detector, end of turn -> turns
    submit(text), interrupt(cause)       -> turns (avatarchat/turn.py), through a ReplyOutbox
    out: the Playout (its one owner: the tracks only read it), and events through ``send(dict)``

The turn lifecycle is a state machine (states.py; the client sees listening / thinking / speaking):

    state            on                                                   to
    LISTENING        speech starts                                        USER_SPEAKING
    USER_SPEAKING    the utterance ends                                   THINKING
    THINKING         the reply's first audio                              SPEAKING
    THINKING         speech starts: the turn is cut, its utterance is     USER_SPEAKING
                     answered together with the next one
    THINKING         the turn ends with no reply (nothing heard, failed)  LISTENING
    SPEAKING         voice over it: the playout holds at once             PAUSED_BY_VOICE
    PAUSED_BY_VOICE  quiet before interruption.min_speech_ms (a cough)    SPEAKING (FINISHING if complete)
    PAUSED_BY_VOICE  interruption.min_speech_ms of voice: the reply is    USER_SPEAKING
                     cut and the new utterance answered on its own
    SPEAKING         the reply is complete; its last lead_s still plays   FINISHING
    FINISHING        its last audio has played                            LISTENING
    FINISHING        voice over it                                        PAUSED_BY_VOICE
    any              typed text: the reply is cut, a new turn starts      THINKING
    any              {"type": "interrupt"}: the reply is cut              LISTENING
    (LISTENING, when it is entered while the user speaks, is USER_SPEAKING)

Cutting a reply is one operation (``_cut_reply``): the turn is cancelled, its outbox emptied by each
event's type (media and partial text dropped, transcripts, timings and errors delivered), the
history keeps only the part of the reply the user heard, and the playout drops what is queued. The
core runs on an injected clock (avatarchat/pacing.py), which the turn's pacing and the playout's
media clock use too, so tests script whole conversations on virtual time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from avatarchat import wire
from avatarchat.config import Interruption, Limits, Pacing
from avatarchat.conversation.measures import TurnClock
from avatarchat.conversation.outbox import ReplyOutbox, TurnEvent
from avatarchat.conversation.states import ConversationState, ConversationStates
from avatarchat.conversation.utterances import merge_utterances
from avatarchat.end_of_turn import EndOfTurn
from avatarchat.events import ReplyDone, StateChanged, TurnFailed
from avatarchat.messages import AudioChunk, AvatarChunk, ChatMessage, Transcript, TurnTimings
from avatarchat.metrics import NoMetrics, SessionMetrics
from avatarchat.pacing import REAL_CLOCK, AsyncClock, deadline
from avatarchat.ports import StagePorts
from avatarchat.segmenter import SpeechEnded, SpeechStarted
from avatarchat.turn import Turn, TurnOptions
from avatarchat.conversation.barge_in import BargeIn, BargeInDetector
from avatarchat.conversation.playout import Playout

S = ConversationState
# States in which a reply is audible (or held), so voice over it is watched.
_REPLY_PLAYING = frozenset({S.SPEAKING, S.PAUSED_BY_VOICE, S.FINISHING})

Spawn = Callable[[Coroutine[Any, Any, None], str], asyncio.Task]


def _create_task(coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task:
    return asyncio.get_running_loop().create_task(coro, name=name)


@dataclass(eq=False)
class TurnRun:
    """One turn as the conversation runs it, then the reply it leaves (until the next cut)."""

    user: AudioChunk | str
    started: TurnClock
    speech_end: float | None       # where the utterance ended in the mic stream (its timings)
    outbox: ReplyOutbox = field(default_factory=ReplyOutbox)
    number: int = 0                # the conversation's turn count when it began
    reply: int | None = None       # the playout's token for its reply, once it speaks
    user_text: str | None = None   # what the user said, once transcribed
    remembered: bool = False       # its whole reply is in the history (it was complete)


class Conversation:
    def __init__(self, *, ports: StagePorts, segmenter: EndOfTurn, send: Callable[[dict], None],
                 fps: int, limits: Limits, pacing: Pacing, interruption: Interruption = Interruption(),
                 metrics: SessionMetrics | NoMetrics = NoMetrics(), clock: AsyncClock = REAL_CLOCK,
                 seed: int = 0, spawn: Spawn = _create_task):
        self.ports, self.segmenter, self.limits, self.pacing = ports, segmenter, limits, pacing
        self.metrics, self.clock, self.seed = metrics, clock, seed
        self._send, self._spawn = send, spawn
        self.playout = Playout(fps, idle_seed=seed, clock=clock)
        self.history: list[ChatMessage] = []
        self.turns = 0
        self.last_input_at = clock()  # last speech or text from the user
        self.closed = False
        self._states = ConversationStates(lambda state: send({"type": "state", "state": state}))
        self._talk_over = BargeInDetector(
            chunk_s=segmenter.chunk_samples / segmenter.sample_rate, threshold=segmenter.threshold,
            neg_threshold=segmenter.neg_threshold, min_speech_s=interruption.min_speech_ms / 1000,
            resume_after_s=interruption.resume_after_ms / 1000)
        self._talk_over_onset: float | None = None  # clock time the voice over the avatar began
        self._turn_task: asyncio.Task | None = None  # the latest turn's task (the next one waits for it)
        self._current: TurnRun | None = None         # the turn whose reply is current, until it is cut
        self._pending: AudioChunk | None = None      # an utterance whose turn the user talked over

    @property
    def state(self) -> ConversationState:
        return self._states.current

    @property
    def wire_state(self) -> str:
        """The state the client was last told."""
        return self._states.wire

    # -- inputs ------------------------------------------------------------------------------
    async def hear(self, probability: float, samples: np.ndarray) -> None:
        """One chunk of the user's audio (the VAD's rate and chunk size) and its speech probability."""
        if self.closed:
            return
        self._settle()
        self._watch_talk_over(probability)
        for event in await self.segmenter.afeed(probability, samples):
            if isinstance(event, SpeechStarted):
                self._speech_started()
            elif isinstance(event, SpeechEnded):
                self._speech_ended(event)

    def submit(self, user: AudioChunk | str, speech_end: float | None = None,
               ended_at: float | None = None, decision_s: float | None = None) -> None:
        """Answer ``user`` (an utterance or typed text), cutting a reply still running or playing.
        ``ended_at``: clock time the user's speech ended; ``decision_s``: how long after that the
        end of the turn was decided."""
        if self.closed:
            return
        now = self.clock()
        self.last_input_at = now
        self._cut_reply(None, then=S.THINKING)
        run = TurnRun(user, TurnClock(ended_at if ended_at is not None else now, decision_s,
                                      spoken=isinstance(user, AudioChunk)), speech_end)
        self._current = run
        self._turn_task = self._spawn(self._run_turn(run, self._turn_task), "turn")

    def interrupt(self, cause: str | None = None) -> None:
        """Cut the reply and go back to listening. ``cause`` ("message") also tells the client,
        as a voice interruption does."""
        self._cut_reply(cause, then=self._idle_state())

    def close(self) -> None:
        """Nothing more is answered; the turn is cancelled (its task is the caller's to wait for)
        and the reply dropped."""
        self.closed = True
        if self._turn_task is not None:
            self._turn_task.cancel()
        self.playout.flush()

    # -- the user's voice --------------------------------------------------------------------
    def _watch_talk_over(self, probability: float) -> None:
        """Voice while the avatar speaks pauses it at once and cuts it after
        ``interruption.min_speech_ms``; a shorter sound lets it go on (avatarchat/conversation/barge_in.py)."""
        if self.state not in _REPLY_PLAYING:
            self._talk_over.reset()
            return
        action = self._talk_over.feed(probability)
        if action is BargeIn.PAUSE:
            self._talk_over_onset = self.clock() - self._talk_over.chunk_s
            self.playout.hold()
            self._states.go(S.PAUSED_BY_VOICE)
        elif action is BargeIn.RESUME:
            self.playout.release()
            self._states.go(S.SPEAKING if self._producing() else S.FINISHING)
        elif action is BargeIn.INTERRUPT:
            self._cut_reply("voice", then=self._idle_state())

    def _speech_started(self) -> None:
        self.last_input_at = self.clock()
        if self.state is S.LISTENING:
            self._states.go(S.USER_SPEAKING)
        elif self.state is S.THINKING:
            # a pause mid-question: answer both parts together
            run = self._current
            if run is not None and isinstance(run.user, AudioChunk):
                self._pending = merge_utterances(self._pending, run.user, self.limits.max_utterance_s)
            self._cut_reply(None, then=S.USER_SPEAKING)
        # over a reply, the barge-in detector decides (_watch_talk_over)

    def _speech_ended(self, event: SpeechEnded) -> None:
        if self.state in _REPLY_PLAYING:
            return  # too short to cut the reply (_watch_talk_over): a noise
        waited = event.decision_delay_s  # how long after the speech ended the decision came
        audio = merge_utterances(self._pending, event.audio, self.limits.max_utterance_s)
        self._pending = None
        self.submit(audio, speech_end=event.at_s, ended_at=self.clock() - waited, decision_s=waited)

    # -- the one interruption ----------------------------------------------------------------
    def _cut_reply(self, cause: str | None, then: ConversationState) -> None:
        """Stop the turn in progress or the end of a reply still playing, then go to ``then``."""
        if cause is not None and self.playout.speaking:
            self._report_interruption(cause)
        if self._turn_task is not None and not self._turn_task.done():
            self._turn_task.cancel()  # kept in _turn_task: the next turn waits for it to end
        run = self._current
        if run is not None:
            for event in run.outbox.interrupt():  # by type: what already happened still goes out
                self._deliver(run, event)
            self._keep_what_was_heard(run)
        self._current = None
        self.playout.flush()
        self._talk_over.reset()
        self._states.go(then)

    def _report_interruption(self, cause: str) -> None:
        """Tell the client how fast the avatar went quiet, and what of the reply it had heard."""
        silent_at, onset = self.playout.silent_since, self._talk_over_onset
        event: dict = {"type": "interruption", "cause": cause, "heard_text": self.playout.heard_text()}
        if cause == "voice" and silent_at is not None and onset is not None:
            event["speech_onset_to_silence"] = round(max(silent_at - onset, 0.0), 4)
            self.metrics.interruption(event["speech_onset_to_silence"])
        self._send(event)

    def _keep_what_was_heard(self, run: TurnRun) -> None:
        """Before a reply is dropped: the history keeps only the part of it the user heard."""
        if run.user_text is None:
            return
        heard = self.playout.heard_text()
        if run.remembered and self.history and self.history[-1].role == "assistant":
            self.history = self.history[:-1] + [ChatMessage("assistant", heard)] if heard else self.history[:-2]
        elif not run.remembered and heard:
            self._remember(run.user_text, heard)

    def _remember(self, user_text: str, reply_text: str) -> None:
        self.history += [ChatMessage("user", user_text), ChatMessage("assistant", reply_text)]
        keep = self.limits.max_history_messages
        self.history = self.history[-keep:] if keep else []

    # -- a turn --------------------------------------------------------------------------------
    async def _run_turn(self, run: TurnRun, previous: asyncio.Task | None) -> None:
        if previous is not None and not previous.done():
            previous.cancel()  # cut already; its stage calls end before this turn's begin
            await asyncio.gather(previous, return_exceptions=True)
        turn = Turn(self.ports, self.history,
                    TurnOptions(lead_s=self.pacing.lead_s, realtime=True,
                                max_history_messages=self.limits.max_history_messages, seed=self.seed),
                    clock=self.clock)
        turn.timings.speech_end_in_input = run.speech_end
        self.turns += 1
        run.number = self.turns
        producing = asyncio.get_running_loop().create_task(
            self._produce(turn, run), name=f"{asyncio.current_task().get_name()}-events")
        try:
            async with deadline(self.clock, self.limits.turn_timeout_s):
                while (event := await run.outbox.get()) is not None:
                    self._deliver(run, event)
                await producing  # raises what failed there (a bug of ours), for the task's owner to log
        except TimeoutError:
            self._send(wire.encode(TurnFailed(
                "turn", f"turn exceeded turn_timeout_s={self.limits.turn_timeout_s}")))
        finally:
            producing.cancel()
            await asyncio.gather(producing, return_exceptions=True)
            if run.reply is not None:
                self.playout.end_reply(run.reply)
            if run is self._current and not self.closed:
                self._reply_complete()

    async def _produce(self, turn: Turn, run: TurnRun) -> None:
        events = turn.run(run.user)
        try:
            async for event in events:
                await run.outbox.put(event)
        finally:
            run.outbox.finish()
            await events.aclose()

    def _deliver(self, run: TurnRun, event: TurnEvent) -> None:
        """One of the current turn's events: media into the playout, the rest to the client."""
        if isinstance(event, AvatarChunk):
            self.playout.push(event)
        elif isinstance(event, StateChanged):
            self._turn_says(run, event.state)
        elif isinstance(event, TurnTimings):
            event.extra["session_turn"] = float(run.number)
            event.extra.update(run.started.measures(self.playout.first_audio_at))
            encoded = wire.encode(event)
            self.metrics.turn(encoded)
            self._send(encoded)
        else:
            if isinstance(event, TurnFailed):
                self.metrics.turn_failed(event.stage, event.code)
            elif isinstance(event, Transcript):
                run.user_text = event.text or None
            elif isinstance(event, ReplyDone) and run.user_text:
                self._remember(run.user_text, event.text)
                run.remembered = True
            self._send(wire.encode(event))

    def _turn_says(self, run: TurnRun, state: str) -> None:
        if state == "speaking":
            run.reply = self.playout.start_reply()
            self._states.go(S.SPEAKING)
        elif state == "listening":
            self._reply_complete()
        # "thinking": the conversation went there when the turn was submitted

    def _reply_complete(self) -> None:
        """The turn has said all it will (a paused reply finds that out when it resumes)."""
        if self.state is S.SPEAKING:
            self._states.go(S.FINISHING)
        elif self.state is S.THINKING:
            self._states.go(self._idle_state())
        self._settle()

    # -- where things stand ------------------------------------------------------------------
    def _settle(self) -> None:
        """A finishing reply whose last audio has played leaves nothing playing."""
        if self.state is S.FINISHING and not self.playout.speaking:
            self._states.go(self._idle_state())

    def _producing(self) -> bool:
        """The current turn is still producing its reply."""
        return self._current is not None and self._turn_task is not None and not self._turn_task.done()

    def _idle_state(self) -> ConversationState:
        return S.USER_SPEAKING if self.segmenter.in_speech else S.LISTENING
