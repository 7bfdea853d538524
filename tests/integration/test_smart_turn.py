"""Smart Turn v3.2 on its real ONNX weights: features equal to pipecat's, complete vs incomplete
sentences, and find_turns on a synthetic conversation.

Recordings: the embedded TTS (hibari) and the real human recording beckett.wav. An *incomplete*
sentence is a full sentence spoken by the TTS and cut where the fragment ends ("I want to go to the |
beach tomorrow morning."), so it carries mid-sentence intonation as a speaker who stops to think
does. (The same fragment synthesized on its own gets sentence-final intonation from the TTS, and the
model, which listens to prosody as well as words, mostly calls it complete: that is not what a
hesitating speaker sounds like, so it is not used here.)

Measured (2-core machine): complete 0.64-0.99 (the lowest is a beckett phrase), incomplete
0.01-0.25; the default threshold 0.5 separates them. One call: ~60 ms at best with 1 thread (5 ms of
it the features), 80-90 ms median with other load on the machine.
"""

import asyncio
import importlib.util
import time

import numpy as np
import pytest

from avatarchat.audio import resample
from avatarchat.backends.base import create_backend, package_dir
from avatarchat.backends.end_of_turn.smart_turn import WINDOW_SAMPLES, fit_window, log_mel
from avatarchat.config import parse_stage
from avatarchat.end_of_turn import find_turns
from avatarchat.errors import StageLoadError
from avatarchat.segmenter import find_speech

pytestmark = pytest.mark.models

RATE = 16000
THRESHOLD = 0.5
COMPLETE = ["What is the capital of France?", "Can you tell me a joke?",
            "I would like a cup of tea, please.", "Tell me about the weather today."]
# (full sentence, the incomplete fragment it is cut to)
INCOMPLETE = [("I want to go to the beach tomorrow morning.", "I want to go to the"),
              ("So what I was thinking is that we could leave early.", "So what I was thinking is that"),
              ("My favourite colour is um probably blue.", "My favourite colour is um"),
              ("I need to buy some bread and milk.", "I need to buy some"),
              ("And then we went home.", "And then"),
              ("What I really want to know is why the sky is blue.", "What I really want to know is")]


def silence(ms):
    return np.zeros(int(RATE * ms / 1000), np.float32)


@pytest.fixture(scope="module")
def say(hibari_tts):
    cache = {}

    def say(text):
        if text not in cache:
            async def go():
                return [c async for c in hibari_tts.synthesize(text)]
            parts = asyncio.run(go())
            x = resample(np.concatenate([p.samples for p in parts]), parts[0].sample_rate, RATE)
            cache[text] = trim(x)
        return cache[text]
    return say


def trim(x, level=0.01, margin_ms=20):
    """The voiced part of a TTS output (it pads its speech with ~0.3 s of near-silence), so the
    pauses a test puts between sentences are the pauses the VAD hears."""
    voiced = np.nonzero(np.abs(x) > level)[0]
    m = int(RATE * margin_ms / 1000)
    return x[max(0, voiced[0] - m):voiced[-1] + 1 + m]


def cut_at_fragment(full, fragment):
    """``full`` cut where ``fragment`` (the same words synthesized alone) ends: at the fragment's
    voiced length, moved to the quietest 10 ms within 150 ms of it (a word boundary)."""
    n = len(fragment)
    lo, hi = max(0, n - 2400), min(len(full) - 160, n + 2400)
    energy = [float(np.sum(full[i:i + 160] ** 2)) for i in range(lo, hi, 80)]
    return full[:lo + 80 * int(np.argmin(energy))]


def scored(turn, audio, pause_ms=200):
    """What EndOfTurn asks the model: pre-roll, the speech, then the pause so far."""
    return turn.completion(np.concatenate([silence(200), audio, silence(pause_ms)]))


def test_features_match_pipecats_own_extractor(say):
    """Our numpy log-mel equals pipecat's vendored numpy copy of transformers' WhisperFeatureExtractor
    (loaded from the wheel by file path: it needs only numpy) and faster-whisper's extractor."""
    path = package_dir("pipecat") / "audio" / "turn" / "smart_turn" / "_whisper_features.py"
    spec = importlib.util.spec_from_file_location("_pipecat_whisper_features", path)
    ref = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ref)
    from faster_whisper.feature_extractor import FeatureExtractor

    fw = FeatureExtractor(feature_size=80, chunk_length=8)
    rng = np.random.default_rng(0)
    for audio in (say("What is the capital of France?"), 0.1 * rng.standard_normal(200_000).astype(np.float32)):
        window = fit_window(audio)
        assert window.shape == (WINDOW_SAMPLES,)
        ours = log_mel(window)
        assert ours.shape == (80, 800) and ours.dtype == np.float32
        np.testing.assert_allclose(ours, ref.compute_whisper_log_mel_features(window, do_normalize=True),
                                   atol=1e-5)
        normalised = (window - window.mean()) / np.sqrt(window.var() + 1e-7)
        np.testing.assert_allclose(ours, fw(normalised, padding=0), atol=1e-4)


def test_window_keeps_the_last_8_s_and_pads_the_start():
    x = np.arange(1, 1001, dtype=np.float32)
    w = fit_window(x)
    assert w[-1000:].tolist() == x.tolist() and not w[:-1000].any()
    long = np.arange(WINDOW_SAMPLES + 5, dtype=np.float32)
    assert fit_window(long)[0] == 5


def test_complete_sentences_score_high_and_incomplete_low(smart_turn, say, speech_assets):
    from avatarchat.audio import read_wav

    complete = {text: scored(smart_turn, say(text)) for text in COMPLETE}
    # beckett.wav, real human speech: each of its phrases ("Ever tried." ...) is complete
    samples, rate = read_wav(speech_assets / "beckett.wav")
    x = resample(samples, rate, RATE)
    vad = create_backend(parse_stage("test", "vad", {}))
    for a, b in find_speech(x, RATE, vad, end_ms=200):
        complete[f"beckett {a:.1f}-{b:.1f} s"] = smart_turn.completion(
            x[max(0, int((a - 0.2) * RATE)):int((b + 0.2) * RATE)])
    incomplete = {frag: scored(smart_turn, cut_at_fragment(say(full), say(frag))) for full, frag in INCOMPLETE}

    for name, table in (("complete", complete), ("incomplete", incomplete)):
        for text, p in table.items():
            print(f"{name:10s} {p:.3f}  {text}")
    hits = sum(p >= THRESHOLD for p in complete.values())
    rejects = sum(p < THRESHOLD for p in incomplete.values())
    assert len(complete) >= 8
    assert hits >= 0.8 * len(complete), complete
    assert rejects >= 0.8 * len(incomplete), incomplete
    assert np.median(list(complete.values())) - np.median(list(incomplete.values())) > 0.5


def test_find_turns_answers_a_finished_sentence_fast_and_waits_through_a_thinking_pause(
        smart_turn, say, silero_vad):
    full, fragment = INCOMPLETE[1]
    first = cut_at_fragment(say(full), say(fragment))
    rest = say(full)[len(first):]
    question = say(COMPLETE[0])
    conversation = np.concatenate([silence(500), question, silence(400),  # complete + short pause
                                   first, silence(800), rest,               # fragment + thinking pause
                                   silence(2500)])
    b_start = (500 + 400) / 1000 + len(question) / RATE
    b_end = b_start + (len(first) + len(rest)) / RATE + 0.8

    turns = find_turns(conversation, RATE, silero_vad, smart_turn)
    for t in turns:
        print(t)
    assert len(turns) == 2, turns
    a, b = turns
    # the question ends at the short pause: the model decided after pause_ms (200 ms, 7 chunks)
    assert a.rule == "model" and a.decision_delay_s < 0.3
    assert abs(a.end_s - (0.5 + len(question) / RATE)) < 0.25
    # the fragment, the 800 ms pause and the rest are ONE utterance
    assert abs(b.start_s - b_start) < 0.3 and abs(b.end_s - b_end) < 0.3
    assert b.rule in ("model", "timeout")

    # VAD alone (600 ms of silence) gets both wrong: the 400 ms pause does not end the question and
    # the 800 ms thinking pause cuts the second sentence in two.
    vad_turns = find_turns(conversation, RATE, silero_vad, None)
    print("vad only:", vad_turns)
    assert [t.rule for t in vad_turns] == ["vad"] * len(vad_turns)
    assert all(abs(t.end_s - a.end_s) > 0.1 for t in vad_turns)
    assert any(b_start + 0.1 < t.end_s < b_end - 0.5 for t in vad_turns)


def test_time_per_call(smart_turn, say):
    audio = np.concatenate([silence(200), say(COMPLETE[1]), silence(200)])
    for _ in range(3):
        smart_turn.completion(audio)
    calls, feats = [], []
    for _ in range(10):
        t0 = time.perf_counter()
        log_mel(fit_window(audio))
        t1 = time.perf_counter()
        smart_turn.completion(audio)
        feats.append(t1 - t0)
        calls.append(time.perf_counter() - t1)
    print(f"smart_turn: {np.median(calls) * 1000:.1f} ms per call (median of 10, min "
          f"{min(calls) * 1000:.1f}), of which features {np.median(feats) * 1000:.1f} ms; "
          f"threads={smart_turn.options.threads}")


def test_missing_model_file_names_the_stage(tmp_path):
    with pytest.raises(StageLoadError, match="turn") as err:
        create_backend(parse_stage("test", "end_of_turn", {"model_path": str(tmp_path / "none.onnx")}))
    assert "Smart Turn" in str(err.value)
