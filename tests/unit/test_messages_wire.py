"""The stage contracts and their JSON form."""

import json

import numpy as np
import pytest

from avatarchat import wire
from avatarchat.events import ReplyDone, StateChanged, TurnFailed
from avatarchat.messages import AudioChunk, AvatarChunk, FaceMotion, TextDelta, Transcript, TurnTimings


def test_audio_chunk_checks_its_shape_and_converts_to_float32():
    a = AudioChunk(np.zeros(480, np.int16).astype(np.float64), 24000, start=1.0)
    assert a.samples.dtype == np.float32 and a.duration == pytest.approx(0.02) and a.end == pytest.approx(1.02)
    with pytest.raises(ValueError, match="mono"):
        AudioChunk(np.zeros((2, 10), np.float32), 16000)
    with pytest.raises(ValueError, match="sample_rate"):
        AudioChunk(np.zeros(10, np.float32), 0)


def test_interruption_drops_media_and_partial_text_but_keeps_the_record():
    assert AudioChunk.dropped_on_interrupt and AvatarChunk.dropped_on_interrupt and TextDelta.dropped_on_interrupt
    assert not Transcript.dropped_on_interrupt and not TurnFailed.dropped_on_interrupt
    assert not StateChanged.dropped_on_interrupt and not ReplyDone.dropped_on_interrupt


def test_media_survives_the_wire_to_16_bit_precision():
    t = np.arange(2400) / 24000
    audio = AudioChunk((0.5 * np.sin(2 * np.pi * 200 * t)).astype(np.float32), 24000, start=0.4)
    frames = (FaceMotion(mouth_open=0.5, blink=1.0), FaceMotion(mouth_width=-0.25, head_yaw=2.0))
    chunk = AvatarChunk(audio, frames, first_frame=10, fps=25, text="Hi.", sentence=1)
    back = wire.decode_media(json.loads(json.dumps(wire.encode(chunk))))
    assert back.first_frame == 10 and back.fps == 25 and back.text == "Hi." and back.sentence == 1
    assert back.audio.start == 0.4 and np.abs(back.audio.samples - audio.samples).max() < 1e-4
    assert back.frames == frames


def test_every_event_has_a_json_form():
    for event, kind in [(Transcript("hello"), "transcript"), (TextDelta(" hi"), "transcript"),
                        (ReplyDone("Hi.", 1.0), "transcript"), (StateChanged("speaking"), "state"),
                        (TurnTimings(asr=0.5), "timings"), (TurnFailed("llm", "boom"), "error")]:
        assert json.loads(json.dumps(wire.encode(event)))["type"] == kind
    with pytest.raises(TypeError):
        wire.encode(object())
