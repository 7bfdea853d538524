"""The turn orchestrator with scripted stages: ordering, streaming, pacing, cancellation, failure."""

import asyncio
import contextlib
import logging
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


# What Ray's raylet says when a replica's process is killed (one line of ~500 characters).
OOM_ADVICE = ("The actor is dead because its worker process has died. Worker exit type: SYSTEM_ERROR Worker exit "
              "detail: Worker unexpectedly exits with a connection error code 2. End of file. There are some "
              "potential root causes. (1) The process is killed by SIGKILL by OOM killer due to high memory usage. "
              "(2) ray stop --force is called. (3) The worker is crashed unexpectedly due to SIGSEGV or other "
              "unexpected errors.")


def actor_died():
    """An ActorDiedError as Ray builds it when a replica's process died (from the raylet's context)."""
    from ray.core.generated.common_pb2 import ActorDiedErrorContext
    from ray.exceptions import ActorDiedError

    return ActorDiedError(ActorDiedErrorContext(
        error_message=OOM_ADVICE, class_name="ServeReplica:avatar-chat:LLM", actor_id=bytes(range(16)),
        pid=4242, name="SERVE_REPLICA::avatar-chat#LLM#abc", ray_namespace="serve", node_ip_address="10.0.0.7"))


def replica_error(kind: str) -> Exception:
    from ray.exceptions import ActorUnavailableError, RayActorError, RayTaskError

    if kind == "ActorDiedError":
        return actor_died()
    if kind == "ActorUnavailableError":
        return ActorUnavailableError(OOM_ADVICE, None)
    if kind == "RayActorError":
        return RayActorError(actor_id="ab" * 16, error_msg=OOM_ADVICE)
    # a replica whose own call to another actor found it dead: the error comes back wrapped
    return RayTaskError("stream", f"Traceback ...\n{OOM_ADVICE}", RayActorError("ab" * 16, OOM_ADVICE),
                        pid=4242, ip="10.0.0.7")


class FailingLLM(LocalPorts):
    """Scripted stages whose LLM raises ``error`` after its first words."""

    def __init__(self, error, **backends):
        super().__init__(**backends)
        self.error = error

    def generate(self, request):
        async def stream():
            yield TextDelta("Well, ")
            raise self.error
        return stream()


def failing_llm(error) -> FailingLLM:
    _, backends = make_ports()
    return FailingLLM(error, **backends)


@contextlib.contextmanager
def serve_log(caplog):
    """The ray.serve logger's records in caplog, whether or not Ray stops them propagating to the root."""
    logger = logging.getLogger("ray.serve")
    logger.addHandler(caplog.handler)
    caplog.set_level(logging.WARNING, logger="ray.serve")
    try:
        yield
    finally:
        logger.removeHandler(caplog.handler)


@pytest.mark.parametrize("kind", ["ActorDiedError", "RayActorError", "ActorUnavailableError",
                                  "RayTaskError(RayActorError)"])
async def test_a_replica_that_stopped_is_told_briefly_and_logged_in_full(caplog, kind):
    error = replica_error(kind)
    with serve_log(caplog):
        events = await collect(Turn(failing_llm(error), options=TurnOptions(realtime=False)), "hi")
    failed = events[-1]
    assert isinstance(failed, TurnFailed) and failed.stage == "llm"
    assert failed.reason == "the llm stage's replica stopped while answering; try again in a few seconds"
    assert "OOM" not in failed.reason
    records = list({id(r): r for r in caplog.records if r.name == "ray.serve"}.values())  # root saw it too?
    assert len(records) == 1, [r.getMessage() for r in records]
    record = records[0]
    assert record.levelno == logging.WARNING and "llm" in record.getMessage()
    assert "OOM killer" in caplog.text  # the whole error, for the operator


async def test_an_error_raised_in_a_replica_gives_its_own_message_short():
    from ray.exceptions import RayTaskError

    remote = RayTaskError("stream", 'Traceback (most recent call last):\n  File "llm.py", line 9\n'
                          "ValueError: the prompt is longer than the model's context", ValueError(
                              "the prompt is longer than the model's context"))
    events = await collect(Turn(failing_llm(remote), options=TurnOptions(realtime=False)), "hi")
    assert events[-1].reason == "the prompt is longer than the model's context"
    events = await collect(Turn(failing_llm(RuntimeError("x" * 1000)), options=TurnOptions(realtime=False)), "hi")
    assert len(events[-1].reason) <= 200 and events[-1].reason.endswith("...")


async def test_a_chinese_turn_keeps_every_character_and_follows_the_language():
    """The text path of a Chinese turn, exactly: the language the ASR heard reaches the LLM as an
    instruction and the TTS as its voice choice; the emotion tag comes off in full-width brackets;
    clauses are cut at CJK punctuation and no character is lost."""
    reply = "【开心】你好！今天天气很好我们一起去，公园散步好不好？我们还可以喝茶。"
    ports, backends = make_ports(asr={"text": "你好，请介绍一下你自己。", "language": "zh", "emotion": "HAPPY"},
                                 llm={"reply": reply})
    events = await collect(Turn(ports, options=TurnOptions(realtime=False)), utterance())
    heard = next(e for e in events if isinstance(e, Transcript))
    assert (heard.text, heard.language, heard.emotion) == ("你好，请介绍一下你自己。", "zh", "HAPPY")
    system = backends["llm"].requests[-1][0]["content"]
    assert system.endswith("The user speaks Chinese (简体中文): always answer in Chinese (简体中文).")
    assert backends["llm"].requests[-1][-1] == {"role": "user", "content": "你好，请介绍一下你自己。"}
    spoken = list(backends["tts"].spoken)
    # the first chunk starts the voice; later clauses wait for their sentence to end
    assert spoken == [("你好！", "zh"), ("今天天气很好我们一起去，公园散步好不好？", "zh"), ("我们还可以喝茶。", "zh")]
    done = next(e for e in events if isinstance(e, ReplyDone))
    assert done.text.replace(" ", "") == reply.removeprefix("【开心】")
    deltas = "".join(e.text for e in events if isinstance(e, TextDelta))
    assert deltas == reply.removeprefix("【开心】")
    assert set(backends["avatar"].emotions) == {"happy"}  # the LLM's tag, over the ASR's HAPPY


async def test_an_english_turn_keeps_the_cached_system_prompt():
    ports, backends = make_ports(asr={"language": "en"})
    await collect(Turn(ports, options=TurnOptions(realtime=False)), utterance())
    assert backends["llm"].requests[-1][0]["content"] == backends["llm"].options.system_prompt
    assert {lang for _, lang in backends["tts"].spoken} == {"en"}


async def test_typed_chinese_text_is_answered_in_chinese():
    ports, backends = make_ports()
    await collect(Turn(ports, options=TurnOptions(realtime=False)), "你好")
    assert "answer in Chinese" in backends["llm"].requests[-1][0]["content"]


async def test_the_emotion_the_asr_heard_reaches_the_avatar():
    ports, backends = make_ports(asr={"emotion": "SAD"})  # SenseVoice's tag name; the reply has none
    await collect(Turn(ports, options=TurnOptions(realtime=False)), utterance())
    assert set(backends["avatar"].emotions) == {"sad"}
