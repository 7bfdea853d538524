"""SenseVoiceSmall through funasr: text plus language, emotion and audio event, batched across sessions.

One utterance decodes to ``<|en|><|HAPPY|><|Speech|><|withitn|>Hello!``: the language, the
speaker's emotion, an audio event, whether the text was inverse-normalised, then the text.

The weights are ``avatar-chat models fetch sensevoice-small`` (iic/SenseVoiceSmall); nothing
downloads at run time. SenseVoice is non-autoregressive (one encoder pass and a greedy CTC decode),
so utterances batch well: concurrent ``transcribe`` calls from many sessions on one replica are
gathered into one ``AutoModel.generate`` call over a list of arrays (``batch_max`` at most, the first
waiting up to ``batch_wait_ms`` for company) run in a worker thread, one batch at a time. funasr
returns one result per input in input order (its keys are not unique for array inputs).

The tags are parsed here (``parse_output``), not by funasr's ``rich_transcription_postprocess``,
which turns them into emoji inside the text.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field

from avatarchat import languages
from avatarchat.audio import resample
from avatarchat.backends.asr.base import ASRBackend
from avatarchat.config import Options
from avatarchat.messages import AudioChunk, Transcript
from avatarchat.models import resolve

MODEL_NAME = "sensevoice-small"
BPE_MODEL = "chn_jpn_yue_eng_ko_spectok.bpe.model"
REQUIRED = ("config.yaml", "model.pt", "am.mvn", BPE_MODEL)

# Shorter input makes funasr's fbank fail ("num_mel_bins too large"): pad it with silence.
MIN_SAMPLES = 1600  # 0.1 s at 16 kHz
# This many failed batches in a row (a broken GPU, say) make the replica unhealthy.
FAILURES_UNHEALTHY = 3

LANGUAGE_TAGS = frozenset({"zh", "en", "yue", "ja", "ko", "nospeech"})
EMOTION_TAGS = frozenset({"HAPPY", "SAD", "ANGRY", "NEUTRAL", "FEARFUL", "DISGUSTED", "SURPRISED",
                          "EMO_UNKNOWN"})
EVENT_TAGS = frozenset({"Speech", "BGM", "Laughter", "Applause", "Cry", "Sneeze", "Breath", "Cough",
                        "Event_UNK"})
ITN_TAGS = frozenset({"withitn", "woitn"})
_TAG = re.compile(r"<\|([^|<>]*)\|>")


@dataclass(frozen=True, slots=True)
class SenseVoiceOutput:
    """One decoded utterance: the text without tags, and the first tag of each kind (None if
    absent): ``language`` as emitted (``"nospeech"`` included), ``emotion`` lower-case
    (``"happy"``, ``"emo_unknown"``), ``event`` as emitted (``"Speech"``), ``itn`` whether the
    text was inverse-normalised (punctuation, digits)."""

    text: str
    language: str | None = None
    emotion: str | None = None
    event: str | None = None
    itn: bool | None = None


def parse_output(raw: str) -> SenseVoiceOutput:
    """Split SenseVoice's raw text into text and tags. The model puts four tags first; tags
    anywhere else (segments joined after VAD, an untrained model) count if they are the first of
    their kind, and unknown tags are dropped from the text."""
    language = emotion = event = itn = None
    for name in _TAG.findall(raw):
        if name in LANGUAGE_TAGS:
            language = language or name
        elif name in EMOTION_TAGS:
            emotion = emotion or name.lower()
        elif name in EVENT_TAGS:
            event = event or name
        elif name in ITN_TAGS and itn is None:
            itn = name == "withitn"
    text = re.sub(r"\s+", " ", _TAG.sub("", raw)).strip()
    return SenseVoiceOutput(text, language, emotion, event, itn)


def to_transcript(out: SenseVoiceOutput, forced_language: str | None = None) -> Transcript:
    """The Transcript of a parsed output; without a language tag, the language the model was
    told (None for auto). ``nospeech`` is no language."""
    language = languages.normalise(out.language) if out.language else forced_language
    return Transcript(text=out.text, language=language, emotion=out.emotion, event=out.event)


@contextlib.contextmanager
def _process_state_kept():
    """funasr configures the root logger (basicConfig at import and in AutoModel) and seeds every
    global RNG when it builds a model; the serving process keeps its own."""
    import torch

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    rngs = random.getstate(), np.random.get_state(), torch.random.get_rng_state()
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        random.setstate(rngs[0])
        np.random.set_state(rngs[1])
        torch.random.set_rng_state(rngs[2])


@dataclass(slots=True)
class _Item:
    samples: np.ndarray
    future: asyncio.Future


class Batcher:
    """Runs ``run(list of inputs) -> list of outputs`` in a worker thread on batches of concurrent
    ``submit`` calls: one worker task per event loop, one batch at a time, a bounded queue (a full
    one makes ``submit`` wait). A cancelled caller's input is dropped from a batch not yet run, or
    its result discarded. A failed batch fails its callers only; if the worker itself stops (a bug,
    ``close``), every waiting caller gets an error: no caller waits forever."""

    def __init__(self, run: Callable[[list[np.ndarray]], list[str]], max_batch: int,
                 wait_s: float, max_queue: int):
        self._run, self.max_batch, self.wait_s, self.max_queue = run, max_batch, wait_s, max_queue
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue[_Item] | None = None
        self._arrived: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None
        self._closed = False
        self.failure: BaseException | None = None  # why the worker died, if it did
        self.failed_in_a_row = 0
        self.batches = 0     # run calls made
        self.utterances = 0  # inputs they carried

    def _ensure_worker(self) -> None:
        if self._closed:
            raise RuntimeError("the SenseVoice backend is closed")
        if self.failure is not None:
            raise RuntimeError(f"the SenseVoice batch worker died: {self.failure!r}") from self.failure
        loop = asyncio.get_running_loop()
        if self._worker is not None and self._loop is loop and not self._worker.done():
            return
        # First call, or a new event loop (the old one's worker went with it).
        self._loop, self._queue, self._arrived = loop, asyncio.Queue(self.max_queue), asyncio.Event()
        self._worker = loop.create_task(self._work(self._queue, self._arrived),
                                        name="sensevoice-batcher")
        self._worker.add_done_callback(functools.partial(self._worker_done, self._queue))

    async def submit(self, samples: np.ndarray) -> str:
        self._ensure_worker()
        queue, arrived, worker = self._queue, self._arrived, self._worker
        item = _Item(samples, self._loop.create_future())
        await queue.put(item)
        arrived.set()
        if worker.done():  # it stopped while we waited for room: nobody would answer
            raise RuntimeError("the SenseVoice batch worker stopped")
        return await item.future

    async def _work(self, queue: asyncio.Queue[_Item], arrived: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        batch: list[_Item] = []
        try:
            while True:
                batch = [await queue.get()]
                deadline = loop.time() + self.wait_s
                while len(batch) < self.max_batch:
                    if not queue.empty():
                        batch.append(queue.get_nowait())
                        continue
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        break
                    arrived.clear()
                    try:
                        await asyncio.wait_for(arrived.wait(), remaining)
                    except TimeoutError:
                        break
                batch = [it for it in batch if not it.future.done()]  # callers cancelled meanwhile
                if batch:
                    await self._run_batch(batch)
                batch = []
        except BaseException as err:
            reason = err if isinstance(err, Exception) else RuntimeError("the SenseVoice batcher stopped")
            for it in batch:
                if not it.future.done():
                    it.future.set_exception(reason)
            raise

    async def _run_batch(self, batch: list[_Item]) -> None:
        self.batches += 1
        self.utterances += len(batch)
        try:
            texts = await asyncio.to_thread(self._run, [it.samples for it in batch])
            if len(texts) != len(batch):
                raise RuntimeError(f"funasr returned {len(texts)} results for {len(batch)} inputs")
        except Exception as err:  # noqa: BLE001 - the batch's callers get it; the worker goes on
            self.failed_in_a_row += 1
            for it in batch:
                if not it.future.done():
                    it.future.set_exception(err)
            return
        self.failed_in_a_row = 0
        for it, text in zip(batch, texts):
            if not it.future.done():
                it.future.set_result(text)

    def _worker_done(self, queue: asyncio.Queue[_Item], task: asyncio.Task) -> None:
        if task.cancelled():
            reason: BaseException = RuntimeError("the SenseVoice batcher stopped")
        else:
            self.failure = task.exception()
            if self.failure is None:  # _work never returns; be safe anyway
                self.failure = RuntimeError("the SenseVoice batch worker returned")
            reason = RuntimeError(f"the SenseVoice batch worker died: {self.failure!r}")
        while not queue.empty():
            it = queue.get_nowait()
            if not it.future.done():
                it.future.set_exception(reason)

    def check(self) -> None:
        if self.failure is not None:
            raise RuntimeError(f"the SenseVoice batch worker died: {self.failure!r}") from self.failure
        if self.failed_in_a_row >= FAILURES_UNHEALTHY:
            raise RuntimeError(f"the last {self.failed_in_a_row} SenseVoice batches failed")

    def close(self) -> None:
        self._closed = True
        worker, loop = self._worker, self._loop
        if worker is None or worker.done() or loop is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            worker.cancel()
        else:
            loop.call_soon_threadsafe(worker.cancel)


class SenseVoiceASR(ASRBackend):
    """SenseVoiceSmall (FunASR model licence) through funasr's AutoModel, batched across sessions."""

    class Options(Options):
        model_dir: Path | None = Field(
            None, description="SenseVoiceSmall directory (config.yaml, model.pt, am.mvn, "
                              f"{BPE_MODEL}); None is <models dir>/{MODEL_NAME}")
        language: Literal["auto", "zh", "en", "yue", "ja", "ko"] = Field(
            "auto", description="spoken language; auto detects it per utterance")
        use_itn: bool = Field(True, description="inverse text normalisation: punctuation, digits")
        device: str = Field("cpu", pattern=r"^(cpu|cuda(:\d+)?)$",
                            description='"cpu" or a CUDA device such as "cuda:0"')
        cpu_threads: int = Field(4, ge=1, le=64,
                                 description="torch threads (set for the whole process)")
        batch_max: int = Field(16, ge=1, le=256, description="utterances per model call at most")
        batch_wait_ms: float = Field(
            10.0, ge=0.0, le=1000.0,
            description="how long an utterance that finds no other waiting waits for company")
        queue_max: int = Field(256, ge=1, le=100_000,
                               description="utterances waiting at most; more wait to be queued")

    def __init__(self, options):
        super().__init__(options)
        self._model = None
        self._batcher: Batcher | None = None

    def load(self) -> None:
        o = self.options
        path = resolve(o.model_dir, MODEL_NAME, REQUIRED).resolve()  # before importing funasr
        if o.device.startswith("cuda"):
            import torch

            if not torch.cuda.is_available():
                raise RuntimeError(f"device {o.device!r} asked for, but torch sees no CUDA device")
        with _process_state_kept():
            from funasr import AutoModel

            # Paths given explicitly: with or without the release's configuration.json, funasr
            # reads these files and never goes to a hub (it only does for a path that is missing).
            model = AutoModel(
                model=str(path), init_param=str(path / "model.pt"),
                tokenizer_conf={"bpemodel": str(path / BPE_MODEL)},
                # dither adds random noise to the features: training only; off, a transcript is
                # a function of the audio
                frontend_conf={"cmvn_file": str(path / "am.mvn"), "dither": 0.0},
                device=o.device, ncpu=o.cpu_threads, disable_update=True, disable_pbar=True,
                disable_log=True)
        self._model = model
        self._batcher = Batcher(self._generate_with(model), o.batch_max, o.batch_wait_ms / 1000.0,
                                o.queue_max)

    def _generate_with(self, model) -> Callable[[list[np.ndarray]], list[str]]:
        o = self.options

        def generate(batch: list[np.ndarray]) -> list[str]:
            results = model.generate(input=batch, cache={}, language=o.language,
                                     use_itn=o.use_itn, batch_size=len(batch))
            return [r["text"] for r in results]

        return generate

    @property
    def forced_language(self) -> str | None:
        return None if self.options.language == "auto" else self.options.language

    @property
    def stats(self) -> dict[str, int]:
        b = self._batcher
        return {"batches": b.batches, "utterances": b.utterances} if b else {}

    async def transcribe(self, audio: AudioChunk) -> Transcript:
        if self._batcher is None:
            raise RuntimeError("SenseVoiceASR.load() has not been called")
        samples = resample(audio.samples, audio.sample_rate, self.sample_rate)
        if len(samples) == 0:
            return Transcript(text="", language=self.forced_language)
        if len(samples) < MIN_SAMPLES:
            samples = np.pad(samples, (0, MIN_SAMPLES - len(samples)))
        raw = await self._batcher.submit(samples)
        return to_transcript(parse_output(raw), self.forced_language)

    def check_health(self) -> None:
        if self._batcher is None:
            raise RuntimeError("SenseVoiceASR is not loaded")
        self._batcher.check()

    def close(self) -> None:
        if self._batcher is not None:
            self._batcher.close()
        self._model = None


BACKEND = SenseVoiceASR
