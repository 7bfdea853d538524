"""The cloud backends in the whole Serve graph on a real Ray cluster: `serve run` of the shipped
serve_config.omni.yaml (Qwen-Omni speech to speech, realtime API) and serve_config.cloud.yaml (Qwen
on Bailian + CosyVoice on Bailian; Edge TTS as the voices' fallback here) as two applications, their
service URLs pointed at local stand-ins of each service's wire protocol (tests/standins/), which the
real SDKs inside the replicas talk to. Live WebRTC sessions speak to the speech-to-speech app
(barge-in and the avatar included); POST /voices/v1/turns drives the cascade. Protocol tests: no
real account is reached (docs/backends.md, "Cloud services")."""

import asyncio
import time

import httpx
import numpy as np
import pytest
import yaml

from avatarchat.avatar.pack import AvatarPack
from avatarchat.client.avatar_client import AvatarClient
from avatarchat.client.turn_client import TurnClient
from avatarchat.local_cluster import ROOT, ServeCluster
from tests.cluster.conftest import SESSIONS
from tests.standins.dashscope_tts import DashScopeTTSStandIn
from tests.standins.edge_tts_service import EdgeTTSStandIn
from tests.standins.omni_realtime import OmniRealtimeStandin
from tests.standins.openai_omni import OpenAIOmniStandin

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]

KEY = "sk-standin-key"
LOOPBACK = ["127.0.0.1"]
MOUTH_BOX = AvatarPack.load("astronaut").regions["mouth_box"]
# long enough (0.06 s a character: ~7 s) to talk over it
LONG_REPLY = ("Once upon a time a knight rode out to find a dragon, and on the way he met a fox who "
              "knew every path through the forest.")
FAST = {"attempts": 2, "backoff_s": 0.1, "timeout_s": 3}
# the speech-to-speech app waits longer on a stall: the other session's answer comes well before
SLOW = {"attempts": 2, "backoff_s": 0.1, "timeout_s": 8}


def app(path: str, name: str, prefix: str, stages: dict) -> dict:
    """The shipped config's application, renamed, its stages updated by ``stages``."""
    doc = yaml.safe_load((ROOT / path).read_text())
    application = doc["applications"][0]
    application.update(name=name, route_prefix=prefix)
    for stage, changes in stages.items():
        application["args"]["stages"][stage].update(changes)
    application["args"].setdefault("sessions", {}).update(SESSIONS)
    return doc


@pytest.fixture(scope="module")
def standins():
    # the realtime model speaks about as fast as its audio plays (0.3 s a word), as a real one does:
    # a reply is still being generated when the user talks over it
    servers = {"realtime": OmniRealtimeStandin(key=KEY, reply=LONG_REPLY, pace_s=0.3),
               "chat": OpenAIOmniStandin(key=KEY, reply="Hello from the chat stand-in."),
               "bailian": DashScopeTTSStandIn(), "edge": EdgeTTSStandIn()}
    for server in servers.values():
        server.start()
    yield servers
    for server in servers.values():
        server.stop()


@pytest.fixture(scope="module")
def service(standins):
    omni = app("serve_config.omni.yaml", "avatar", "/", {"speech_to_speech": {
        "realtime_url": standins["realtime"].url, "base_url": standins["chat"].url, "retry": SLOW}})
    voices = app("serve_config.cloud.yaml", "voices", "/voices", {
        "llm": {"base_url": standins["chat"].url, "retry": FAST},
        "tts": {"url": standins["bailian"].url, "retry": FAST,
                "fallback": {"backend": "edge_tts", "url": standins["edge"].url, "retry": FAST}}})
    voices_app = voices["applications"][0]
    voices_app["args"]["stages"]["asr"] = {"backend": "scripted"}  # typed turns only: no ASR work
    omni["applications"].append(voices_app)
    cluster = ServeCluster(omni, num_cpus=4, extra_env={"DASHSCOPE_API_KEY": KEY}).start()
    try:
        wait_for(f"{cluster.url}/voices/healthz", 180)  # start() waits for the first app only
        yield cluster
    finally:
        cluster.stop()


def wait_for(url: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise TimeoutError(f"{url} not up after {timeout_s} s")


def new_client(service) -> AvatarClient:
    return AvatarClient(service.url, host_addresses=LOOPBACK, mouth_box=MOUTH_BOX)


def is_reply_done(e):
    return e["type"] == "transcript" and e["role"] == "avatar" and e["final"]


async def test_a_spoken_question_is_answered_by_the_speech_to_speech_model(service, standins, beckett):
    samples, rate, _ = beckett
    realtime = standins["realtime"]
    before = len(realtime.requests)
    client = new_client(service)
    await client.connect()
    try:
        await client.wait_for_event(lambda e: e == {"type": "state", "state": "listening"}, 10)
        client.say(samples[:int(1.6 * rate)], rate)  # "Ever tried. Ever failed."
        user = await client.wait_for_event(lambda e: e["type"] == "transcript" and e["role"] == "user", 60)
        assert user["text"] == realtime.transcript  # the model's own transcript of what it heard
        done = await client.wait_for_event(is_reply_done, 60)
        assert done["text"] == LONG_REPLY
        # what the SDK inside the replica sent: the key, the user's audio (16 kHz PCM16), no server VAD
        assert len(realtime.requests) > before
        sent = realtime.requests[-1]  # the answered turn (a phrase cut by resumed speech is merged into it)
        assert sent["auth"] == f"Bearer {KEY}" and sent["audio_bytes"] > 0.5 * 16000 * 2
        assert sent["session"]["turn_detection"] is None and sent["commits"] == 1
        # the reply is heard, and the avatar's mouth moves with it
        r = client.received
        audio = r.audio_samples()
        assert float(np.sqrt(np.mean(audio ** 2))) > 0.01
        times = np.array(r.video_times[:len(r.mouth)])
        mouth = np.array(r.mouth, dtype=np.float32)
        speaking = r.event_times[r.events.index({"type": "state", "state": "speaking"}, r.events.index(user))]
        resting, replying = mouth[times < speaking - 0.5], mouth[times > speaking + 0.3]
        assert len(resting) > 10 and len(replying) > 25
        # the stand-in's voice is a steady tone: the mouth opens for it and stays apart from its rest
        assert float(np.abs(replying.mean(axis=0) - resting.mean(axis=0)).mean()) > 3.0
        timings = await client.wait_for_event(lambda e: e["type"] == "timings", 10)
        assert timings["voice_to_voice"] > 0 and timings["tts_first_audio"] > 0
    finally:
        await client.close()


async def test_talking_over_the_model_stops_it_and_cancels_its_response(service, standins, beckett):
    samples, rate, _ = beckett
    realtime = standins["realtime"]
    client = new_client(service)
    await client.connect()
    try:
        client.say(samples[:int(1.6 * rate)], rate)
        await client.wait_for_event(lambda e: e == {"type": "state", "state": "speaking"}, 60)
        talking = len(realtime.requests) - 1  # its record (records are snapshots: read again below)
        await asyncio.sleep(1.0)
        client.say(samples[:int(1.6 * rate)], rate)
        stop = await client.wait_for_event(lambda e: e["type"] == "interruption", 30)
        assert stop["cause"] == "voice" and stop["speech_onset_to_silence"] < 0.5
        at = client.received.event_times[client.received.events.index(stop)]
        # the cut reply's response was cancelled at the service and its connection closed
        for _ in range(100):
            record = realtime.requests[talking]
            if record["closed_at"] is not None:
                break
            await asyncio.sleep(0.1)
        assert record["closed_at"] is not None and record["finished_at"] is None, (
            talking, [{k: r[k] for k in ("connected_at", "commits", "responses", "cancels", "closed_at", "finished_at")}
                      for r in realtime.requests], [(e, round(t, 3)) for e, t in zip(client.received.events, client.received.event_times) if e["type"] != "timings"])
        # the new question is answered, and the avatar went quiet in between
        r = client.received
        await client.wait_for_event(is_reply_done, 60, start=r.events.index(stop))
        quiet = [a for a, t in zip(r.audio, r.audio_times) if at + 0.2 < t < at + 0.8]
        assert quiet and float(np.sqrt(np.mean(np.concatenate(quiet) ** 2))) < 0.003
    finally:
        await client.close()


async def test_a_stalled_service_times_out_one_session_and_leaves_the_other_alone(service, standins, beckett):
    samples, rate, _ = beckett
    stalled, other = new_client(service), new_client(service)
    await asyncio.gather(stalled.connect(), other.connect())
    try:
        # typed text goes through the chat API; "[stall]" makes the stand-in never answer it
        stalled.send_text("[stall] are you there?")
        await stalled.wait_for_event(lambda e: e == {"type": "state", "state": "thinking"}, 10)
        other.say(samples[:int(1.6 * rate)], rate)
        speaking = await other.wait_for_event(lambda e: e == {"type": "state", "state": "speaking"}, 60)
        speaking_at = other.received.event_times[other.received.events.index(speaking)]
        error = await stalled.wait_for_event(lambda e: e["type"] == "error", 60)
        error_at = stalled.received.event_times[stalled.received.events.index(error)]
        assert error["stage"] == "speech_to_speech" and error["code"] == "timeout", error
        assert speaking_at < error_at  # the other session was answered while this one waited
        await other.wait_for_event(is_reply_done, 60)
        # the stalled session carries on: its next question is answered
        stalled.send_text("hello again")
        done = await stalled.wait_for_event(is_reply_done, 60, start=stalled.received.events.index(error))
        assert done["text"] == "Hello from the chat stand-in."
    finally:
        await asyncio.gather(stalled.close(), other.close())


async def test_a_refused_key_is_a_clear_error_and_the_session_carries_on(service, standins, beckett):
    samples, rate, _ = beckett
    realtime = standins["realtime"]
    client = new_client(service)
    await client.connect()
    try:
        realtime.mode = "unauthorised"
        client.say(samples[:int(1.6 * rate)], rate)
        error = await client.wait_for_event(lambda e: e["type"] == "error", 60)
        assert error["stage"] == "speech_to_speech" and error["code"] == "unauthorised"
        assert "DASHSCOPE_API_KEY" in error["reason"] and KEY not in error["reason"]
        realtime.mode = "ok"
        client.say(samples[:int(1.6 * rate)], rate)
        await client.wait_for_event(is_reply_done, 60, start=client.received.events.index(error))
    finally:
        realtime.mode = "ok"
        await client.close()


def voices_turn(service, text: str):
    return TurnClient(f"{service.url}/voices").turn(text=text, realtime=False)


def test_the_cloud_cascade_speaks_through_bailian_and_falls_back_to_edge(service, standins):
    chat, bailian, edge = standins["chat"], standins["bailian"], standins["edge"]
    # Qwen (the chat stand-in) writes the reply, Bailian's CosyVoice speaks it
    result = voices_turn(service, "Say hello.")
    assert result.error is None and result.reply_text == "Hello from the chat stand-in."
    assert float(np.sqrt(np.mean(result.audio() ** 2))) > 0.01
    spoken = bailian.requests[-1]
    assert spoken["authorization"] == f"Bearer {KEY}" and spoken["model"] == "cosyvoice-v2"
    assert "".join(spoken["texts"]).strip() == "Hello from the chat stand-in."
    assert chat.requests[-1]["auth"] == f"Bearer {KEY}"
    # Bailian refuses the key: Edge TTS (the fallback) speaks, and the turn does not fail
    before_edge = len(edge.requests)
    bailian.mode = "unauthorised"
    try:
        result = voices_turn(service, "Say hello.")
        assert result.error is None and float(np.sqrt(np.mean(result.audio() ** 2))) > 0.01
        assert len(edge.requests) > before_edge
        # both voices fail: the turn ends with the tts stage's error and its kind
        edge.mode = "unauthorised"
        result = voices_turn(service, "Say hello.")
        assert result.error is not None and result.error["stage"] == "tts"
        assert result.error["code"] == "unauthorised", result.error
    finally:
        bailian.mode = edge.mode = "ok"


def test_the_llm_falls_back_to_the_embedded_model_when_the_cloud_llm_fails(service, standins):
    chat = standins["chat"]
    chat.mode = "unauthorised"
    try:
        result = voices_turn(service, "What is the capital of France?")
    finally:
        chat.mode = "ok"
    assert result.error is None  # SmolLM2 on llama.cpp answered instead
    assert result.reply_text and result.reply_text != "Hello from the chat stand-in."


def test_the_graph_has_one_model_deployment_in_place_of_asr_llm_and_tts(service):
    stages = httpx.get(f"{service.url}/v1/stages", timeout=30).json()
    assert set(stages) == {"speech_to_speech", "avatar"}
    assert stages["speech_to_speech"]["backend"] == "qwen_omni"
    voices = httpx.get(f"{service.url}/voices/v1/stages", timeout=30).json()
    assert set(voices) == {"asr", "llm", "tts", "avatar"}
    assert (voices["tts"]["backend"], voices["tts"]["fallback"]) == ("cosyvoice_bailian", "edge_tts")
