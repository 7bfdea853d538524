"""The real graph under `serve run serve_config.yaml` on a real Ray cluster, driven through the
client as a user would. All cluster tests share one service start-up (tests/cluster/conftest.py)."""

import json
import subprocess
import sys
import time

import av
import httpx
import numpy as np
import pytest

from avatarchat.audio import encode_wav
from avatarchat.avatar.pack import AvatarPack
from avatarchat.client.turn_client import TurnClient
from avatarchat.messages import AudioChunk
from avatarchat.local_cluster import ROOT
from tests.helpers import mouth_change, wer

pytestmark = [pytest.mark.cluster, pytest.mark.models]

TIMING_KEYS = ("speech_end_in_input", "asr", "llm_first_token", "llm_total", "tts_first_audio",
               "avatar_first_frame", "input_to_first_frame")


def test_cli_turns_a_recorded_utterance_into_a_reply_video(service, speech_assets, tmp_path):
    out, timings = tmp_path / "reply.mp4", tmp_path / "reply.json"
    run = subprocess.run(
        [sys.executable, "-m", "avatarchat.client.cli", "--server", service.url, "turn",
         "--wav", str(speech_assets / "beckett.wav"), "--out", str(out), "--timings", str(timings)],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    report = json.loads(timings.read_text())
    assert wer("Ever tried. Ever failed. No matter. Try again. Fail again. Fail better.",
               report["user_text"]) <= 0.2, report["user_text"]
    assert len(report["reply_text"].split()) >= 2
    for key in TIMING_KEYS:
        assert report["server"][key] is not None and report["server"][key] > 0, key
    assert report["client"]["first_media_s"] > 0

    with av.open(str(out)) as c:
        kinds = {s.type: s.codec_context.name for s in c.streams}
        assert kinds == {"video": "h264", "audio": "aac"}
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    reply_s = report["server"]["reply_audio"]
    assert len(frames) == pytest.approx(reply_s * 25, abs=2)
    # The portrait visibly speaks: the mouth region changes over the reply.
    x0, y0, x1, y1 = AvatarPack.load("astronaut").regions["mouth_box"]
    mouth = np.stack([f[y0:y1, x0:x1].astype(np.float32) for f in frames])
    assert mouth_change(mouth).mean() > 1.5  # frame to frame: the idle sway alone moves it less


def test_the_reply_is_speech_that_says_its_text(service, whisper_asr):
    result = TurnClient(service.url).turn(text="What colour is the sky on a clear day?", realtime=False)
    assert result.error is None and result.reply_text
    audio = result.audio()
    assert np.sqrt(np.mean(audio ** 2)) > 0.01, "the reply must be audible"
    import asyncio
    heard = asyncio.run(whisper_asr.transcribe(AudioChunk(audio, result.sample_rate)))
    assert wer(result.reply_text, heard.text) <= 0.35, (result.reply_text, heard.text)


def test_hanging_up_mid_reply_cancels_every_stage(service):
    before = httpx.get(f"{service.url}/v1/stages").json()
    with httpx.stream("POST", f"{service.url}/v1/turns", timeout=120,
                      json={"text": "Tell me a long story about a dragon and a knight."}) as r:
        for line in r.iter_lines():
            event = json.loads(line)
            if event["type"] == "transcript" and event["role"] == "avatar":
                break  # hang up on the first word of the reply, while the LLM is still writing
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        after = httpx.get(f"{service.url}/v1/stages").json()
        if all(after[s]["active"] == 0 for s in after):
            break
        time.sleep(0.2)
    assert all(after[s]["active"] == 0 for s in after), after
    assert after["llm"]["cancelled"] == before["llm"]["cancelled"] + 1, after
    # The service still answers after the hang-up.
    assert TurnClient(service.url).turn(text="Hello!", realtime=False).reply_text


@pytest.mark.parametrize("body,ctype,status", [
    (b"RIFF-not-really-a-wav", "audio/wav", 400),
    (b"{}", "text/plain", 415),
    (b"{not json", "application/json", 400),
    (json.dumps({"text": "hi", "bogus": 1}).encode(), "application/json", 400),
    (encode_wav(np.zeros(16000, np.float32), 16000), "audio/wav", 422),
])
def test_bad_input_gets_a_clear_error_and_the_service_carries_on(service, body, ctype, status):
    r = httpx.post(f"{service.url}/v1/turns", content=body, headers={"content-type": ctype}, timeout=30)
    assert r.status_code == status and r.json()["error"]
    assert httpx.get(f"{service.url}/healthz").status_code == 200


def test_an_oversized_body_is_refused(service):
    big = b"\0" * 8_000_001
    r = httpx.post(f"{service.url}/v1/turns", content=big, headers={"content-type": "audio/wav"}, timeout=30)
    assert r.status_code == 413 and "limit" in r.json()["error"]
