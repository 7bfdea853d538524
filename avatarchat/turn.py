"""One conversation turn, streamed through the stages.

    user audio -> ASR -> LLM deltas -> sentences -> TTS audio -> avatar chunks (audio + frames)

Two tasks run side by side: one reads the LLM stream and cuts it into sentences; the other speaks
each sentence as soon as it is complete and animates each piece of audio. Media is released paced
to real time (see pacing.py), so nothing runs far ahead of what the user hears. Closing the turn's
iterator (the caller hung up, was interrupted, or timed out) cancels both tasks, and with them every
stage call still in flight.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from avatarchat.avatar.expression import EmotionTagFilter, normalise
from avatarchat.events import ReplyDone, StateChanged, TurnFailed
from avatarchat.languages import guess_from_script
from avatarchat.messages import (AnimateRequest, AudioChunk, ChatMessage, FaceMotion, LLMRequest,
                                 SpeechChunk, TextDelta, Transcript, TurnTimings)
from avatarchat.pacing import REAL_CLOCK, AsyncClock, PlayoutPacer, Stopwatch
from avatarchat.ports import StagePorts
from avatarchat.sentences import SentenceChunker

log = logging.getLogger("ray.serve")

_END = object()
# The longest reason a user is sent; the whole error goes to the log.
MAX_REASON_CHARS = 200


@dataclass(frozen=True, slots=True)
class _StageError:
    stage: str
    error: BaseException


@dataclass(frozen=True, slots=True)
class TurnOptions:
    lead_s: float = 0.6
    realtime: bool = True
    max_history_messages: int = 16
    seed: int = 0


class Turn:
    """Runs one turn; iterate ``run(user)`` for its events in order:

    StateChanged("thinking"), Transcript, TextDelta..., StateChanged("speaking"), AvatarChunk...,
    ReplyDone, TurnTimings, StateChanged("listening") — or TurnFailed naming the stage that broke.
    """

    def __init__(self, ports: StagePorts, history: Sequence[ChatMessage] = (),
                 options: TurnOptions = TurnOptions(), clock: AsyncClock = REAL_CLOCK):
        self.ports, self.history, self.options, self.clock = ports, tuple(history), options, clock
        self.timings = TurnTimings()
        self.reply_text = ""
        # The expression of the reply: the user's emotion as the ASR heard it, replaced by a tag
        # the LLM starts its reply with ("[happy] ..."), if it gives one.
        self.emotion: str | None = None
        # The reply's language: the one the user spoke (None for typed text: the LLM decides).
        self.language: str | None = None

    async def run(self, user: AudioChunk | str) -> AsyncIterator:
        watch = Stopwatch(self.clock)
        yield StateChanged("thinking")
        if isinstance(user, AudioChunk):
            try:
                transcript = await self.ports.transcribe(user)
            except Exception as err:  # noqa: BLE001 - reported as this turn's failure
                yield TurnFailed("asr", _reason("asr", err))
                return
            self.timings.asr = watch.elapsed()
        else:
            transcript = Transcript(text=user, language=guess_from_script(user))
        self.emotion = normalise(transcript.emotion)
        yield transcript
        if not transcript.text.strip():
            yield self.timings
            yield StateChanged("listening")
            return

        history = self.history[-self.options.max_history_messages:] if self.options.max_history_messages else ()
        self.language = transcript.language
        request = LLMRequest(history=(*history, ChatMessage("user", transcript.text)),
                             language=transcript.language)
        out: asyncio.Queue = asyncio.Queue(maxsize=64)
        sentences: asyncio.Queue = asyncio.Queue(maxsize=64)  # bounded by the LLM's max_tokens anyway
        tasks = [asyncio.create_task(self._read_llm(request, watch, sentences, out)),
                 asyncio.create_task(self._speak(watch, sentences, out))]
        speaking = False
        try:
            while (item := await out.get()) is not _END:
                if isinstance(item, _StageError):
                    yield TurnFailed(item.stage, _reason(item.stage, item.error))
                    return
                if not speaking and not isinstance(item, TextDelta):
                    speaking = True
                    yield StateChanged("speaking")
                yield item
            yield ReplyDone(text=self.reply_text, audio_s=self.timings.reply_audio)
            yield self.timings
            yield StateChanged("listening")
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _read_llm(self, request: LLMRequest, watch: Stopwatch,
                        sentences: asyncio.Queue, out: asyncio.Queue) -> None:
        chunker = SentenceChunker()
        tags = EmotionTagFilter()
        started = watch.elapsed()
        try:
            async for delta in self.ports.generate(request):
                if self.timings.tokens == 0:
                    self.timings.llm_first_token = watch.elapsed() - started
                self.timings.tokens += 1
                text = tags.feed(delta.text)
                if tags.emotion is not None:
                    self.emotion = tags.emotion
                if not text:
                    continue
                await out.put(delta if text == delta.text else TextDelta(text))
                for sentence in chunker.feed(text):
                    await sentences.put(sentence)
            if text := tags.flush():
                await out.put(TextDelta(text))
                for sentence in chunker.feed(text):
                    await sentences.put(sentence)
            if (rest := chunker.flush()) is not None:
                await sentences.put(rest)
            self.timings.llm_total = watch.elapsed() - started
        except Exception as err:  # noqa: BLE001
            await out.put(_StageError("llm", err))
        finally:
            await sentences.put(_END)

    async def _speak(self, watch: Stopwatch, sentences: asyncio.Queue, out: asyncio.Queue) -> None:
        pacer = PlayoutPacer(self.options.lead_s, self.options.realtime, self.clock)
        cursor = 0.0  # where the next audio starts on the reply's timeline
        previous: FaceMotion | None = None
        index = 0
        stage = "tts"
        try:
            while (sentence := await sentences.get()) is not _END:
                sent_at = watch.elapsed()
                stage = "tts"
                async for audio in self.ports.synthesize(sentence, self.language):
                    if self.timings.tts_first_audio is None:
                        self.timings.tts_first_audio = watch.elapsed() - sent_at
                    tts_at = watch.elapsed()
                    speech = SpeechChunk(AudioChunk(audio.samples, audio.sample_rate, cursor),
                                         text=sentence, sentence=index)
                    cursor += audio.duration
                    stage = "avatar"
                    async for chunk in self.ports.animate(AnimateRequest(speech, previous, self.options.seed, self.emotion)):
                        if self.timings.avatar_first_frame is None:
                            self.timings.avatar_first_frame = watch.elapsed() - tts_at
                            self.timings.input_to_first_frame = watch.elapsed()
                        if chunk.frames and isinstance(chunk.frames[-1], FaceMotion):
                            previous = chunk.frames[-1]  # motion carries on into the next sentence
                        await pacer.wait_until(chunk.audio.start)
                        await out.put(chunk)
                    stage = "tts"
                self.reply_text = f"{self.reply_text} {sentence}".strip()
                index += 1
            self.timings.sentences = index
            self.timings.reply_audio = cursor
            await pacer.wait_until(cursor)  # let playout catch up before the turn reports done
            await out.put(_END)
        except Exception as err:  # noqa: BLE001
            await out.put(_StageError(stage, err))


def _reason(stage: str, err: BaseException) -> str:
    """What the user is told of a stage's failure: something they can act on, not Ray's advice on
    OOM killers. The whole error goes to the log."""
    log.warning("turn failed in the %s stage", stage, exc_info=err)
    cause = err
    ray_exceptions = sys.modules.get("ray.exceptions")  # looked up, not imported: no Ray, no Ray errors
    if ray_exceptions is not None and isinstance(err, ray_exceptions.RayTaskError) and err.cause is not None:
        cause = err.cause  # raised in the replica; its own message, without the remote traceback
    trouble = _replica_trouble(cause)
    if trouble is not None:
        return f"the {stage} stage's {trouble}"
    reason = getattr(cause, "reason", None)  # BadInput and its kind: written for users already
    if not isinstance(reason, str) or not reason.strip():
        # A remote traceback's last line holds the cause.
        lines = [line.strip() for line in str(cause).strip().splitlines() if line.strip()]
        reason = lines[-1] if lines else type(cause).__name__
    return reason if len(reason) <= MAX_REASON_CHARS else reason[:MAX_REASON_CHARS - 3] + "..."


# Ray's and Serve's errors that say a stage's replica is gone or busy, not that the input was bad.
_STOPPED = {"ray.exceptions": ("RayActorError", "WorkerCrashedError", "NodeDiedError", "OutOfMemoryError",
                               "LocalRayletDiedError", "ObjectLostError"),
            "ray.serve.exceptions": ("ReplicaUnavailableError",)}
_BUSY = {"ray.exceptions": ("PendingCallsLimitExceeded",), "ray.serve.exceptions": ("BackPressureError",)}
_DOWN = {"ray.serve.exceptions": ("DeploymentUnavailableError",)}


def _replica_trouble(err: BaseException) -> str | None:
    for kinds, words in ((_STOPPED, "replica stopped while answering; try again in a few seconds"),
                         (_BUSY, "replicas are all busy; try again in a few seconds"),
                         (_DOWN, "deployment is not running; the service's operator can see why in its logs")):
        for module, names in kinds.items():
            found = sys.modules.get(module)
            types = tuple(t for n in names if isinstance(t := getattr(found, n, None), type))
            if types and isinstance(err, types):
                return words
    return None
