import numpy as np

from avatarchat.audio import trim_silence

SR = 24000


def test_silence_around_speech_is_cut_to_what_is_kept():
    speech = 0.3 * np.sin(np.arange(SR // 2) * 0.2).astype(np.float32)  # 0.5 s of sound
    x = np.concatenate([np.zeros(int(0.3 * SR), np.float32), speech, np.zeros(int(0.45 * SR), np.float32)])
    y = trim_silence(x, SR, keep_lead_s=0.06, keep_tail_s=0.2)
    assert abs(len(y) / SR - (0.06 + 0.5 + 0.2)) < 0.02
    lead = np.flatnonzero(np.abs(y) > 0.01)[0] / SR
    assert 0.05 <= lead <= 0.07


def test_nothing_is_cut_when_there_is_less_silence_than_kept_or_only_silence():
    speech = 0.3 * np.ones(SR // 4, np.float32)
    x = np.concatenate([np.zeros(SR // 50, np.float32), speech])
    assert len(trim_silence(x, SR, 0.06, 0.2)) == len(x)
    quiet = np.zeros(SR, np.float32)
    assert len(trim_silence(quiet, SR, 0.06, 0.2)) == SR
