"""The speech-to-speech shape of a turn (one model hears and answers) with scripted stages: what it
yields, captions from the model or from an ASR beside it, pacing of small pieces, cancellation, and
a remote failure's event."""

import asyncio

import numpy as np
import pytest

from avatarchat.backends.base import create_backend
from avatarchat.config import parse_config
from avatarchat.errors import ConfigError
from avatarchat.events import ReplyDone, StateChanged, TurnFailed
from avatarchat.messages import AudioChunk, AvatarChunk, ChatMessage, TextDelta, Transcript, TurnTimings
from avatarchat.ports import LocalPorts
from avatarchat.remote import RemoteServiceError
from avatarchat.turn import Turn, TurnOptions

pytestmark = pytest.mark.timeout(30)


def make_ports(speech: dict | None = None, asr: dict | None = None):
    stages = {"speech_to_speech": {"backend": "scripted", **(speech or {})}, "avatar": {"backend": "scripted"}}
    if asr is not None:
        stages["asr"] = {"backend": "scripted", **asr}
    cfg = parse_config({"stages": stages})
    backends = {s: create_backend(cfg.stage(s)) for s in cfg.stages if s not in ("vad", "end_of_turn")}
    return LocalPorts(**backends), backends


def utterance(seconds=1.0):
    return AudioChunk(np.zeros(int(16000 * seconds), np.float32), 16000)


async def collect(turn, user):
    return [e async for e in turn.run(user)]


async def test_spoken_input_is_answered_with_the_models_text_audio_and_frames():
    ports, backends = make_ports()
    events = await collect(Turn(ports, options=TurnOptions(realtime=False)), utterance())
    kinds = [type(e) for e in events]
    assert events[0] == StateChanged("thinking")
    assert kinds[-3:] == [ReplyDone, TurnTimings, StateChanged] and events[-1].state == "listening"
    heard = [e for e in events if isinstance(e, Transcript)]
    assert [t.text for t in heard] == ["What is your name?"]  # the model's own transcript
    done = next(e for e in events if isinstance(e, ReplyDone))
    reply = "Hello there. I am a scripted model. How can I help?"
    assert done.text == reply and "".join(e.text for e in events if isinstance(e, TextDelta)) == reply
    chunks = [e for e in events if isinstance(e, AvatarChunk)]
    frame_ids = [c.first_frame + i for c in chunks for i in range(len(c.frames))]
    assert frame_ids == list(range(len(frame_ids))), "frames gapless and in order across pieces"
    audio = sum(c.audio.duration for c in chunks)
    assert audio == pytest.approx(len(reply) * 0.06, abs=0.05) and done.audio_s == pytest.approx(audio, abs=0.01)
    assert kinds.index(StateChanged, 1) < kinds.index(AvatarChunk)  # "speaking" before the media
    # what the model was sent: the user's audio, the history
    request = backends["speech_to_speech"].requests[-1]
    assert request.audio is not None and request.text is None
    timings = events[-2]
    assert timings.asr is None and timings.llm_first_token > 0 and timings.tts_first_audio > 0
    assert timings.input_to_first_frame > 0 and timings.sentences >= 1


async def test_typed_text_is_shown_as_the_users_words_and_sent_as_text():
    ports, backends = make_ports()
    history = (ChatMessage("user", "hi"), ChatMessage("assistant", "hello"))
    events = await collect(Turn(ports, history, TurnOptions(realtime=False)), "tell me a story")
    assert [e.text for e in events if isinstance(e, Transcript)] == ["tell me a story"]
    request = backends["speech_to_speech"].requests[-1]
    assert request.text == "tell me a story" and request.audio is None and request.history == history


async def test_captions_can_come_from_an_asr_stage_beside_the_model():
    ports, backends = make_ports(speech={"captions": "asr"}, asr={"text": "captioned by the asr"})
    assert ports.captions_from_asr
    events = await collect(Turn(ports, options=TurnOptions(realtime=False)), utterance())
    assert [e.text for e in events if isinstance(e, Transcript)] == ["captioned by the asr"]
    kinds = [type(e) for e in events]
    assert kinds.index(Transcript) < kinds.index(ReplyDone)  # the caption comes before the reply is done
    assert events[-2].asr is not None


async def test_real_time_pacing_keeps_the_reply_near_the_lead():
    ports, _ = make_ports(speech={"piece_delay_s": 0.0, "first_delay_s": 0.0})
    turn = Turn(ports, options=TurnOptions(realtime=True, lead_s=0.2))
    loop = asyncio.get_running_loop()
    started, late = loop.time(), []
    async for event in turn.run(utterance()):
        if isinstance(event, AvatarChunk):
            late.append(event.audio.start - (loop.time() - started))
    assert late and max(late) <= 0.2 + 0.35  # never far ahead of real time (one animated piece over)


async def test_closing_the_turn_stops_the_model_stream():
    ports, backends = make_ports(speech={"piece_delay_s": 0.05})
    events = Turn(ports, options=TurnOptions(realtime=True)).run(utterance())
    async for event in events:
        if isinstance(event, AvatarChunk):
            break
    await events.aclose()
    await asyncio.sleep(0.05)
    assert backends["speech_to_speech"].streams_stopped_early == 1


class FailingModel:
    stage = "speech_to_speech"

    def __init__(self, kind):
        self.kind = kind

    async def converse(self, request):
        raise RemoteServiceError("Qwen-Omni", self.kind, "HTTP 401", "check DASHSCOPE_API_KEY")
        yield  # an async generator


async def test_a_remote_failure_ends_the_turn_with_its_kind():
    ports, backends = make_ports()
    ports.speech = FailingModel("unauthorised")
    events = await collect(Turn(ports, options=TurnOptions(realtime=False)), utterance())
    failed = [e for e in events if isinstance(e, TurnFailed)]
    assert failed == [TurnFailed("speech_to_speech", "Qwen-Omni refused the credentials (HTTP 401): check "
                                                     "DASHSCOPE_API_KEY", code="unauthorised")]


def test_a_speech_to_speech_config_replaces_llm_and_tts():
    cfg = parse_config({"stages": {"speech_to_speech": {"backend": "scripted"}}})
    assert cfg.speech_to_speech and set(cfg.stages) == {"vad", "end_of_turn", "speech_to_speech", "avatar"}
    with pytest.raises(ConfigError, match=r"stages\.tts: not used with stages\.speech_to_speech"):
        parse_config({"stages": {"speech_to_speech": {"backend": "scripted"}, "tts": {"backend": "hibari"}}})
    with pytest.raises(ConfigError, match=r"stages\.asr: .*captions: asr"):
        parse_config({"stages": {"speech_to_speech": {"backend": "scripted"}, "asr": {"backend": "scripted"}}})
    with pytest.raises(ConfigError, match=r"stages\.speech_to_speech\.backend: required; allowed: .*scripted"):
        parse_config({"stages": {"speech_to_speech": {}}})
    with_captions = parse_config({"stages": {"speech_to_speech": {"backend": "scripted", "captions": "asr"}}})
    assert "asr" in with_captions.stages and with_captions.stage("asr").backend == "faster_whisper"
