"""Data-channel messages from clients, utterance merging, and the playout's clocking (no WebRTC)."""

import json

import numpy as np
import pytest

from avatarchat.messages import AudioChunk, AvatarChunk, FaceMotion
from avatarchat.webrtc.client_messages import BadMessage, Interrupt, TextInput, parse_client_message
from avatarchat.conversation.playout import AUDIO_FRAME_SAMPLES, Playout
from avatarchat.webrtc.session import merge_utterances


def test_text_and_interrupt_parse():
    assert parse_client_message('{"type": "text", "text": " Hi there "}', 100) == TextInput("Hi there")
    assert parse_client_message(b'{"type": "interrupt"}', 100) == Interrupt()


@pytest.mark.parametrize("raw,reason", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "JSON object"),
    ('{"type": "dance"}', "unknown message type"),
    ('{"text": "hi"}', "unknown message type"),
    ('{"type": "text"}', "non-empty string"),
    ('{"type": "text", "text": "   "}', "non-empty string"),
    ('{"type": "text", "text": 5}', "non-empty string"),
    ('{"type": "text", "text": "hi", "extra": 1}', "unknown field 'extra'"),
    ('{"type": "interrupt", "now": true}', "unknown field 'now'"),
    (json.dumps({"type": "text", "text": "x" * 101}), "over the limit of 100"),
    (b"\xff\xfe", "not UTF-8"),
    ("x" * 70_000, "over the limit"),
])
def test_bad_messages_say_why(raw, reason):
    with pytest.raises(BadMessage, match=reason):
        parse_client_message(raw, 100)


@pytest.mark.parametrize("raw", [
    "[" * 60_000,                                  # under the 64 kB limit, far over the stack's depth
    '{"type": "text", "text": "hi", "x": ' + '{"a":' * 9_000 + "1" + "}" * 9_001,
    b"[" * 60_000,
])
def test_json_nested_too_deeply_is_a_bad_message_not_a_recursion_error(raw):
    with pytest.raises(BadMessage, match="nested too deeply"):
        parse_client_message(raw, 100)


@pytest.mark.parametrize("raw,reason", [
    ('{"type": ' + "[" * 200 + "]" * 200 + "}", "unknown message type of JSON type list;"),
    (json.dumps({"type": "t" * 5000}), "unknown message type 'tttt"),
    (json.dumps({"type": "interrupt", "k" * 5000: 1}), "unknown field 'kkkk"),
])
def test_a_reason_never_echoes_a_long_or_nested_value(raw, reason):
    with pytest.raises(BadMessage, match=reason) as err:
        parse_client_message(raw, 100)
    assert len(str(err.value)) < 120


def test_merging_utterances_drops_their_shared_audio():
    rate = 16000
    first = AudioChunk(np.ones(rate, np.float32), rate, 1.0)          # 1.0 .. 2.0 s
    second = AudioChunk(np.full(rate, 2.0, np.float32), rate, 1.5)    # 1.5 .. 2.5 s, overlaps 0.5 s
    merged = merge_utterances(first, second, 60)
    assert merged.duration == pytest.approx(1.5) and merged.start == pytest.approx(1.0)
    assert merge_utterances(None, second, 60) is second
    assert merge_utterances(first, second, 1.0).duration == pytest.approx(1.0)


def chunk(start_s, seconds, first_frame, opens):
    audio = AudioChunk(np.full(int(24000 * seconds), 0.5, np.float32), 24000, start_s)
    return AvatarChunk(audio, tuple(FaceMotion(mouth_open=o) for o in opens), first_frame, 25)


def test_the_playout_shows_the_frame_of_the_audio_being_heard_then_idles():
    p = Playout(fps=25)
    assert not p.speaking and np.all(p.audio_frame(0.0) == 0)
    assert p.frame_at(0.0)[1] is False  # idle face
    p.start_reply()
    p.push(chunk(0.0, 0.2, 0, [0.1, 0.2, 0.3, 0.4, 0.5]))
    p.end_reply()
    assert p.queued_s == pytest.approx(0.2, abs=0.01)
    shown = []
    for n in range(15):
        t = 1.0 + n * 0.02  # the session clock is already at 1 s when the reply starts
        heard = p.audio_frame(t)
        assert len(heard) == AUDIO_FRAME_SAMPLES
        motion, speaking = p.frame_at(t)
        shown.append((round(motion.mouth_open, 2) if speaking else None, float(np.abs(heard).max()) > 0.1))
    # frame k is shown while the audio at k/25 s of the reply is heard
    assert shown[0] == (0.1, True) and shown[2] == (0.2, True) and shown[8] == (0.5, True)
    assert shown[-1] == (None, False), "after the reply the face idles and the audio is silent"


def test_a_flush_drops_the_reply_at_once():
    p = Playout(fps=25)
    p.start_reply()
    p.push(chunk(0.0, 1.0, 0, [0.5] * 25))
    p.audio_frame(0.0)
    p.flush()
    assert not p.speaking and np.all(p.audio_frame(0.02) == 0) and p.frame_at(0.02)[1] is False


def test_the_playout_holds_at_most_max_buffer_s():
    p = Playout(fps=25, max_buffer_s=1.0)
    p.start_reply()
    for i in range(5):
        p.push(chunk(i * 0.5, 0.5, i * 12, [0.3] * 12))
    assert p.queued_s <= 1.0 + 0.01
