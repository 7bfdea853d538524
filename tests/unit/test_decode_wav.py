"""decode_wav reads what users upload: any bytes give samples or a BadInput with a reason, nothing
else (another exception would answer POST /v1/turns with a 500)."""

import random
import struct

import numpy as np
import pytest

from avatarchat.audio import decode_wav, encode_wav
from avatarchat.errors import BadInput

SAMPLES = (np.sin(np.arange(800) / 5.0) * 0.5).astype(np.float32)  # 50 ms at 16 kHz
WAV = encode_wav(SAMPLES, 16000)  # 44-byte header, then 1600 bytes of 16-bit mono


def wav(data: bytes, *, fmt_tag=1, channels=1, rate=16000, bits=16, data_size=None, fmt_first=True) -> bytes:
    """A WAV file written by hand, so its header can say anything."""
    block = channels * ((bits + 7) // 8)
    fmt = b"fmt " + struct.pack("<LHHLLHH", 16, fmt_tag, channels, rate, rate * block, block, bits)
    body = b"data" + struct.pack("<L", len(data) if data_size is None else data_size) + data
    chunks = fmt + body if fmt_first else body + fmt
    return b"RIFF" + struct.pack("<L", 4 + len(chunks)) + b"WAVE" + chunks


def refused(data: bytes) -> str:
    with pytest.raises(BadInput) as err:
        decode_wav(data)
    assert err.value.status == 400 and err.value.reason.strip()
    return err.value.reason


def test_a_valid_wav_decodes():
    samples, rate = decode_wav(WAV)
    assert rate == 16000 and samples.dtype == np.float32
    assert np.abs(samples - SAMPLES).max() < 1e-3
    stereo = np.stack([SAMPLES, SAMPLES], axis=1)
    pcm = (stereo * 32767).astype("<i2").tobytes()
    assert np.abs(decode_wav(wav(pcm, channels=2))[0] - SAMPLES).max() < 1e-3


def test_a_wav_cut_mid_sample_names_the_cut():
    reason = refused(WAV[:-1])  # the header still claims 800 samples
    assert "ends mid-sample" in reason and "1599 bytes" in reason and "2-byte samples" in reason


def test_a_header_claiming_more_frames_than_present_reads_what_is_there():
    samples, _ = decode_wav(WAV[:-2])  # cut between samples: the speech is still good
    assert len(samples) == 799
    samples, _ = decode_wav(wav(b"\x00\x01" * 100, data_size=0xFFFFFFF0))  # a huge frame count
    assert len(samples) == 100


@pytest.mark.parametrize("data,words", [
    (b"", "header"),
    (b"hello, this is not a WAV file at all", "RIFF"),
    (WAV[:30], "header"),                                     # cut inside the fmt chunk
    (wav(b"\x00\x00" * 100, channels=0), "channels"),
    (wav(b"\x00" * 300, bits=24), "24 bits"),
    (wav(b"\x00" * 300, bits=64), "64 bits"),
    (wav(b"\x00\x00" * 100, fmt_tag=3, bits=32), "format"),  # IEEE float, not PCM
    (wav(b"\x00\x00" * 100, rate=0), "sample rate"),
    (wav(b""), "no audio"),
    (wav(b"\x00\x00" * 100, fmt_first=False), "data chunk before fmt chunk"),
    (WAV[:12], "missing"),                                     # RIFF/WAVE and nothing else
    (b"RIFF" + WAV[4:8] + b"AVI " + WAV[12:], "WAVE"),
])
def test_broken_wavs_are_refused_with_a_reason(data, words):
    assert words in refused(data)


def test_any_cut_or_mutation_of_a_wav_gives_samples_or_bad_input():
    rng = random.Random(0)
    stereo8 = wav(bytes(range(256)) * 2, channels=2, bits=8)
    cases = []
    for good in (WAV, stereo8):
        cases += [good[:n] for n in range(len(good) + 1)]          # every truncation
        for pos in range(48):                                       # each header byte, set to...
            for value in (0x00, 0x01, 0x03, 0x7F, 0x80, 0xFF):
                cases.append(good[:pos] + bytes([value]) + good[pos + 1:])
        for _ in range(500):                                        # and random damage
            b = bytearray(good[:rng.randrange(len(good) + 1)])
            for _ in range(rng.randrange(1, 6)):
                if b:
                    b[rng.randrange(min(len(b), 60))] = rng.randrange(256)
            cases.append(bytes(b))
    for data in cases:
        try:
            samples, rate = decode_wav(data)
        except BadInput as err:
            assert err.reason.strip(), data
        else:
            assert samples.dtype == np.float32 and 8000 <= rate <= 192000
