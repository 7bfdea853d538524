import numpy as np

from avatarchat.audio import trim_lead_silence

SR = 24000


def test_silence_before_speech_is_cut_to_what_is_kept_and_the_rest_stays():
    speech = 0.3 * np.sin(np.arange(SR // 2) * 0.2).astype(np.float32)  # 0.5 s of sound
    tail = np.zeros(int(0.45 * SR), np.float32)
    x = np.concatenate([np.zeros(int(0.3 * SR), np.float32), speech, tail])
    y = trim_lead_silence(x, SR, keep_s=0.04)
    assert abs(len(y) / SR - (0.04 + 0.5 + 0.45)) < 0.015
    lead = np.flatnonzero(np.abs(y) > 0.01)[0] / SR
    assert 0.03 <= lead <= 0.05
    assert np.array_equal(y[-len(tail) - len(speech):], np.concatenate([speech, tail]))


def test_nothing_is_cut_when_there_is_less_silence_than_kept_or_only_silence():
    speech = 0.3 * np.ones(SR // 4, np.float32)
    x = np.concatenate([np.zeros(SR // 50, np.float32), speech])
    assert len(trim_lead_silence(x, SR, 0.04)) == len(x)
    quiet = np.zeros(SR, np.float32)
    assert len(trim_lead_silence(quiet, SR, 0.04)) == SR
