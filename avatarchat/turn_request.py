"""Parsing and checking what a client sends to start a turn. Every problem is a BadInput with a
reason and an HTTP status; nothing here touches a session or a stage."""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass

from avatarchat.audio import decode_wav
from avatarchat.config import Limits
from avatarchat.errors import BadInput
from avatarchat.http_io import media_type
from avatarchat.messages import AudioChunk, ChatMessage

WAV_TYPES = {"audio/wav", "audio/x-wav", "audio/wave", "audio/vnd.wave"}
JSON_KEYS = {"text", "audio_wav_b64", "history", "realtime"}


@dataclass(frozen=True, slots=True)
class TurnRequest:
    audio: AudioChunk | None
    text: str | None
    history: tuple[ChatMessage, ...] = ()
    realtime: bool | None = None  # None: the configured default


def parse_turn_request(content_type: str, body: bytes, limits: Limits,
                       realtime: bool | None = None) -> TurnRequest:
    kind = media_type(content_type)
    if len(body) > limits.max_upload_bytes:
        raise BadInput(f"body of {len(body)} bytes is over the limit of {limits.max_upload_bytes}", 413)
    if kind in WAV_TYPES:
        return TurnRequest(audio=_audio(body, limits), text=None, realtime=realtime)
    if kind == "application/json":
        return _from_json(body, limits, realtime)
    raise BadInput(f"unsupported Content-Type {content_type!r}; send audio/wav or application/json", 415)


def _audio(wav: bytes, limits: Limits) -> AudioChunk:
    samples, rate = decode_wav(wav)
    seconds = len(samples) / rate
    if seconds > limits.max_utterance_s:
        raise BadInput(f"utterance of {seconds:.1f} s is over the limit of {limits.max_utterance_s} s", 413)
    if seconds < 0.1:
        raise BadInput("utterance is shorter than 0.1 s")
    return AudioChunk(samples, rate)


def _from_json(body: bytes, limits: Limits, realtime: bool | None) -> TurnRequest:
    try:
        doc = json.loads(body)
    except RecursionError:
        raise BadInput("JSON body is nested too deeply") from None
    except ValueError as err:  # also UnicodeDecodeError, and an integer of over 4300 digits
        raise BadInput(f"body is not valid JSON: {err}") from None
    if not isinstance(doc, dict):
        raise BadInput("JSON body must be an object")
    unknown = sorted(set(doc) - JSON_KEYS)
    if unknown:
        raise BadInput(f"unknown field {unknown[0]!r}; allowed: {', '.join(sorted(JSON_KEYS))}")
    text, audio_b64 = doc.get("text"), doc.get("audio_wav_b64")
    if (text is None) == (audio_b64 is None):
        raise BadInput("send exactly one of 'text' or 'audio_wav_b64'")
    audio = None
    if text is not None:
        if not isinstance(text, str) or not text.strip():
            raise BadInput("'text' must be a non-empty string")
        if len(text) > limits.max_text_chars:
            raise BadInput(f"'text' of {len(text)} characters is over the limit of {limits.max_text_chars}", 413)
    else:
        if not isinstance(audio_b64, str):
            raise BadInput("'audio_wav_b64' must be a string of base64")
        try:
            wav = base64.b64decode(audio_b64, validate=True)
        except (binascii.Error, ValueError) as err:  # ValueError: a non-ASCII character
            raise BadInput(f"'audio_wav_b64' is not valid base64: {err}") from None
        try:
            audio = _audio(wav, limits)
        except BadInput as err:  # the base64 was fine: the fault is in the WAV it holds
            raise BadInput(f"'audio_wav_b64': {err.reason}", err.status) from None
    history = _history(doc.get("history", []), limits)
    rt = doc.get("realtime", realtime)
    if rt is not None and not isinstance(rt, bool):
        raise BadInput("'realtime' must be true or false")
    return TurnRequest(audio=audio, text=text, history=history, realtime=rt)


def _history(raw, limits: Limits) -> tuple[ChatMessage, ...]:
    if not isinstance(raw, list):
        raise BadInput("'history' must be a list of {role, content} objects")
    out = []
    for i, item in enumerate(raw):
        if not (isinstance(item, dict) and item.get("role") in ("user", "assistant")
                and isinstance(item.get("content"), str)):
            raise BadInput(f"history[{i}] must be {{\"role\": \"user\"|\"assistant\", \"content\": str}}")
        if len(item["content"]) > limits.max_text_chars:
            raise BadInput(f"history[{i}].content is over the limit of {limits.max_text_chars} characters", 413)
        out.append(ChatMessage(item["role"], item["content"]))
    return tuple(out[-limits.max_history_messages:]) if limits.max_history_messages else ()
