"""The speech-to-speech stage in Serve's local testing mode with a scripted model: the turn streamed
through the SpeechToSpeech and Avatar deployments by handle (as a Media replica calls them), and
closing the turn cancelling the model's call. (A second Gateway app cannot share this process with
test_graph_local.py's; tests/cluster/test_cloud_graph.py runs the whole graph on a real cluster.)"""

import asyncio

import numpy as np
import pytest
from ray import serve

import graph
from avatarchat.config import parse_config
from avatarchat.events import ReplyDone
from avatarchat.messages import AudioChunk, AvatarChunk, Transcript
from avatarchat.turn import Turn, TurnOptions
from deployments.avatar import AvatarDeployment
from deployments.handle_ports import HandlePorts
from deployments.speech_to_speech import SpeechToSpeechDeployment

pytestmark = pytest.mark.timeout(60)

ARGS = {"stages": {"speech_to_speech": {"backend": "scripted", "heard": "what time is it", "piece_delay_s": 0.1},
                   "avatar": {"backend": "scripted", "delay_s": 0.2}},
        "pacing": {"realtime": False}}


@pytest.fixture(scope="module")
def handles():
    # local testing mode: replicas in this process, no cluster (see test_graph_local.py)
    config = parse_config(ARGS)
    return {name: serve.run(cls.bind(config.stage(name)), name=f"s2s-{name}", route_prefix=None,
                            _local_testing_mode=True)
            for name, cls in (("speech_to_speech", SpeechToSpeechDeployment), ("avatar", AvatarDeployment))}


def ports_of(handles):
    return HandlePorts(None, None, None, handles["avatar"], speech_to_speech=handles["speech_to_speech"])


def test_the_graph_has_one_model_deployment_in_place_of_asr_llm_and_tts():
    # (build_app binds a Gateway, which cannot be pickled again in a process whose other Gateway
    # app has run: the stage list is what differs)
    names = {name: cls.func_or_class.__name__ for name, cls in graph.stage_deployments(parse_config(ARGS)).items()}
    assert names == {"speech_to_speech": "SpeechToSpeechDeployment", "avatar": "AvatarDeployment"}
    with_captions = {"stages": {"speech_to_speech": {"backend": "scripted", "captions": "asr"}}}
    assert list(graph.stage_deployments(parse_config(with_captions))) == ["asr", "speech_to_speech", "avatar"]
    assert list(graph.stage_deployments(parse_config({}))) == ["asr", "llm", "tts", "avatar"]


def spoken(seconds=1.0):
    t = np.arange(int(16000 * seconds)) / 16000
    return AudioChunk((0.3 * np.sin(2 * np.pi * 200 * t)).astype(np.float32), 16000)


async def test_a_spoken_turn_streams_through_the_one_model(handles):
    turn = Turn(ports_of(handles), options=TurnOptions(realtime=False))
    events = [e async for e in turn.run(spoken())]
    assert [e.text for e in events if isinstance(e, Transcript)] == ["what time is it"]
    done = next(e for e in events if isinstance(e, ReplyDone))
    assert done.text == "Hello there. I am a scripted model. How can I help?"
    frames = sum(len(e.frames) for e in events if isinstance(e, AvatarChunk))
    assert frames == pytest.approx(done.audio_s * 25, abs=2)
    stats = await handles["speech_to_speech"].call_stats.remote()
    assert stats["finished"] >= 1 and stats["active"] == 0


async def test_closing_a_turn_cancels_the_model_call(handles):
    model = handles["speech_to_speech"]
    before = await model.call_stats.remote()
    events = Turn(ports_of(handles), options=TurnOptions(realtime=True)).run("hi")
    async for event in events:
        if isinstance(event, AvatarChunk):
            break
    await events.aclose()
    for _ in range(100):
        after = await model.call_stats.remote()
        if after["active"] == 0:
            break
        await asyncio.sleep(0.05)
    assert after["active"] == 0 and after["cancelled"] == before["cancelled"] + 1, after
