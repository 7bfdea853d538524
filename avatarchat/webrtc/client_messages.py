"""What a client may send on the ``events`` data channel, parsed and checked.

    {"type": "text", "text": "..."}   answered like speech
    {"type": "interrupt"}             cancel the reply being spoken

Anything else raises ``BadMessage``; the session answers it with an ``error`` event and carries on.
"""

from __future__ import annotations

import json
from dataclasses import dataclass


class BadMessage(ValueError):
    """A data-channel message the server cannot act on; ``str()`` is the reason sent back."""


@dataclass(frozen=True, slots=True)
class TextInput:
    text: str


@dataclass(frozen=True, slots=True)
class Interrupt:
    pass


ClientMessage = TextInput | Interrupt

MAX_MESSAGE_BYTES = 64_000


def parse_client_message(raw: str | bytes, max_text_chars: int) -> ClientMessage:
    if isinstance(raw, (bytes, bytearray)):
        if len(raw) > MAX_MESSAGE_BYTES:
            raise BadMessage(f"message of {len(raw)} bytes is over the limit of {MAX_MESSAGE_BYTES}")
        try:
            raw = bytes(raw).decode("utf-8")
        except UnicodeDecodeError:
            raise BadMessage("message is not UTF-8 text") from None
    if len(raw) > MAX_MESSAGE_BYTES:
        raise BadMessage(f"message of {len(raw)} characters is over the limit of {MAX_MESSAGE_BYTES}")
    try:
        obj = json.loads(raw)
    except RecursionError:
        # json recurses once per level: 64 kB of "[" is far deeper than Python's stack allows
        raise BadMessage("message is nested too deeply") from None
    except ValueError as err:
        raise BadMessage(f"message is not valid JSON: {err}") from None
    if not isinstance(obj, dict):
        raise BadMessage("message must be a JSON object with a 'type'")
    kind = obj.get("type")
    if kind == "interrupt":
        _no_extra(obj, {"type"})
        return Interrupt()
    if kind == "text":
        _no_extra(obj, {"type", "text"})
        text = obj.get("text")
        if not isinstance(text, str) or not text.strip():
            raise BadMessage("'text' must be a non-empty string")
        if len(text) > max_text_chars:
            raise BadMessage(f"text of {len(text)} characters is over the limit of {max_text_chars}")
        return TextInput(text.strip())
    raise BadMessage(f"unknown message type {_show(kind)}; allowed: text, interrupt")


def _no_extra(obj: dict, allowed: set[str]) -> None:
    extra = sorted(set(obj) - allowed)
    if extra:
        raise BadMessage(f"unknown field {_show(extra[0])}; allowed: {', '.join(sorted(allowed))}")


def _show(value) -> str:
    """A client's value as a reason quotes it: short strings as they are, nothing else echoed back
    (the repr of a deeply nested list recurses as json.loads did, and could be 64 kB long)."""
    if isinstance(value, str):
        return repr(value) if len(value) <= 40 else repr(value[:40] + "...")
    return "null" if value is None else f"of JSON type {type(value).__name__}"
