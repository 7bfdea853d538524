"""EndOfTurn's timing rules on scripted VAD probabilities with a fake turn model (no weights)."""

import asyncio

import numpy as np
import pytest

from avatarchat.backends.base import create_backend
from avatarchat.config import parse_stage
from avatarchat.end_of_turn import EndOfTurn, end_of_turn_for, find_turns
from avatarchat.segmenter import SpeechEnded, SpeechSegmenter, SpeechStarted

N = 512
DT = N / 16000  # 32 ms a chunk
SPEECH, SILENCE = 0.9, 0.05


class FakeTurn:
    """Answers a fixed completion probability and records the audio it was asked about."""

    sample_rate = 16000
    uses_model = True

    def __init__(self, answer):
        self.answer, self.calls = answer, []

    def completion(self, audio):
        self.calls.append(len(audio))
        return self.answer(len(self.calls)) if callable(self.answer) else self.answer


def run(probs, turn, **kwargs):
    """Feed probabilities with samples (chunk i holds the value i, to check what audio is kept)."""
    eot = EndOfTurn(turn=turn, **kwargs)
    out = []
    for i, p in enumerate(probs):
        out += [(i, ev) for ev in eot.feed(p, np.full(N, i, np.float32))]
    return out, eot


def ended(events):
    return [(i, ev) for i, ev in events if isinstance(ev, SpeechEnded)]


def test_complete_turn_ends_at_pause_ms():
    turn = FakeTurn(0.9)
    probs = [SILENCE] * 5 + [SPEECH] * 30 + [SILENCE] * 60
    events, eot = run(probs, turn, pause_ms=200, max_pause_ms=1600)
    (i, ev), = ended(events)
    # silence starts at chunk 35; 7 chunks (224 ms) are the first to reach 200 ms: decided on chunk 41
    assert i == 41 and ev.rule == "model" and not ev.forced
    assert ev.at_s == pytest.approx(35 * DT)
    assert ev.decision_delay_s == pytest.approx(7 * DT)
    assert ev.completion == pytest.approx(0.9)
    assert len(turn.calls) == 1 and not eot.in_speech


def test_model_is_asked_with_the_utterance_so_far_pause_included():
    turn = FakeTurn(0.9)
    probs = [SILENCE] * 20 + [SPEECH] * 30 + [SILENCE] * 20
    run(probs, turn, pause_ms=200, pre_roll_ms=200)
    # speech starts at chunk 20; pre-roll 200 ms = 3200 samples; asked on chunk 56 (inclusive)
    assert turn.calls == [(56 + 1) * N - (20 * N - 3200)]


def test_incomplete_turn_waits_for_max_pause_ms():
    turn = FakeTurn(0.1)
    probs = [SPEECH] * 30 + [SILENCE] * 80
    events, _ = run(probs, turn, pause_ms=200, max_pause_ms=1600)
    (i, ev), = ended(events)
    # 50 chunks = 1600 ms: decided on chunk 30 + 49
    assert i == 79 and ev.rule == "timeout"
    assert ev.at_s == pytest.approx(30 * DT)
    assert ev.decision_delay_s == pytest.approx(50 * DT)
    assert ev.completion == pytest.approx(0.1)
    assert len(turn.calls) == 1  # once per pause, not every chunk


def test_speech_resuming_after_an_incomplete_pause_continues_one_utterance():
    turn = FakeTurn(lambda call: 0.1 if call == 1 else 0.9)  # incomplete, then complete
    probs = [SILENCE] * 5 + [SPEECH] * 30 + [SILENCE] * 25 + [SPEECH] * 30 + [SILENCE] * 30
    events, _ = run(probs, turn, pause_ms=200, max_pause_ms=1600, pre_roll_ms=0, post_roll_ms=0)
    kinds = [type(ev) for _, ev in events]
    assert kinds == [SpeechStarted, SpeechEnded]  # one utterance across the 800 ms pause
    _, ev = events[-1]
    assert ev.rule == "model" and ev.at_s == pytest.approx(90 * DT)
    # its audio runs from the first speech chunk to the final pause: both parts and the pause
    assert ev.audio.start == pytest.approx(5 * DT)
    assert ev.audio.samples[0] == 5 and ev.audio.samples[-1] == 89
    assert len(ev.audio.samples) == (90 - 5) * N
    assert len(turn.calls) == 2


def test_speech_resuming_after_the_timeout_is_a_new_utterance():
    turn = FakeTurn(0.1)
    probs = [SPEECH] * 10 + [SILENCE] * 60 + [SPEECH] * 10 + [SILENCE] * 60
    events, _ = run(probs, turn, pause_ms=200, max_pause_ms=1000)
    assert [type(ev) for _, ev in events] == [SpeechStarted, SpeechEnded] * 2
    assert all(ev.rule == "timeout" for _, ev in ended(events))


def test_no_turn_model_is_the_plain_segmenter():
    rng = np.random.default_rng(1)
    probs = list(np.clip(np.repeat(rng.random(60), 4), 0, 1))
    a = SpeechSegmenter(end_ms=300)
    b = EndOfTurn(turn=None, end_ms=300)
    ea = [ev for p in probs for ev in a.feed(p)] + a.flush()
    eb = [ev for p in probs for ev in b.feed(p)] + b.flush()
    key = lambda e: (type(e), e.at_s, getattr(e, "rule", None), getattr(e, "forced", None),
                     getattr(e, "decision_delay_s", None))
    assert [key(e) for e in ea] == [key(e) for e in eb]
    assert any(isinstance(e, SpeechEnded) for e in ea)
    assert {e.rule for e in eb if isinstance(e, SpeechEnded)} <= {"vad", "forced"}


def test_vad_only_backend_keeps_vad_end_ms():
    vad_only = create_backend(parse_stage("test", "end_of_turn", {"backend": "vad_only"}))
    assert vad_only.completion(np.zeros(10, np.float32)) == 1.0

    class Vad:
        sample_rate, chunk_samples = 16000, N
        options = parse_stage("test", "vad", {"end_ms": 320}).options

    eot = end_of_turn_for(Vad(), vad_only)
    assert eot.turn is None and eot.end_ms == 320
    events = [ev for p in [SPEECH] * 10 + [SILENCE] * 20 for ev in eot.feed(p)]
    (ev,) = [e for e in events if isinstance(e, SpeechEnded)]
    assert ev.rule == "vad" and ev.decision_delay_s == pytest.approx(10 * DT)


def test_factory_reads_the_turn_options():
    class Vad:
        sample_rate, chunk_samples = 16000, N
        options = parse_stage("test", "vad", {}).options

    class Turn(FakeTurn):
        options = parse_stage("test", "end_of_turn", {"threshold": 0.7, "pause_ms": 300,
                                               "max_pause_ms": 1200}).options

    eot = end_of_turn_for(Vad(), Turn(0.5), max_utterance_s=30)
    assert (eot.turn_threshold, eot.pause_ms, eot.max_pause_ms) == (0.7, 300, 1200)
    assert eot.max_utterance == 30 * 16000


def test_turn_options_are_validated():
    from avatarchat.errors import ConfigError

    with pytest.raises(ConfigError, match="max_pause_ms"):
        parse_stage("test", "end_of_turn", {"pause_ms": 500, "max_pause_ms": 200})
    with pytest.raises(ConfigError, match="stages.end_of_turn.backend"):
        parse_stage("test", "end_of_turn", {"backend": "nope"})


def test_max_utterance_still_cuts():
    turn = FakeTurn(0.1)
    events, _ = run([SPEECH] * 40, turn, max_utterance_s=1.0)
    (i, ev), = ended(events)
    assert i == 31 and ev.forced and ev.rule == "forced" and ev.decision_delay_s == 0.0


def test_afeed_runs_only_the_asking_feed_in_a_thread():
    import threading

    main = threading.get_ident()
    threads = []

    class T(FakeTurn):
        def completion(self, audio):
            threads.append(threading.get_ident())
            return 0.9

    eot = EndOfTurn(turn=T(0.9), pause_ms=200)

    async def go():
        out = []
        for p in [SPEECH] * 10 + [SILENCE] * 10:
            assert eot.will_ask(p) == (p == SILENCE and eot.in_speech and len(out) == 1
                                       and eot._run_start is not None
                                       and eot.position + N - eot._run_start >= 3200)
            out += await eot.afeed(p, np.zeros(N, np.float32))
        return out

    events = asyncio.run(go())
    assert [type(e) for e in events] == [SpeechStarted, SpeechEnded]
    assert threads and threads[0] != main


def test_find_turns_with_fake_backends():
    class Stream:
        def probability(self, chunk):
            return SPEECH if np.abs(chunk).max() > 0.1 else SILENCE

    class Vad:
        sample_rate, chunk_samples = 16000, N
        options = parse_stage("test", "vad", {}).options

        def new_stream(self):
            return Stream()

    tone = lambda s: 0.5 * np.sin(np.arange(int(s * 16000)) * 0.1).astype(np.float32)
    sil = lambda s: np.zeros(int(s * 16000), np.float32)
    x = np.concatenate([sil(0.5), tone(1.0), sil(0.8), tone(1.0), sil(2.0)])
    spans = find_turns(x, 16000, Vad(), FakeTurn(lambda c: 0.1 if c == 1 else 0.9))
    assert len(spans) == 1 and spans[0].rule == "model"
    assert spans[0].start_s == pytest.approx(0.5, abs=0.04)
    assert spans[0].end_s == pytest.approx(3.3, abs=0.04)


def test_the_old_stage_name_says_what_it_is_now():
    from avatarchat.config import parse_config
    from avatarchat.errors import ConfigError

    with pytest.raises(ConfigError, match="stages.turn: renamed: the end-of-turn stage is stages.end_of_turn"):
        parse_config({"stages": {"turn": {"backend": "vad_only"}}})
