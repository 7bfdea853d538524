"""The whole deployment graph in Serve's local testing mode, with scripted stages."""

import asyncio

import numpy as np
import pytest
from ray import serve

import graph
from avatarchat.errors import ConfigError
from avatarchat.turn_request import TurnRequest
from avatarchat.messages import AudioChunk

SCRIPTED_ARGS = {
    "stages": {"asr": {"backend": "scripted", "text": "What is your name?"},
               "llm": {"backend": "scripted", "reply": "My name is Ava. You asked: {user}"},
               "tts": {"backend": "scripted"},
               "avatar": {"backend": "scripted", "delay_s": 0.2}},  # still producing at hang-up
    "pacing": {"realtime": False},
}


@pytest.fixture(scope="module")
def gateway():
    # Local testing mode runs the replicas in this process and starts no cluster, so there is
    # nothing to shut down. serve.shutdown() here would connect to the machine's most recent Ray
    # cluster (someone else's, or a dead one it then waits minutes for) and shut its apps down.
    handle = serve.run(graph.build_app(SCRIPTED_ARGS), _local_testing_mode=True)
    return handle.options(stream=True)


async def events_of(gateway, request):
    return [e async for e in gateway.run_turn.remote(request)]


async def test_a_text_turn_streams_through_every_stage(gateway):
    events = await events_of(gateway, TurnRequest(audio=None, text="hi there"))
    types = [e["type"] for e in events]
    assert types[0] == "state" and types[-1] == "state"
    reply = next(e for e in events if e["type"] == "transcript" and e["role"] == "avatar" and e["final"])
    assert reply["text"] == "My name is Ava. You asked: hi there"
    media = [e for e in events if e["type"] == "media"]
    assert media and all(e["frames"] for e in media[:-1])
    timings = next(e for e in events if e["type"] == "timings")
    assert timings["sentences"] == 2 and timings["input_to_first_frame"] > 0


async def test_audio_without_speech_is_refused_with_a_reason(gateway):
    silence = AudioChunk(np.zeros(16000, np.float32), 16000)
    events = await events_of(gateway, TurnRequest(audio=silence, text=None))
    assert events == [{"type": "error", "stage": "input", "reason": "no speech found in the audio"}]


def test_bad_config_fails_before_any_deployment_starts():
    with pytest.raises(ConfigError, match=r"stages\.llm\.backend: unknown backend 'gpt5'; allowed: "):
        graph.build_app({"stages": {"llm": {"backend": "gpt5"}}})


async def test_closing_a_turn_cancels_the_stage_calls_in_flight(gateway):
    stats = gateway.options(stream=False).stage_stats
    before = await stats.remote()
    request = TurnRequest(audio=None, text="hi", realtime=True)  # paced: later chunks are held back
    stream = gateway.run_turn.remote(request)
    async for event in stream:
        if event["type"] == "media":
            break
    stream.cancel()
    for _ in range(100):
        after = await stats.remote()
        if all(after[s]["active"] == 0 for s in after):
            break
        await asyncio.sleep(0.05)
    assert all(after[s]["active"] == 0 for s in after), after
    # The avatar was still producing the first sentence's chunks: its call was cancelled.
    assert after["avatar"]["cancelled"] == before["avatar"]["cancelled"] + 1, after
    # Pacing held the speaking task on sentence 1, so sentences 2 and 3 were never synthesised.
    assert after["tts"]["started"] == before["tts"]["started"] + 1, after
