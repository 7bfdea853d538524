"""The measuring functions of load_tests/bench_latency.py on synthetic signals with known answers."""

import numpy as np
import pytest

from load_tests.measures.latency import received_windows, silence_onset, sound_onset, sound_span
from load_tests.measures.lipsync import envelope_lag

RATE = 48000


def tone(seconds: float, amp: float = 0.3, rate: int = RATE) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (amp * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


def pieces_of(x: np.ndarray, t_first: float, piece: int = 960, jitter: float = 0.0, seed: int = 0):
    """Split a stream into 20 ms pieces; each arrives (the time of its last sample) on a real-time
    clock whose sample 0 is at ``t_first``, late by up to ``jitter`` s."""
    rng = np.random.default_rng(seed)
    out, times = [], []
    for i in range(0, len(x), piece):
        out.append(x[i:i + piece])
        times.append(t_first + (i + len(out[-1]) - 1) / RATE + rng.uniform(0, jitter))
    return out, times


def test_sound_span_finds_the_padded_utterance():
    rate = 16000
    x = np.concatenate([np.zeros(8000), tone(1.0, rate=rate), np.zeros(4000)]).astype(np.float32)
    first, end = sound_span(x, rate)
    assert first == 8000 and end == 24000
    assert sound_span(np.zeros(rate, np.float32), rate) is None


def test_voice_to_voice_is_from_the_end_of_input_to_the_first_received_sound():
    # the user's audio ended at t=10.0; the avatar's stream (silence, then a reply from 11.234 s)
    # starts arriving at t=9.0
    end_of_input, reply_at, t_first = 10.0, 11.234, 9.0
    lead = int(round((reply_at - t_first) * RATE))
    x = np.concatenate([np.zeros(lead), tone(1.0), np.zeros(RATE)]).astype(np.float32)
    rms, times = received_windows(*pieces_of(x, t_first))
    onset = sound_onset(rms, times, end_of_input)
    assert onset - end_of_input == pytest.approx(1.234, abs=0.0105)  # within one 10 ms window


def test_arrival_time_is_for_the_last_sample_of_a_piece():
    # one piece of 100 ms arriving at t=5.0: its first sample is timed 5.0 - 0.1 + 1/RATE,
    # sample 2400 (where the tone starts) 5.0 - 2399/RATE
    piece = np.concatenate([np.zeros(2400), tone(0.05)]).astype(np.float32)
    rms, times = received_windows([piece], [5.0])
    assert times[0] == pytest.approx(5.0 - (len(piece) - 1) / RATE)
    assert sound_onset(rms, times, 0.0) == pytest.approx(5.0 - (len(piece) - 1 - 2400) / RATE, abs=1e-9)


def test_interruption_latency_is_from_barge_in_start_to_the_silence():
    # the avatar speaks from t=2.0 (stream starts at 1.0) with 60 ms gaps between words, then is cut
    # at t=5.37; the barge-in started at t=5.0
    t_first, barge_at, cut_at = 1.0, 5.0, 5.37
    words = np.concatenate([np.concatenate([tone(0.24), np.zeros(int(0.06 * RATE))]) for _ in range(20)])
    x = np.concatenate([np.zeros(RATE), words]).astype(np.float32)
    x[int((cut_at - t_first) * RATE):] = 0.0
    rms, times = received_windows(*pieces_of(x, t_first, jitter=0.004))
    stop = silence_onset(rms, times, barge_at)
    assert stop - barge_at == pytest.approx(0.37, abs=0.015)
    # the 60 ms gaps are not taken for silence, and a 300 ms pause is not taken for the stop
    x2 = np.concatenate([np.zeros(RATE), tone(4.3), np.zeros(int(0.3 * RATE)), tone(1.0),
                         np.zeros(RATE)]).astype(np.float32)
    rms2, times2 = received_windows(*pieces_of(x2, t_first))
    assert silence_onset(rms2, times2, barge_at) == pytest.approx(1.0 + 1.0 + 4.3 + 0.3 + 1.0, abs=0.011)
    assert silence_onset(rms2, times2, barge_at, hold_s=0.1) == pytest.approx(1.0 + 1.0 + 4.3, abs=0.011)


@pytest.mark.parametrize("shift", [0.0, 0.04, -0.06, 0.12])
def test_av_lag_finds_a_known_shift_of_the_mouth_behind_the_sound(shift):
    rng = np.random.default_rng(1)
    # a syllable-like envelope, sampled as 20 ms audio pieces; mouth motion at 25 fps is the same
    # envelope delayed by ``shift`` (positive: the mouth is late)
    fine_t = np.arange(0, 12, 0.001)
    env = np.convolve(rng.random(len(fine_t)) ** 8, np.hanning(120), mode="same")
    audio_t = np.arange(0.02, 12, 0.02)
    video_t = np.arange(0.0, 12, 0.04) + 0.013
    audio_env = np.interp(audio_t, fine_t, env)
    mouth = np.interp(video_t - shift, fine_t, env)
    lag, corr = envelope_lag(audio_t, audio_env, video_t, mouth)
    assert lag == pytest.approx(shift, abs=0.011)
    assert corr > 0.8


def test_av_lag_of_a_short_reply_is_not_drowned_by_the_slow_head_sway():
    """A 0.8 s reply in 15 s of stream; the mouth measure also carries the idle sway (slow, as
    large as the speech): the high-pass keeps the correlation, unfiltered it falls."""
    t = np.arange(0, 15, 0.04)
    speech = (t > 10) & (t < 10.8)
    env = np.where(speech, 0.5 + 0.4 * np.abs(np.sin(2 * np.pi * 3 * t)), 0.0)
    sway = 0.6 * np.sin(2 * np.pi * 0.15 * t) + 0.4 * np.sin(2 * np.pi * 0.31 * t + 1.0)
    mouth = np.interp(t - 0.08, t, env) + sway
    lag, corr = envelope_lag(t, env, t, mouth)
    assert lag == pytest.approx(0.08, abs=0.011) and corr > 0.7
    assert envelope_lag(t, env, t, mouth, highpass_s=0)[1] < corr - 0.2


def test_the_microphone_records_when_each_queued_sample_went_out():
    import asyncio

    from avatarchat.client.avatar_client import FRAME_SAMPLES, Microphone

    async def run():
        mic = Microphone()
        mic.play(np.zeros(16000, np.float32), 16000)  # 1 s at 16 kHz: 50 frames at 48 kHz
        assert mic.sent_at(0, 16000) is None
        for _ in range(3):
            await mic.recv()
        mic.stop()
        return mic

    mic = asyncio.run(run())
    assert mic.plays == [0] and len(mic.sent_times) == 3
    # sample 1000 at 16 kHz is sample 3000 at 48 kHz: the 4th frame (not sent yet); sample 400 is
    # sample 1200, 240 samples into the 2nd frame
    assert mic.sent_at(1000, 16000) is None
    assert mic.sent_at(400, 16000) == pytest.approx(mic.sent_times[1] + (1200 - FRAME_SAMPLES) / 48000)
    assert np.all(np.diff(mic.sent_times) >= 0)  # (no timed assertions: see docs/performance.md)


def test_frames_while_the_voice_is_heard():
    """sounding(): a frame counts while loud audio arrives near it, not in a pause or after."""
    from types import SimpleNamespace

    from load_tests.measures.lipsync import sounding

    t_audio = np.arange(0, 3, 0.02)                         # 20 ms pieces for 3 s
    loud = (t_audio < 1.0) | ((t_audio >= 2.0) & (t_audio < 2.5))  # voice, a pause, voice, silence
    pieces = [np.full(960, 0.2 if v else 0.001, np.float32) for v in loud]
    received = SimpleNamespace(audio=pieces, audio_times=list(t_audio))
    frames = np.array([0.5, 1.2, 1.5, 2.2, 2.8, 5.0])
    assert sounding(received, frames).tolist() == [True, False, False, True, False, False]
    assert not sounding(SimpleNamespace(audio=[], audio_times=[]), frames).any()
