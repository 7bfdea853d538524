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

import contextlib
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
from avatarchat.batching import Batcher
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
                                o.queue_max, name="SenseVoice", unhealthy_after=FAILURES_UNHEALTHY)

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
