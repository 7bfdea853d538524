"""CosyVoice 2 0.5B (FunAudioLLM, Apache-2.0): streaming multilingual TTS at 24 kHz, voice cloning.

Built-in (SFT) speakers or voices cloned from a short clip (zero-shot), one voice per language.

The weights are ``avatar-chat models fetch cosyvoice2-0.5b`` (iic/CosyVoice2-0.5B); nothing
downloads at run time. The code is the official one, imported as ``cosyvoice.cli.cosyvoice``: the
PyPI package ``cosyvoice-minicpmo`` (a repackaging with Matcha-TTS) or FunAudioLLM/CosyVoice's source
with its third_party/Matcha-TTS on PYTHONPATH. Differences between the two are handled here:

- cosyvoice-minicpmo's ``CosyVoice2`` builds no LLM (MiniCPM-o brings its own): it is built from the
  model's own cosyvoice2.yaml and llm.pt and attached.
- Its text normaliser is cut out (calling it fails): ``text_frontend`` is used only where the
  installed code has one.
- Zero-shot prompts are passed as a 16 kHz tensor or a path, whichever ``add_zero_shot_spk`` takes.

Each sentence runs ``inference_sft`` / ``inference_zero_shot`` with ``stream=True`` in a worker
thread: the first ~1 s of audio (25 speech tokens) comes while the LLM still writes the rest.
CosyVoice runs the LLM in a thread of its own that nothing in its API stops, so the LLM is wrapped
(``_CancellableLLM``): a sentence whose listener goes away stops its LLM at the next token; CosyVoice
finishes the flow/HiFT pass under way (and at most one more), then nothing runs, and its per-call
state, which it keeps when a stream is closed early, is removed. The same wrapper ends the token
stream when the LLM raises (CosyVoice would otherwise wait for it forever) and reports the error.

Concurrency: ``CosyVoice2Model.tts`` keeps each call's state in dicts keyed by a per-call uuid (guarded
by its lock), runs each call's LLM in its own thread, and its flow and HiFT modules hold no state
between calls, so several sessions synthesise at once: ``max_concurrent`` bounds how many.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import logging
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import aclosing
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field, field_validator, model_validator

from avatarchat import languages
from avatarchat.audio import timed_chunks
from avatarchat.backends.tts._cosyvoice_llm import load_cosyvoice2_llm
from avatarchat.backends.tts.base import TTSBackend
from avatarchat.config import Options
from avatarchat.messages import AudioChunk
from avatarchat.models import resolve
from avatarchat.threads import stream_in_thread

log = logging.getLogger(__name__)

MODEL_NAME = "cosyvoice2-0.5b"
REQUIRED = ("cosyvoice2.yaml", "llm.pt", "flow.pt", "hift.pt", "campplus.onnx",
            "speech_tokenizer_v2.onnx", "CosyVoice-BlankEN/config.json")
PROMPT_RATE = 16000  # what CosyVoice's frontend takes prompts at
# CosyVoice's per-call state, by attribute of CosyVoice2Model (and CosyVoiceModel).
_PER_CALL_DICTS = ("tts_speech_token_dict", "llm_end_dict", "hift_cache_dict", "mel_overlap_dict",
                   "flow_cache_dict")
_WARMUP_TEXT = "Hello."
_LLM_STOP_WAIT_S = 10.0


class VoiceChoice(Options):
    """One voice: a built-in speaker, or a clip to clone with its transcript."""

    speaker: str | None = Field(None, description="an SFT speaker id in the model's spk2info.pt "
                                                  "(e.g. 中文女, 英文女)")
    prompt_wav: Path | None = Field(None, description="a 3-30 s WAV clip (16 kHz or more) of the "
                                                      "voice to clone (zero-shot)")
    prompt_text: str | None = Field(None, description="what prompt_wav says, word for word")

    @model_validator(mode="after")
    def _one_kind(self) -> "VoiceChoice":
        if (self.speaker is None) == (self.prompt_wav is None):
            raise ValueError("give either speaker (a built-in voice) or prompt_wav + prompt_text "
                             "(a cloned voice)")
        if self.prompt_wav is not None and not (self.prompt_text or "").strip():
            raise ValueError("prompt_wav needs prompt_text: the clip's transcript, word for word")
        return self


@dataclass(frozen=True)
class Voice:
    """A voice ready to speak: ``kind`` "sft" (``name`` is the speaker id) or "zero_shot" (``name``
    is the prompt clip's path); ``spk_id`` is its key in CosyVoice's spk2info."""

    kind: Literal["sft", "zero_shot"]
    name: str
    spk_id: str


class _Call:
    """One sentence's LLM runs, found by the identity of its speaker-embedding tensor."""

    def __init__(self, stop: threading.Event, key):
        self.stop, self.key = stop, key  # key: kept alive so its id() stays unique while registered
        self.ended = threading.Event()  # the sentence's stream is over, however it ended
        self.uuids: list[str] = []
        self.threads: list[threading.Thread] = []
        self.error: BaseException | None = None


class _CancellableLLM:
    """Stands in for CosyVoice's LLM module (every attribute but ``inference`` is the module's own).
    ``CosyVoiceModel.llm_job`` passes each call's speaker embedding through ``.to(device)``, which
    returns the same tensor when it is already there: that identity ties an LLM run to its call."""

    def __init__(self, llm):
        self.__dict__.update(_llm=llm, _calls={}, _lock=threading.Lock(), unmatched=0)

    def __getattr__(self, name):
        return getattr(self._llm, name)

    def __setattr__(self, name, value):
        setattr(self._llm, name, value)

    def open(self, stop: threading.Event, key) -> _Call:
        call = _Call(stop, key)
        with self._lock:
            self._calls[id(key)] = call
        return call

    def close(self, call: _Call) -> None:
        with self._lock:
            self._calls.pop(id(call.key), None)

    def inference(self, *args, **kwargs):
        with self._lock:
            call = self._calls.get(id(kwargs.get("embedding")))
        tokens = self._llm.inference(*args, **kwargs)
        if call is None:  # a run not started by _frames, or the identity was lost: runs to its end
            self.__dict__["unmatched"] += 1
            if self.unmatched == 1:
                log.warning("a CosyVoice LLM run matched no sentence: cancelling a sentence may "
                            "not stop its LLM in this CosyVoice version")
            yield from tokens
            return
        call.uuids.append(kwargs.get("uuid", ""))
        call.threads.append(threading.current_thread())
        try:
            for token in tokens:
                if call.stop.is_set() or call.ended.is_set():
                    return
                yield token
        except Exception as err:  # noqa: BLE001 - handed to the caller
            call.error = err  # and the stream ends here: CosyVoice would wait for a dead LLM forever
        finally:
            tokens.close()


class CosyVoiceTTS(TTSBackend):
    """CosyVoice 2 0.5B: streaming, multilingual (zh, en, yue, ja, ko), zero-shot voice cloning."""

    class Options(Options):
        model_dir: Path | None = Field(None, description="the CosyVoice2-0.5B directory; default "
                                       "<models dir>/cosyvoice2-0.5b (avatar-chat models fetch "
                                       "cosyvoice2-0.5b)")
        voice: str = Field("中文女", description="built-in (SFT) speaker for languages without an "
                           "entry in voices, unless prompt_wav or pack give a cloned voice. "
                           "CosyVoice2-0.5B ships no speakers: they come from an spk2info.pt put in "
                           "the model directory (e.g. CosyVoice-300M-SFT's)")
        voices: dict[str, VoiceChoice] = Field(default_factory=dict, description="a voice per reply "
                                               "language code (zh, en, yue, ja, ko, ...): "
                                               "{speaker: ID} or {prompt_wav: PATH, prompt_text: TEXT}")
        prompt_wav: Path | None = Field(None, description="default voice cloned from this clip "
                                        "(3-30 s WAV, 16 kHz or more) instead of the speaker `voice`")
        prompt_text: str | None = Field(None, description="what prompt_wav says, word for word")
        pack: str | None = Field(None, description="default voice from this avatar pack's voice "
                                 "section (a clip and its transcript), instead of `voice`")
        device: Literal["auto", "cuda", "cpu"] = Field("auto", description="CosyVoice runs on the GPU "
                                                       "whenever torch sees one; cuda fails start-up "
                                                       "without one, cpu fails it with one visible "
                                                       "(hide it with CUDA_VISIBLE_DEVICES=)")
        fp16: bool = Field(False, description="half precision for flow and LLM (GPU only)")
        speed: float = Field(1.0, ge=0.5, le=2.0, description="speaking rate; CosyVoice applies "
                             "it only to whole sentences, so a value other than 1.0 gives up "
                             "streaming within a sentence")
        text_frontend: bool = Field(True, description="CosyVoice's text normalisation (numbers to "
                                    "words, long text split), where the installed code has it")
        max_concurrent: int = Field(4, ge=1, le=64, description="sentences synthesised at once on "
                                    "this replica; more wait their turn")
        warmup: bool = Field(True, description="synthesise a short sentence in each voice at "
                             "start-up so the first session does not pay for lazy initialisation")
        cpu_threads: int | None = Field(None, ge=1, le=256, description="torch's intra-op threads "
                                        "for this process when it runs on CPU; null keeps torch's "
                                        "default. CosyVoice runs its LLM beside flow and HiFT, so "
                                        "about half the cores avoids oversubscription")

        @field_validator("voices")
        @classmethod
        def _language_codes(cls, v: dict[str, VoiceChoice]) -> dict[str, VoiceChoice]:
            out = {}
            for code, choice in v.items():
                key = languages.normalise(code)
                if key is None:
                    raise ValueError(f"{code!r} is not a language code (zh, en, yue, ja, ko, ...)")
                out[key] = choice
            return out

        @model_validator(mode="after")
        def _default_voice(self) -> "CosyVoiceTTS.Options":
            if self.prompt_wav is not None and self.pack is not None:
                raise ValueError("prompt_wav and pack both name the default voice: keep one")
            if (self.prompt_text is not None) != (self.prompt_wav is not None):
                raise ValueError("prompt_wav and prompt_text go together (a clip and its transcript)")
            if self.prompt_text is not None and not self.prompt_text.strip():
                raise ValueError("prompt_text is empty: give prompt_wav's transcript")
            if self.fp16 and self.device == "cpu":
                raise ValueError("fp16 needs a GPU (device: cuda or auto)")
            return self

    sample_rate = 24000

    def __init__(self, options):
        super().__init__(options)
        self._cv = None
        self._llm: _CancellableLLM | None = None
        self._default: Voice | None = None
        self._by_language: dict[str, Voice] = {}
        self._slots: asyncio.Semaphore | None = None
        self._ids = itertools.count()

    # --- start-up -------------------------------------------------------------------------------

    def load(self) -> None:
        o = self.options
        model_dir = resolve(o.model_dir, MODEL_NAME, REQUIRED)
        default, by_language = self._voice_choices()
        try:
            import torch
            from cosyvoice.cli.cosyvoice import CosyVoice2
        except ImportError as err:
            raise ImportError(f"CosyVoice 2's code does not import ({err}): install "
                              "cosyvoice-minicpmo==0.1.0 (scripts/make_production_venv.sh lists its "
                              "dependencies) or put FunAudioLLM/CosyVoice and its "
                              "third_party/Matcha-TTS on PYTHONPATH") from err
        cuda = torch.cuda.is_available()
        if o.device == "cuda" and not cuda:
            raise RuntimeError("device is cuda but torch sees no GPU")
        if o.device == "cpu" and cuda:
            raise RuntimeError("device is cpu but torch sees a GPU, which CosyVoice always takes; "
                               "hide it with CUDA_VISIBLE_DEVICES= or set device: auto")
        # Every voice is checked before the model loads (a minute on a GPU, more on CPU).
        speakers = _speakers(model_dir / "spk2info.pt")
        for where, choice in [("default voice", default),
                              *((f"voices.{code}", c) for code, c in by_language.items())]:
            _check_choice(choice, speakers, model_dir, where)
        if o.cpu_threads is not None and not cuda:
            torch.set_num_threads(o.cpu_threads)

        cv = CosyVoice2(str(model_dir), load_jit=False, load_trt=False, fp16=o.fp16)
        self.sample_rate = int(cv.sample_rate)
        llm = getattr(cv.model, "llm", None)
        if llm is None:  # cosyvoice-minicpmo: see the module docstring
            llm = load_cosyvoice2_llm(model_dir, cv.model.device)
        # CosyVoice's own LLM layers are float32; transformers 5 loads the Qwen2 inside from its
        # bfloat16 config as bfloat16 (dtype "auto"), and the two do not mix. fp16 is autocast's job.
        llm.float()
        self._llm = cv.model.llm = _CancellableLLM(llm)

        self._default = self._prepare(cv, default)
        self._by_language = {code: self._prepare(cv, choice) for code, choice in by_language.items()}
        self._text_frontend = o.text_frontend and _has_text_normaliser(cv.frontend)
        self._cv = cv
        self._slots = None  # made on the serving loop, at first use
        if o.warmup:
            for voice in {self._default, *self._by_language.values()}:
                for _ in self._frames(_WARMUP_TEXT, voice, threading.Event()):
                    pass

    def _voice_choices(self) -> tuple[VoiceChoice, dict[str, VoiceChoice]]:
        o = self.options
        if o.prompt_wav is not None:
            default = VoiceChoice(prompt_wav=o.prompt_wav, prompt_text=o.prompt_text)
        elif o.pack is not None:
            from avatarchat.avatar.pack import load_voice

            pv = load_voice(o.pack)
            if pv is None:
                raise ValueError(f"avatar pack {o.pack!r} has no voice section in its pack.yaml "
                                 "(voice: prompt_wav, prompt_text, language)")
            default = VoiceChoice(prompt_wav=pv.prompt_wav, prompt_text=pv.prompt_text)
        else:
            default = VoiceChoice(speaker=o.voice)
        return default, dict(o.voices)

    @staticmethod
    def _prepare(cv, choice: VoiceChoice) -> Voice:
        if choice.speaker is not None:
            return Voice("sft", choice.speaker, choice.speaker)
        spk_id = f"avatarchat:{choice.prompt_wav}|{choice.prompt_text.strip()}"
        if spk_id not in cv.frontend.spk2info:  # computed once, shared by the languages that use it
            # This version's add_zero_shot_spk takes a 16 kHz tensor (cosyvoice-minicpmo) or a path.
            params = inspect.signature(cv.add_zero_shot_spk).parameters
            prompt = (str(choice.prompt_wav) if "prompt_wav" in params
                      else _read_prompt(choice.prompt_wav))
            cv.add_zero_shot_spk(choice.prompt_text.strip(), prompt, spk_id)
        return Voice("zero_shot", str(choice.prompt_wav), spk_id)

    def close(self) -> None:
        self._cv = self._llm = None

    # --- synthesis ------------------------------------------------------------------------------

    def voice_for(self, language: str | None) -> Voice:
        """The voice a reply in ``language`` is spoken with."""
        if self._default is None:
            raise RuntimeError("CosyVoiceTTS.load() has not been called")
        return languages.choice_for(language, self._by_language, self._default)

    def _frames(self, text: str, voice: Voice, stop: threading.Event) -> Iterator[np.ndarray]:
        """Blocking: the sentence's audio as CosyVoice streams it (run in a worker thread)."""
        cv, o = self._cv, self.options
        spk2info = cv.frontend.spk2info
        # A per-call copy of the voice under its own id, with its own LLM embedding tensor: the
        # identity _CancellableLLM finds the call by (minicpmo's frontend also writes the text into
        # the zero-shot entry it is given, which two sentences at once would share).
        alias = f"avatarchat-call:{next(self._ids)}"
        entry = dict(spk2info[voice.spk_id])
        key_name = "embedding" if voice.kind == "sft" else "llm_embedding"
        entry[key_name] = entry[key_name].clone()
        spk2info[alias] = entry
        call = self._llm.open(stop, entry[key_name])
        stream = o.speed == 1.0
        if voice.kind == "sft":
            outputs = cv.inference_sft(text, alias, stream=stream, speed=o.speed,
                                       text_frontend=self._text_frontend)
        else:
            outputs = cv.inference_zero_shot(text, "", "", zero_shot_spk_id=alias, stream=stream,
                                             speed=o.speed, text_frontend=self._text_frontend)
        finished = False
        try:
            for out in outputs:
                if stop.is_set():
                    return
                wav = out["tts_speech"].detach().cpu().numpy().reshape(-1).astype(np.float32)
                if len(wav):  # a stream's last piece can be empty
                    yield wav
            finished = True
            if call.error is not None:
                raise RuntimeError(f"CosyVoice's LLM failed: {call.error!r}") from call.error
        finally:
            outputs.close()
            call.ended.set()  # an LLM still running for this call stops at its next token
            for t in call.threads:
                t.join(_LLM_STOP_WAIT_S)
            self._llm.close(call)
            spk2info.pop(alias, None)
            if not finished:  # CosyVoice drops a call's state only when its stream runs to the end
                _forget(cv.model, call.uuids)

    async def synthesize(self, text: str, language: str | None = None) -> AsyncIterator[AudioChunk]:
        if self._cv is None:
            raise RuntimeError("CosyVoiceTTS.load() has not been called")
        text = text.strip()
        if not text:
            return
        voice = self.voice_for(language)
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.options.max_concurrent)
        async with self._slots:
            wavs = stream_in_thread(lambda stop: self._frames(text, voice, stop), maxsize=2)
            async with aclosing(timed_chunks(wavs, self.sample_rate)) as chunks:
                async for chunk in chunks:
                    yield chunk


def _speakers(spk2info: Path) -> list[str]:
    """The SFT speakers in spk2info.pt (the release has none)."""
    import torch

    if not spk2info.is_file():
        return []
    return list(torch.load(spk2info, map_location="cpu", weights_only=True))


def _check_choice(choice: VoiceChoice, speakers: list[str], model_dir: Path, where: str) -> None:
    if choice.prompt_wav is not None:
        from avatarchat.audio import read_wav

        if not choice.prompt_wav.is_file():
            raise FileNotFoundError(f"{where}: voice prompt clip not found: {choice.prompt_wav}")
        try:
            samples, rate = read_wav(choice.prompt_wav)
        except ValueError as err:
            raise ValueError(f"{where}: voice prompt {choice.prompt_wav}: {err}") from None
        if rate < PROMPT_RATE:
            raise ValueError(f"{where}: voice prompt {choice.prompt_wav} is {rate} Hz; CosyVoice "
                             f"needs {PROMPT_RATE} Hz or more")
        if not 1.0 <= len(samples) / rate <= 30.0:  # CosyVoice's speech tokenizer takes <= 30 s
            raise ValueError(f"{where}: voice prompt {choice.prompt_wav} lasts "
                             f"{len(samples) / rate:.1f} s; use a 3-30 s clip")
    if choice.speaker is not None and choice.speaker not in speakers:
        have = ", ".join(speakers) if speakers else (
            "none (CosyVoice2-0.5B ships no spk2info.pt: add one, e.g. CosyVoice-300M-SFT's, or "
            "clone a voice with prompt_wav + prompt_text)")
        raise ValueError(f"{where}: speaker {choice.speaker!r} is not in {model_dir}/spk2info.pt; "
                         f"speakers: {have}")


def _has_text_normaliser(frontend) -> bool:
    # Upstream sets text_frontend (newer) or use_ttsfrd (older); cosyvoice-minicpmo cut both out
    # and its text_normalize then raises AttributeError.
    return hasattr(frontend, "text_frontend") or hasattr(frontend, "use_ttsfrd")


def _read_prompt(path: Path):
    """A prompt clip as CosyVoice's frontend takes it: float32 [1, N] at 16 kHz."""
    import torch

    from avatarchat.audio import read_wav, resample

    samples, rate = read_wav(path)  # checked by _check_choice
    return torch.from_numpy(np.ascontiguousarray(resample(samples, rate, PROMPT_RATE),
                                                 dtype=np.float32)).unsqueeze(0)


def _forget(model, uuids: list[str]) -> None:
    """Drop CosyVoice's state of calls whose stream was closed early (it frees it only at the end)."""
    with model.lock:
        for name in _PER_CALL_DICTS:
            table = getattr(model, name, None)
            if isinstance(table, dict):
                for uuid in uuids:
                    table.pop(uuid, None)


BACKEND = CosyVoiceTTS
