"""Face motion: idle life is deterministic and alive; speech opens the mouth with the sound."""

import numpy as np
import pytest

from avatarchat.avatar.motion import SpeechMouth, SpeechMouthOptions, frame_range, idle_motion
from avatarchat.messages import AudioChunk, FaceMotion

FPS = 25
SR = 16000


def syllables(seconds=3.0, rate=4.0, formants=(700.0, 1200.0), seed=0):
    """A voiced buzz (150 Hz harmonics shaped by two formants) gated on and off like syllables."""
    t = np.arange(int(seconds * SR)) / SR
    f0 = 150.0
    harmonics = np.arange(1, int(5000 / f0))
    amp = sum(1.0 / (1.0 + ((harmonics * f0 - f) / 120.0) ** 2) for f in formants)
    buzz = (amp[:, None] * np.sin(2 * np.pi * f0 * harmonics[:, None] * t[None, :])).sum(axis=0)
    envelope = np.clip(np.sin(2 * np.pi * rate * t), 0, None) ** 2
    rng = np.random.default_rng(seed)
    x = buzz / np.abs(buzz).max() * envelope * 0.3 + rng.normal(0, 1e-4, len(t))
    return x.astype(np.float32)


def frame_rms(x, first, n, start=0.0):
    out = []
    for k in range(first, first + n):
        a, b = int(round((k / FPS - start) * SR)), int(round(((k + 1) / FPS - start) * SR))
        seg = x[max(a, 0):max(b, 0)]
        out.append(float(np.sqrt(np.mean(seg ** 2))) if len(seg) else 0.0)
    return np.array(out)


def test_frame_range_is_half_open():
    assert list(frame_range(0.0, 0.2, 25)) == [0, 1, 2, 3, 4]
    assert list(frame_range(0.2, 0.4, 25)) == [5, 6, 7, 8, 9]
    assert list(frame_range(0.21, 0.22, 25)) == []
    assert list(frame_range(0.1 + 0.2, 0.5, 25)) == [8, 9, 10, 11, 12]  # 0.30000000000000004


def test_idle_motion_is_deterministic_and_seeded():
    assert idle_motion(12.34, seed=7) == idle_motion(12.34, seed=7)
    assert idle_motion(12.34, seed=7) != idle_motion(12.34, seed=8)
    assert idle_motion(3.0).mouth_open == 0.0


def test_idle_blinks_every_few_seconds():
    t = np.arange(60 * FPS) / FPS
    blink = np.array([idle_motion(x, seed=3).blink for x in t])
    closed = blink >= 0.99
    starts = np.flatnonzero(closed[1:] & ~closed[:-1]) + 1
    assert 10 <= len(starts) <= 30, len(starts)  # one per 2..6 s
    gaps = np.diff(starts) / FPS
    assert gaps.min() >= 1.8 and gaps.max() <= 6.2
    # each blink is short: the eye is not fully open for at most ~200 ms (5 frames)
    moving = blink > 0.0
    run_lengths = np.diff(np.flatnonzero(np.diff(np.r_[0, moving.astype(int), 0])))[::2]
    assert run_lengths.max() <= 5


def test_idle_head_moves_a_little():
    t = np.arange(60 * FPS) / FPS
    m = [idle_motion(x, seed=1) for x in t]
    for name in ("head_yaw", "head_pitch", "head_roll", "breath"):
        v = np.array([getattr(f, name) for f in m])
        assert v.std() > 0.2, name
        assert np.abs(v).max() <= 3.0, name
        assert np.abs(np.diff(v)).max() < 0.2, name  # smooth: no jumps between frames


def test_silence_keeps_the_mouth_exactly_closed():
    mouth = SpeechMouth(FPS)
    for audio in (np.zeros(2 * SR, np.float32),
                  np.random.default_rng(0).normal(0, 3e-4, 2 * SR).astype(np.float32)):  # hiss
        track = mouth.track(AudioChunk(audio, SR, 0.52))
        assert len(track) == 50 and track.first_frame == 13
        assert set(track.open.tolist()) == {0.0}
        assert set(track.width.tolist()) == {0.0}
        assert set(track.brow.tolist()) == {0.0}


def test_mouth_follows_the_loudness():
    x = syllables(rate=2.5)  # 200 ms pauses between syllables
    track = SpeechMouth(FPS).track(AudioChunk(x, SR, 0.0))
    rms = frame_rms(x, track.first_frame, len(track))
    assert np.corrcoef(track.open, rms)[0, 1] > 0.6
    assert track.open.max() > 0.7
    assert track.open[5:].min() < 0.1  # it closes between syllables
    assert np.abs(np.diff(track.open)).max() <= SpeechMouthOptions().max_step + 1e-9


def test_spread_and_rounded_vowels():
    mouth = SpeechMouth(FPS)
    ee = mouth.track(AudioChunk(syllables(formants=(300.0, 2300.0, 3000.0)), SR))
    oo = mouth.track(AudioChunk(syllables(formants=(300.0, 800.0)), SR))
    open_ee, open_oo = ee.open > 0.3, oo.open > 0.3
    assert ee.width[open_ee].mean() > 0.2
    assert oo.width[open_oo].mean() < -0.2


def test_smoothing_continues_from_the_previous_frame():
    mouth = SpeechMouth(FPS)
    silence = AudioChunk(np.zeros(SR, np.float32), SR, 2.0)
    track = mouth.track(silence, previous=FaceMotion(mouth_open=0.8, mouth_width=0.5))
    assert 0.3 < track.open[0] < 0.8  # closes from where the last sentence left it
    assert np.all(np.diff(track.open) <= 0)
    assert track.open[-1] == 0.0 and track.width[-1] == 0.0
    fresh = mouth.track(silence)
    assert fresh.open[0] == 0.0


@pytest.mark.parametrize("rate", [8000, 22050, 24000, 44100])
def test_any_sample_rate(rate):
    x = np.zeros(rate, np.float32)
    n = rate // 2 - rate // 4
    x[rate // 4: rate // 2] = 0.2 * np.sin(np.arange(n) * 2 * np.pi * 200 / rate)
    track = SpeechMouth(FPS).track(AudioChunk(x, rate, 0.0))
    assert len(track) == FPS
    assert track.open.max() > 0.5 and track.open[0] == 0.0
