"""SpeechSegmenter hysteresis on scripted probabilities, and find_speech with a fake VAD."""

import numpy as np
import pytest

from avatarchat.audio import resample
from avatarchat.segmenter import SpeechEnded, SpeechSegmenter, SpeechStarted, find_speech

DT = 512 / 16000  # 32 ms a chunk


def run(probs, **kwargs):
    """Feed probabilities; return [(chunk index, event)]."""
    seg = SpeechSegmenter(**kwargs)
    out = []
    for i, p in enumerate(probs):
        out += [(i, ev) for ev in seg.feed(p)]
    return out, seg


def test_short_blip_does_not_start_speech():
    events, seg = run([0.0] * 10 + [0.9] * 2 + [0.0] * 30)  # 64 ms < start_ms 96
    assert events == [] and not seg.in_speech


def test_speech_starts_after_start_ms_at_the_runs_first_chunk():
    events, _ = run([0.0] * 10 + [0.9] * 3)  # 96 ms
    assert len(events) == 1
    i, ev = events[0]
    assert i == 12 and isinstance(ev, SpeechStarted)
    assert ev.at_s == pytest.approx(10 * DT)


def test_a_silent_chunk_breaks_the_start_run_but_an_uncertain_one_does_not():
    events, _ = run([0.9, 0.9, 0.1, 0.9, 0.9])
    assert events == []
    events, _ = run([0.9, 0.9, 0.4, 0.9])  # 0.4 is between neg_threshold and threshold
    assert [type(e) for _, e in events] == [SpeechStarted]
    assert events[0][1].at_s == 0.0


def test_short_pause_does_not_end_speech():
    probs = [0.9] * 20 + [0.05] * 10 + [0.9] * 20  # a 320 ms pause, end_ms 600
    events, seg = run(probs)
    assert [type(e) for _, e in events] == [SpeechStarted]
    assert seg.in_speech


def test_trailing_silence_ends_speech_at_the_right_time():
    probs = [0.0] * 5 + [0.9] * 20 + [0.05] * 40
    events, seg = run(probs, end_ms=600)
    kinds = [(i, type(e)) for i, e in events]
    # 19 silent chunks (608 ms) are the first to reach 600 ms: decided on chunk 25 + 18
    assert kinds == [(7, SpeechStarted), (43, SpeechEnded)]
    ended = events[1][1]
    assert ended.at_s == pytest.approx(25 * DT)  # where the silence began
    assert not ended.forced and not seg.in_speech


def test_uncertain_chunks_neither_start_nor_break_silence():
    probs = [0.9] * 10 + [0.1] + [0.4] * 30
    events, _ = run(probs)
    assert [type(e) for _, e in events] == [SpeechStarted, SpeechEnded]
    assert events[1][1].at_s == pytest.approx(10 * DT)


def test_utterance_audio_has_pre_and_post_roll():
    n = 512
    seg = SpeechSegmenter(pre_roll_ms=200, post_roll_ms=200)
    probs = [0.0] * 20 + [0.9] * 10 + [0.0] * 25
    ended = []
    for i, p in enumerate(probs):
        chunk = np.arange(i * n, (i + 1) * n, dtype=np.float32)  # sample value = its position
        ended += [e for e in seg.feed(p, chunk) if isinstance(e, SpeechEnded)]
    assert len(ended) == 1
    audio = ended[0].audio
    speech_start, speech_end = 20 * n, 30 * n
    assert audio.sample_rate == 16000
    assert audio.start == pytest.approx((speech_start - 3200) / 16000)
    assert audio.samples[0] == speech_start - 3200
    assert audio.samples[-1] == speech_end + 3200 - 1
    assert np.all(np.diff(audio.samples) == 1)  # contiguous


def test_pre_roll_is_clipped_at_the_stream_start_and_flush_ends_an_open_utterance():
    seg = SpeechSegmenter()
    for i in range(10):
        seg.feed(0.9, np.full(512, i, np.float32))
    (ended,) = seg.flush()
    assert ended.forced and ended.at_s == pytest.approx(10 * DT)
    assert ended.audio.start == 0.0 and len(ended.audio.samples) == 10 * 512
    assert seg.flush() == []


def test_max_utterance_forces_an_end():
    events, _ = run([0.9] * 100, max_utterance_s=1.0)
    ends = [e for _, e in events if isinstance(e, SpeechEnded)]
    assert ends and ends[0].forced and ends[0].at_s == pytest.approx(32 * DT)


def test_invalid_thresholds_are_rejected():
    with pytest.raises(ValueError):
        SpeechSegmenter(threshold=0.3, neg_threshold=0.5)


class _EnergyStream:
    def probability(self, chunk):
        assert len(chunk) == 512
        return 0.95 if np.sqrt(np.mean(chunk ** 2)) > 0.05 else 0.02


class _EnergyVAD:
    """A stand-in VAD backend: loud chunks are speech."""
    sample_rate, chunk_samples = 16000, 512
    options = None

    def new_stream(self):
        return _EnergyStream()


def test_find_speech_resamples_and_reports_segments():
    rate = 48000
    t = np.arange(int(rate * 5.0)) / rate
    x = np.zeros_like(t, dtype=np.float32)
    for a, b in [(0.5, 1.5), (1.8, 2.4), (3.5, 4.2)]:  # the 300 ms gap does not split
        sel = (t >= a) & (t < b)
        x[sel] = 0.3 * np.sin(2 * np.pi * 220 * t[sel])
    segs = find_speech(x, rate, _EnergyVAD())
    assert len(segs) == 2
    (s1, e1), (s2, e2) = segs
    assert s1 == pytest.approx(0.5, abs=0.04) and e1 == pytest.approx(2.4, abs=0.04)
    assert s2 == pytest.approx(3.5, abs=0.04) and e2 == pytest.approx(4.2, abs=0.04)
    assert find_speech(np.zeros(rate * 2, np.float32), rate, _EnergyVAD()) == []
    # speech running to the end of the recording ends there
    segs = find_speech(resample(x[: int(rate * 4.0)], rate, 16000), 16000, _EnergyVAD(), end_ms=300)
    assert segs[-1][1] == pytest.approx(4.0, abs=0.04)
