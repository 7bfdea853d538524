"""MiniCPM-o 2.6 on a local GPU: hears the user, answers in text and 24 kHz speech (unverified).

One 8B model (OpenBMB; Apache-2.0 code, MiniCPM Model License weights: Whisper-medium encoder,
Qwen2.5-7B, ChatTTS decoder, Vocos vocoder) run through transformers on a GPU share.

UNVERIFIED here: the model's code (``trust_remote_code``: modeling_minicpmo.py and its
neighbours) and its weights live only on the model hubs, which this project's test machines cannot
reach. This module is written against the published API; the unit test
(tests/unit/test_minicpm_o.py) drives it with a fake model of the same interface, which shows the
code around the model, not that the model works. The model's code needs the transformers it was
written for (upstream pins 4.44.2; 5.x lacks a name it imports: check_transformers), so this stage
runs in an environment of its own, not the production venv's transformers 5.

The API, as published (read 2026-11; check these when it changes):

- load: OpenBMB/MiniCPM-V README.md at 53c0174 ("Model initialization"):
  ``AutoModel.from_pretrained(path, trust_remote_code=True, attn_implementation='sdpa',
  torch_dtype=torch.bfloat16)`` ("sdpa or flash_attention_2, no eager"), ``.eval().cuda()``,
  ``AutoTokenizer.from_pretrained(path, trust_remote_code=True)``, ``model.init_tts()``,
  ``model.tts.float()``. ``init_vision=False, init_audio=True, init_tts=True``: config flags that
  MiniCPMO.__init__ reads (modeling_minicpmo.py); the model card's later text says "if load
  audio-only model, please set init_vision=False".
- streaming: the same README ("streaming inference") and OpenBMB/MiniCPM-V
  web_demos/minicpm-o_2.6/model_server.py at 7770da6: ``model.reset_session()``;
  ``model.streaming_prefill(session_id=, msgs=[ONE message], tokenizer=)``, first the system
  message, then the user's audio as 16 kHz float32 arrays of at most 1 s each;
  ``model.streaming_generate(session_id=, tokenizer=, temperature=, generate_audio=True)``, a
  generator of ``OmniOutput`` with ``.text``, ``.audio_wav`` (a CPU float tensor) and
  ``.sampling_rate`` (24000).
- behaviour read in modeling_minicpmo.py (the hub file, as copied in jack139/minicpmo-backend):
  ``streaming_prefill`` takes exactly one message per call; a new ``session_id`` resets the KV
  cache and its first message goes through the chat template; later messages are appended as
  text, a user message getting ``<|im_start|>user\\n`` at the start of a user turn, other roles
  verbatim; ``streaming_generate`` closes the turn and opens the assistant's (sampling kwargs:
  temperature, top_p, top_k, repetition_penalty; max_new_tokens). ``get_sys_prompt(ref_audio=,
  mode=, language=)`` builds the first message (a user-role message with the voice instructions
  and the reference clip). The streaming code calls ``.cuda()`` itself: it runs on a GPU only.

How a reply is made: every request starts a fresh session (``reset_session`` and a new session id),
prefills the first message (this backend's ``system_prompt`` before the model's own voice
instructions from ``get_sys_prompt``), then the history as finished ChatML turns (the format of the
model's own ``chat()``, as its README's second round shows: text turns), then the user's message:
their audio in ``chunk_s`` pieces at 16 kHz, or their typed text. ``streaming_generate`` then
yields text with the audio that speaks it; each becomes a ``TextDelta`` and an ``AudioChunk``.

The model gives no transcript of what it heard: this backend yields no ``Transcript``; captions
and the history's user text come from ``captions: asr`` (an asr stage run beside it).

One reply at a time per replica: the model keeps its streaming state (KV caches, session) on the
model object, so one lock covers a whole reply, from its prefill to its last piece or its
cancellation. Sessions on one replica take turns; scale with replicas (each a GPU share of ~18 GB).
A reply whose listener goes away stops at the next piece (the model finishes the piece under way)
and releases the lock.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import aclosing
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field

from avatarchat.audio import read_wav, resample
from avatarchat.backends.base import torch_device
from avatarchat.backends.speech_to_speech.base import SpeechToSpeechBackend, SpeechToSpeechOptions
from avatarchat.languages import normalise, system_prompt_for
from avatarchat.messages import AudioChunk, SpeechRequest, TextDelta
from avatarchat.models import MissingWeights, resolve
from avatarchat.threads import stream_in_thread

log = logging.getLogger(__name__)

MODEL_NAME = "minicpm-o-2_6"
WEIGHTS_INDEX = "model.safetensors.index.json"
# What the hub repository holds that loading reads; the TTS assets are checked too, because
# init_tts() downloads them from the hub when they are missing (nothing downloads at run time).
REQUIRED = ("config.json", "configuration_minicpm.py", "modeling_minicpmo.py",
            "processing_minicpmo.py", "tokenizer_config.json", WEIGHTS_INDEX, "assets/Vocos.pt",
            "assets/chattts_tokenizer/tokenizer.json")
MODEL_API = ("reset_session", "streaming_prefill", "streaming_generate")
IN_RATE = 16000    # what the model hears (its Whisper encoder)
OUT_RATE = 24000   # what it speaks (Vocos)
MIN_PIECE_S = 0.1  # a last audio piece shorter than this is padded with silence (no empty features)
# Tokens of the model's chat format that may end up in its text pieces, and that user text must not
# be able to write.
_SPECIAL = ("<|tts_eos|>", "<|im_end|>", "<|endoftext|>")


class MiniCPMOOptions(SpeechToSpeechOptions):
    model_dir: Path | None = Field(None, description="the MiniCPM-o-2_6 directory (the hub "
                                   "repository: config.json, modeling_minicpmo.py, the safetensors "
                                   f"shards, assets/); default <models dir>/{MODEL_NAME} "
                                   f"(avatar-chat models fetch {MODEL_NAME})")
    device: Literal["auto", "cuda"] = Field("auto", description="the model's streaming code runs on "
                                            "CUDA only (it calls .cuda() itself): auto and cuda "
                                            "both fail start-up when torch sees no GPU")
    dtype: Literal["bfloat16", "float16", "float32"] = Field(
        "bfloat16", description="precision of the LLM and encoders (upstream uses bfloat16; the TTS "
                                "decoder runs in float32 as upstream's README does)")
    attn_implementation: Literal["sdpa", "flash_attention_2"] = Field(
        "sdpa", description="attention kernel; upstream: sdpa or flash_attention_2 (the "
                            "flash-attn package), not eager")
    voice_ref: Path | None = Field(None, description="a WAV clip (a few seconds, 16 kHz or more) "
                                   "whose voice the replies use (upstream's ref_audio); null: the "
                                   "model's default voice")
    mode: Literal["audio_assistant", "audio_roleplay"] = Field(
        "audio_assistant", description="the model's voice prompt (get_sys_prompt mode): "
                                       "audio_assistant speaks as an assistant in voice_ref's voice; "
                                       "audio_roleplay also plays the character of the clip")
    language: Literal["auto", "en", "zh"] = Field(
        "auto", description="language of the model's own voice instructions (it answers in the "
                            "user's language either way); auto: zh when the turn's language is "
                            "Chinese, else en")
    temperature: float = Field(0.5, gt=0.0, le=2.0, description="sampling temperature of the text "
                               "(upstream's streaming example uses 0.5)")
    top_p: float = Field(0.8, gt=0.0, le=1.0, description="nucleus sampling of the text "
                         "(upstream's default)")
    max_new_tokens: int = Field(256, ge=8, le=4096, description="text tokens per reply at most; "
                                "the speech follows the text")
    chunk_s: float = Field(1.0, ge=0.2, le=1.0, description="seconds of the user's audio per "
                           "prefill call (upstream feeds at most 1 s at a time, its audio "
                           "encoder's chunk)")
    warmup: bool = Field(True, description="answer one short typed message at start-up, so a "
                         "broken install fails there and the first session does not pay for "
                         "lazy initialisation")


class MiniCPMO(SpeechToSpeechBackend):
    """MiniCPM-o 2.6 through transformers: audio or text in, text and 24 kHz speech out."""

    Options = MiniCPMOOptions
    sample_rate = OUT_RATE

    def __init__(self, options):
        super().__init__(options)
        self._model = None
        self._tokenizer = None
        self._ref_audio: np.ndarray | None = None
        self._no_grad: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
        self._lock = threading.Lock()  # one reply at a time: the model holds the session's state

    # --- loading ----------------------------------------------------------------------------------

    def load(self) -> None:
        o = self.options
        model_dir = resolve(o.model_dir, MODEL_NAME, REQUIRED).resolve()  # before importing torch
        check_shards(model_dir)
        ref_audio = voice_clip(o.voice_ref) if o.voice_ref is not None else None
        if o.captions == "model":
            log.warning("MiniCPM-o gives no transcript of the user's speech: with captions: model "
                        "the user's words are neither shown nor kept in the history; set "
                        "captions: asr (and configure stages.asr) for them")

        import torch
        import transformers
        from transformers import AutoModel, AutoTokenizer

        check_transformers(model_dir, transformers)
        if torch_device(o.device) != "cuda":
            raise RuntimeError("MiniCPM-o 2.6 needs a GPU: its streaming code calls .cuda(), and "
                               "torch sees no GPU")
        model = AutoModel.from_pretrained(
            str(model_dir), trust_remote_code=True, local_files_only=True,
            attn_implementation=o.attn_implementation, torch_dtype=getattr(torch, o.dtype),
            init_vision=False, init_audio=True, init_tts=True)
        model = model.eval().cuda()
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir), trust_remote_code=True,
                                                  local_files_only=True)
        model.init_tts()  # reads assets/chattts_tokenizer and assets/Vocos.pt from model_dir
        model.tts.float()
        self._bind(model, tokenizer, ref_audio, no_grad=torch.inference_mode)
        if o.warmup:
            self.warm_up()

    def _bind(self, model, tokenizer, ref_audio: np.ndarray | None = None,
              no_grad: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext) -> None:
        """Serve with ``model`` and ``tokenizer`` (load() passes the real ones, tests a fake)."""
        missing = [name for name in MODEL_API if not callable(getattr(model, name, None))]
        if missing:
            raise RuntimeError(f"the loaded model has no {', '.join(missing)}: not MiniCPM-o 2.6's "
                               "streaming API (a different modeling_minicpmo.py?)")
        self._model, self._tokenizer = model, tokenizer
        self._ref_audio, self._no_grad = ref_audio, no_grad

    def warm_up(self) -> None:
        """One short reply, its first pieces only."""
        request = SpeechRequest(history=(), text="Hello!")
        pieces = self._reply(request, threading.Event())
        try:
            for n, _ in enumerate(pieces):
                if n >= 1:
                    break
        finally:
            pieces.close()

    def close(self) -> None:
        with self._lock:
            self._model = self._tokenizer = None
        with contextlib.suppress(Exception):
            import torch

            torch.cuda.empty_cache()

    # --- the contract -----------------------------------------------------------------------------

    async def converse(self, request: SpeechRequest) -> AsyncIterator[TextDelta | AudioChunk]:
        if self._model is None:
            raise RuntimeError("MiniCPM-o is not loaded")
        async with aclosing(stream_in_thread(lambda stop: self._reply(request, stop))) as pieces:
            async for piece in pieces:
                yield piece

    # --- in the worker thread ---------------------------------------------------------------------

    def _reply(self, request: SpeechRequest, stop: threading.Event) -> Iterator[TextDelta | AudioChunk]:
        """The reply's pieces, made in the calling (worker) thread, holding the model's lock until
        the reply ends, fails or is closed. ``stop`` is checked before each model call and piece;
        stream_in_thread drops this generator when its consumer goes, which closes it here."""
        with self._lock:
            model, tokenizer = self._model, self._tokenizer
            if stop.is_set() or model is None:
                return
            with self._no_grad():
                session = uuid.uuid4().hex  # a new session id: the model starts a fresh KV cache
                model.reset_session()
                try:
                    for msg in self.prefill_messages(request):
                        if stop.is_set():
                            return
                        model.streaming_prefill(session_id=session, msgs=[msg], tokenizer=tokenizer)
                    if stop.is_set():
                        return
                    outputs = model.streaming_generate(
                        session_id=session, tokenizer=tokenizer, generate_audio=True,
                        temperature=self.options.temperature, top_p=self.options.top_p,
                        max_new_tokens=self.options.max_new_tokens)
                    try:
                        for out in outputs:
                            if stop.is_set():
                                return
                            yield from pieces_of(out)
                    finally:
                        close = getattr(outputs, "close", None)
                        if close is not None:
                            close()
                finally:
                    model.reset_session()  # drop the KV caches until the next reply

    def prefill_messages(self, request: SpeechRequest) -> list[dict]:
        """The messages prefilled one by one: the first (system prompt and voice), the history as
        finished turns, then the user's audio pieces (16 kHz float32, ``chunk_s`` each) or text."""
        o = self.options
        lang = o.language if o.language != "auto" else (
            "zh" if normalise(request.language) in ("zh", "yue") else "en")
        system = plain(system_prompt_for(o.system_prompt, request.language))
        make = getattr(self._model, "get_sys_prompt", None)
        if callable(make):
            first = make(ref_audio=self._ref_audio, mode=o.mode, language=lang)
            first = {"role": first.get("role", "user"),
                     "content": [system + "\n", *content_list(first)]}
        else:
            first = {"role": "user", "content": [system]}
        msgs = [first]
        # streaming_prefill passes a non-first, non-user message through verbatim (and the next
        # user message then opens a new user turn), so each history turn is written out whole here,
        # in the ChatML format the model's chat() uses.
        for m in request.history:
            msgs.append({"role": "assistant",
                         "content": [f"<|im_start|>{m.role}\n{plain(m.content)}<|im_end|>\n"]})
        if request.text is not None:
            msgs.append({"role": "user", "content": [plain(request.text)]})
        else:
            for piece in audio_pieces(request.audio, o.chunk_s):
                msgs.append({"role": "user", "content": [piece]})
        return msgs


# --- helpers (module level: no model needed) ------------------------------------------------------

def check_shards(model_dir: Path) -> None:
    """Every safetensors shard the index names is there (a fetch cut short leaves some out)."""
    try:
        weight_map = json.loads((model_dir / WEIGHTS_INDEX).read_text())["weight_map"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise MissingWeights(MODEL_NAME, model_dir, f"a readable {WEIGHTS_INDEX} ({err})") from None
    for shard in sorted(set(weight_map.values())):
        if not (model_dir / shard).is_file():
            raise MissingWeights(MODEL_NAME, model_dir, shard)


def check_transformers(model_dir: Path, transformers) -> None:
    """Fail before loading 17 GB when the installed transformers lacks a name the model's code
    imports: the hub's modeling_minicpmo.py imports ``LogitsWarper``, which newer transformers (5.x)
    no longer has; upstream pins transformers 4.44.2 (OpenBMB/MiniCPM-V requirements_o2.6.txt)."""
    code = (model_dir / "modeling_minicpmo.py").read_text(errors="replace")
    missing = [name for name in ("LogitsWarper",)
               if f"import {name}" in code and not hasattr(transformers, name)]
    if missing:
        raise RuntimeError(
            f"{model_dir / 'modeling_minicpmo.py'} imports transformers.{missing[0]}, which the "
            f"installed transformers {getattr(transformers, '__version__', '?')} does not have: run "
            "this stage where transformers is the version MiniCPM-o 2.6 pins (4.44.2, its "
            "requirements_o2.6.txt)")


def voice_clip(path: Path) -> np.ndarray:
    """The voice reference as 16 kHz mono float32 (what get_sys_prompt takes as ref_audio)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"voice_ref {p} not found: give a WAV clip of the voice to use")
    samples, rate = read_wav(p)
    return resample(samples, rate, IN_RATE).astype(np.float32)


def audio_pieces(audio: AudioChunk, chunk_s: float) -> list[np.ndarray]:
    """The user's audio at 16 kHz in pieces of ``chunk_s`` seconds; the last one padded with
    silence to MIN_PIECE_S when shorter (and a single such piece for empty audio)."""
    samples = resample(np.asarray(audio.samples, np.float32), audio.sample_rate, IN_RATE)
    size, least = int(round(chunk_s * IN_RATE)), int(round(MIN_PIECE_S * IN_RATE))
    pieces = [samples[i:i + size] for i in range(0, len(samples), size)] or [samples[:0]]
    if len(pieces[-1]) < least:
        pieces[-1] = np.pad(pieces[-1], (0, least - len(pieces[-1])))
    return [np.ascontiguousarray(p, dtype=np.float32) for p in pieces]


def content_list(message: dict) -> list:
    content = message.get("content", [])
    return list(content) if isinstance(content, (list, tuple)) else [content]


def plain(text: str) -> str:
    """Text that cannot write the model's special tokens (``<|...|>``)."""
    return text.replace("<|", "< |")


def output_field(out, name: str):
    """A field of one streaming_generate output (OmniOutput is attribute- and key-addressable)."""
    value = getattr(out, name, None)
    if value is None and isinstance(out, dict):
        value = out.get(name)
    return value


def to_samples(wav) -> np.ndarray:
    """A tensor or array of audio as 1-D float32 numpy."""
    if hasattr(wav, "detach"):  # a torch tensor, without importing torch here
        wav = wav.detach().float().cpu().numpy()
    return np.asarray(wav, dtype=np.float32).reshape(-1)


def pieces_of(out) -> Iterator[TextDelta | AudioChunk]:
    """One streaming_generate output as a TextDelta (its new text) and an AudioChunk (24 kHz)."""
    text = output_field(out, "text")
    if isinstance(text, str):
        for token in _SPECIAL:
            text = text.replace(token, "")
        if text:
            yield TextDelta(text)
    wav = output_field(out, "audio_wav")
    if wav is not None:
        samples = to_samples(wav)
        rate = int(output_field(out, "sampling_rate") or OUT_RATE)
        if rate != OUT_RATE:
            samples = resample(samples, rate, OUT_RATE)
        if len(samples):
            yield AudioChunk(samples, OUT_RATE)


BACKEND = MiniCPMO
