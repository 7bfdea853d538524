"""The turn orchestrator with scripted stages: ordering, streaming, pacing, cancellation, failure."""

import asyncio
import time

import numpy as np
import pytest

from avatarchat.backends.base import create_backend
from avatarchat.config import parse_config
from avatarchat.events import ReplyDone, StateChanged, TurnFailed
from avatarchat.messages import AudioChunk, AvatarChunk, TextDelta, Transcript, TurnTimings
from avatarchat.ports import LocalPorts
from avatarchat.turn import Turn, TurnOptions

SCRIPTED = {"asr": {"backend": "scripted"}, "llm": {"backend": "scripted"},
            "tts": {"backend": "scripted"}, "avatar": {"backend": "scripted"}}


def make_ports(**overrides):
    stages = {k: dict(v) for k, v in SCRIPTED.items()}
    for stage, opts in overrides.items():
        stages[stage].update(opts)
    cfg = parse_config({"stages": {**stages, "vad": {"backend": "silero"}}})
    backends = {s: create_backend(cfg.stage(s)) for s in ("asr", "llm", "tts", "avatar")}
    return LocalPorts(**backends), backends


def utterance(seconds=1.0):
    return AudioChunk(np.zeros(int(16000 * seconds), np.float32), 16000)


async def collect(turn, user):
    return [e async for e in turn.run(user)]


async def test_events_arrive_in_order_and_frames_are_continuous():
    ports, _ = make_ports()
    events = await collect(Turn(ports, options=TurnOptions(realtime=False)), utterance())
    kinds = [type(e) for e in events]
    assert kinds[0] is StateChanged and events[0].state == "thinking"
    assert kinds[1] is Transcript and events[1].text == "Hello there."
    assert kinds[-3:] == [ReplyDone, TurnTimings, StateChanged]
    assert events[-1].state == "listening"
    chunks = [e for e in events if isinstance(e, AvatarChunk)]
    frame_ids = [c.first_frame + i for c in chunks for i in range(len(c.frames))]
    assert frame_ids == list(range(len(frame_ids))), "frames must be gapless and in order"
    total_audio = sum(c.audio.duration for c in chunks)
    assert len(frame_ids) == pytest.approx(total_audio * 25, abs=1)
    done = next(e for e in events if isinstance(e, ReplyDone))
    assert done.text == "Hello there. It is nice to meet you. How can I help?"
    timings = events[-2]
    assert timings.asr > 0 and timings.llm_first_token > 0 and timings.sentences == 3


async def test_first_sentence_is_spoken_before_the_llm_finishes():
    ports, _ = make_ports(llm={"token_delay_s": 0.05})
    events = await collect(Turn(ports, options=TurnOptions(realtime=False)), "hi")
    first_media = next(i for i, e in enumerate(events) if isinstance(e, AvatarChunk))
    last_delta = max(i for i, e in enumerate(events) if isinstance(e, TextDelta))
    assert first_media < last_delta


async def test_realtime_pacing_holds_media_to_the_playout_clock():
    ports, _ = make_ports()
    t0 = time.monotonic()
    arrivals = []
    async for e in Turn(ports, options=TurnOptions(realtime=True, lead_s=0.3)).run("hi"):
        if isinstance(e, AvatarChunk):
            arrivals.append((time.monotonic() - t0, e.audio.start))
    first_at = arrivals[0][0]
    for at, start in arrivals:
        # never released more than lead_s (plus scheduling slack) ahead of playout
        assert start - (at - first_at) <= 0.3 + 0.05
    assert arrivals[-1][1] > 1.0, "the scripted reply should be seconds long"


async def test_closing_the_turn_stops_the_llm():
    ports, backends = make_ports(llm={"token_delay_s": 0.05})
    turn = Turn(ports, options=TurnOptions(realtime=False))
    gen = turn.run("hi")
    async for e in gen:
        if isinstance(e, TextDelta):
            break
    await gen.aclose()
    produced = backends["llm"].tokens_generated
    await asyncio.sleep(0.3)
    assert backends["llm"].tokens_generated == produced
    assert backends["llm"].streams_stopped_early == 1


async def test_a_failing_stage_ends_the_turn_with_its_name():
    ports, _ = make_ports(asr={"fail": True})
    events = await collect(Turn(ports), utterance())
    assert isinstance(events[-1], TurnFailed) and events[-1].stage == "asr"
    assert "scripted ASR failure" in events[-1].reason
