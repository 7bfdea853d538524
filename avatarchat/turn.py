"""One conversation turn, streamed through the stages, in one of two shapes:

    cascade:           user audio -> ASR -> LLM deltas -> sentences -> TTS audio -> avatar chunks
    speech to speech:  user audio -> one model (text + audio)                     -> avatar chunks

In the cascade two tasks run side by side: one reads the LLM stream and cuts it into sentences; the
other speaks each sentence as soon as it is complete and animates each piece of audio. A speech-to-
speech model streams text and audio itself: one task reads it, another animates whatever audio has
arrived (so small pieces are animated together), and an ASR call beside them makes captions where
configured. Media is released paced to real time (see pacing.py), so nothing runs far ahead of what
the user hears. Closing the turn's iterator (the caller hung up, was interrupted, or timed out)
cancels the tasks, and with them every stage call still in flight.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import numpy as np

from avatarchat.avatar.expression import EmotionTagFilter, normalise
from avatarchat.events import ReplyDone, StateChanged, TurnFailed
from avatarchat.languages import guess_from_script
from avatarchat.messages import (AnimateRequest, AudioChunk, AvatarChunk, ChatMessage, FaceMotion,
                                 LLMRequest, SpeechChunk, SpeechRequest, TextDelta, Transcript,
                                 TurnTimings)
from avatarchat.pacing import REAL_CLOCK, AsyncClock, PlayoutPacer, Stopwatch
from avatarchat.ports import StagePorts
from avatarchat.remote import RemoteServiceError
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
    In the speech-to-speech shape the user's Transcript (the model's own, or the captioning ASR's)
    arrives when it is ready, possibly after the reply has begun; typed text's comes first.
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
        out: asyncio.Queue = asyncio.Queue(maxsize=64)
        if self.ports.speech_to_speech:
            if isinstance(user, str):
                yield Transcript(text=user, language=guess_from_script(user))
            tasks = [asyncio.create_task(self._converse(user, watch, out))]
        else:
            if isinstance(user, AudioChunk):
                try:
                    transcript = await self.ports.transcribe(user)
                except Exception as err:  # noqa: BLE001 - reported as this turn's failure
                    yield _failure("asr", err)
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
            self.language = transcript.language
            request = LLMRequest(history=(*self._history(), ChatMessage("user", transcript.text)),
                                 language=transcript.language)
            sentences: asyncio.Queue = asyncio.Queue(maxsize=64)  # bounded by the LLM's max_tokens anyway
            tasks = [asyncio.create_task(self._read_llm(request, watch, sentences, out)),
                     asyncio.create_task(self._speak(watch, sentences, out))]
        speaking = False
        try:
            while (item := await out.get()) is not _END:
                if isinstance(item, _StageError):
                    yield _failure(item.stage, item.error)
                    return
                if not speaking and isinstance(item, AvatarChunk):
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

    def _history(self) -> tuple[ChatMessage, ...]:
        keep = self.options.max_history_messages
        return self.history[-keep:] if keep else ()

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

    async def _converse(self, user: AudioChunk | str, watch: Stopwatch, out: asyncio.Queue) -> None:
        """The speech-to-speech shape: the model's stream read by one task, its audio animated by
        this one as it arrives; an ASR call beside them where captions come from the asr stage."""
        spoken = isinstance(user, AudioChunk)
        self.language = None if spoken else guess_from_script(user)
        request = SpeechRequest(history=self._history(), audio=user if spoken else None,
                                text=None if spoken else user, language=self.language)
        received: asyncio.Queue = asyncio.Queue(maxsize=256)
        tasks = [asyncio.create_task(self._read_model(request, watch, received))]
        captions = spoken and self.ports.captions_from_asr
        if captions:
            tasks.append(asyncio.create_task(self._caption(user, watch, out)))
        pacer = PlayoutPacer(self.options.lead_s, self.options.realtime, self.clock)
        animation = _Animation()
        stage = "speech_to_speech"
        try:
            while (item := await received.get()) is not _END:
                if isinstance(item, _StageError):
                    await out.put(item)
                    return
                # Take everything that has arrived: small pieces of audio are animated together.
                batch = [item]
                while not received.empty() and batch[-1] is not _END and not isinstance(batch[-1], _StageError):
                    batch.append(received.get_nowait())
                audio: list[AudioChunk] = []
                for piece in batch:
                    if isinstance(piece, AudioChunk):
                        audio.append(piece)
                    elif isinstance(piece, TextDelta):
                        self.reply_text += piece.text
                        animation.text += piece.text
                        await out.put(piece)
                    elif isinstance(piece, Transcript):
                        if not captions:  # the model's own transcript of what it heard
                            await out.put(piece)
                    else:
                        await received.put(piece)  # _END or an error: handled after this audio
                        break
                if audio:
                    stage = "avatar"
                    await self._animate_pieces(audio, animation, watch, pacer, out)
                    stage = "speech_to_speech"
            for task in tasks[1:]:
                await task  # the caption comes before the reply is reported done
            self.reply_text = self.reply_text.strip()
            self.timings.sentences = animation.index
            self.timings.reply_audio = animation.cursor
            await pacer.wait_until(animation.cursor)
            await out.put(_END)
        except Exception as err:  # noqa: BLE001
            await out.put(_StageError(stage, err))
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _read_model(self, request: SpeechRequest, watch: Stopwatch, received: asyncio.Queue) -> None:
        try:
            async for item in self.ports.converse(request):
                if isinstance(item, TextDelta):
                    if self.timings.tokens == 0:
                        self.timings.llm_first_token = watch.elapsed()
                    self.timings.tokens += 1
                elif isinstance(item, AudioChunk) and self.timings.tts_first_audio is None:
                    self.timings.tts_first_audio = watch.elapsed()
                await received.put(item)
            self.timings.llm_total = watch.elapsed()
            await received.put(_END)
        except Exception as err:  # noqa: BLE001
            await received.put(_StageError("speech_to_speech", err))

    async def _caption(self, user: AudioChunk, watch: Stopwatch, out: asyncio.Queue) -> None:
        """Captions from the asr stage, beside the model: a failure costs the caption, not the reply."""
        try:
            transcript = await self.ports.transcribe(user)
        except Exception as err:  # noqa: BLE001
            log.warning("captions: the asr stage failed (%s); the reply goes on without them", err)
            return
        self.timings.asr = watch.elapsed()
        await out.put(transcript)

    async def _animate_pieces(self, audio: list[AudioChunk], animation: "_Animation", watch: Stopwatch,
                              pacer: PlayoutPacer, out: asyncio.Queue) -> None:
        rate = audio[0].sample_rate
        if any(a.sample_rate != rate for a in audio):
            raise ValueError("a speech-to-speech model changed its sample rate within a reply")
        samples = np.concatenate([a.samples for a in audio])
        speech = SpeechChunk(AudioChunk(samples, rate, animation.cursor), text=animation.text,
                             sentence=animation.index)
        animation.cursor += len(samples) / rate
        animation.text, animation.index = "", animation.index + 1
        tts_at = watch.elapsed()
        async for chunk in self.ports.animate(AnimateRequest(speech, animation.previous, self.options.seed,
                                                             self.emotion)):
            if self.timings.avatar_first_frame is None:
                self.timings.avatar_first_frame = watch.elapsed() - tts_at
                self.timings.input_to_first_frame = watch.elapsed()
            if chunk.frames and isinstance(chunk.frames[-1], FaceMotion):
                animation.previous = chunk.frames[-1]
            await pacer.wait_until(chunk.audio.start)
            await out.put(chunk)

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


@dataclass(slots=True)
class _Animation:
    """Where a speech-to-speech reply's animation stands: the next piece's place on the reply's
    timeline, its number, the text received since the last piece, the face it continues from."""

    cursor: float = 0.0
    index: int = 0
    text: str = ""
    previous: FaceMotion | None = None


def _failure(stage: str, err: BaseException) -> TurnFailed:
    """The event that ends a turn whose ``stage`` failed, with a remote service's failure kind.
    The whole error goes to the log."""
    log.warning("turn failed in the %s stage", stage, exc_info=err)
    cause = _cause(err)
    return TurnFailed(stage, _reason(stage, cause),
                      code=cause.kind if isinstance(cause, RemoteServiceError) else None)


def _cause(err: BaseException) -> BaseException:
    """The error as the stage raised it: a replica's error arrives wrapped in Ray's RayTaskError,
    whose cause has its own message without the remote traceback."""
    ray_exceptions = sys.modules.get("ray.exceptions")  # looked up, not imported: no Ray, no Ray errors
    if ray_exceptions is not None and isinstance(err, ray_exceptions.RayTaskError) and err.cause is not None:
        return err.cause
    return err


def _reason(stage: str, cause: BaseException) -> str:
    """What the user is told of a stage's failure (``cause``: see _cause): something they can act
    on, not Ray's advice on OOM killers."""
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
