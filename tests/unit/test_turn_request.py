"""Parsing what a client sends to start a turn: every bad input is a BadInput with a status."""

import base64
import json

import numpy as np
import pytest

from avatarchat.audio import encode_wav
from avatarchat.config import Limits
from avatarchat.errors import BadInput
from avatarchat.turn_request import parse_turn_request

LIMITS = Limits(max_upload_bytes=200_000, max_utterance_s=2.0, max_text_chars=50, max_history_messages=2)
WAV = encode_wav(np.zeros(8000, np.float32), 16000)  # 0.5 s


def parse(body, ctype="application/json"):
    if isinstance(body, dict):
        body = json.dumps(body).encode()
    return parse_turn_request(ctype, body, LIMITS)


def test_wav_and_json_forms():
    assert parse(WAV, "audio/wav").audio.duration == pytest.approx(0.5)
    assert parse(WAV, "audio/x-wav; charset=binary").audio.sample_rate == 16000
    r = parse({"text": "hi", "history": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                                         {"role": "user", "content": "c"}], "realtime": False})
    assert r.text == "hi" and r.realtime is False
    assert [m.content for m in r.history] == ["b", "c"]  # only the last max_history_messages
    assert parse({"audio_wav_b64": base64.b64encode(WAV).decode()}).audio is not None


@pytest.mark.parametrize("body,ctype,status,words", [
    (b"x" * 200_001, "audio/wav", 413, "over the limit"),
    (encode_wav(np.zeros(48000, np.float32), 16000), "audio/wav", 413, "utterance"),
    (b"RIFFjunk", "audio/wav", 400, "WAV"),
    (b"hi", "text/plain", 415, "Content-Type"),
    (b"{nope", "application/json", 400, "JSON"),
    (b"[1]", "application/json", 400, "object"),
    ({"text": "hi", "speed": 2}, "application/json", 400, "unknown field 'speed'"),
    ({}, "application/json", 400, "exactly one"),
    ({"text": "hi", "audio_wav_b64": "AAAA"}, "application/json", 400, "exactly one"),
    ({"text": "  "}, "application/json", 400, "non-empty"),
    ({"text": "x" * 51}, "application/json", 413, "limit"),
    ({"audio_wav_b64": "not base64!"}, "application/json", 400, "base64"),
    ({"text": "hi", "history": [{"role": "system", "content": "x"}]}, "application/json", 400, "history[0]"),
    ({"text": "hi", "realtime": "yes"}, "application/json", 400, "realtime"),
    (WAV[:-1], "audio/wav", 400, "ends mid-sample: 15999 bytes is not a whole number of 2-byte samples"),
    ({"audio_wav_b64": base64.b64encode(WAV[:-1]).decode()}, "application/json", 400,
     "'audio_wav_b64': the WAV's audio data ends mid-sample"),
    ({"audio_wav_b64": base64.b64encode(b"RIFFjunk").decode()}, "application/json", 400,
     "'audio_wav_b64': not a readable PCM WAV file"),
    ({"audio_wav_b64": 12}, "application/json", 400, "must be a string"),
    ({"audio_wav_b64": "AAAAé"}, "application/json", 400, "not valid base64"),
    (b"[" * 100_000 + b"]" * 100_000, "application/json", 400, "nested too deeply"),
    (b'{"text": "hi", "n": ' + b"9" * 5000 + b"}", "application/json", 400, "not valid JSON"),
    (b'{"text": "\xff"}', "application/json", 400, "not valid JSON"),
])
def test_bad_input_is_refused_with_a_reason(body, ctype, status, words):
    with pytest.raises(BadInput) as err:
        parse(body, ctype)
    assert err.value.status == status and words in err.value.reason


def test_no_body_gets_anything_but_bad_input():
    """A route that lets another exception out answers 500: every cut of a WAV, plain or in JSON,
    and every cut of a JSON body is parsed or refused with a reason."""
    doc = json.dumps({"audio_wav_b64": base64.b64encode(WAV[:300]).decode(),
                      "history": [{"role": "user", "content": "a"}], "realtime": True}).encode()
    bodies = [("audio/wav", WAV[:n]) for n in range(0, 300)]
    bodies += [("application/json", doc[:n]) for n in range(len(doc))]
    bodies += [("application/json", json.dumps({"audio_wav_b64": base64.b64encode(WAV[:n]).decode()}).encode())
               for n in range(0, 300, 3)]
    for ctype, body in bodies:
        try:
            parse(body, ctype)
        except BadInput as err:
            assert err.reason and err.status in (400, 413), (body, err.reason)
