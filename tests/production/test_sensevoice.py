"""The sensevoice ASR backend through the real funasr library, on a random-weight model of
SenseVoiceSmall's architecture (load_tests/random_models/sensevoice.py, tiny size).

Random weights give random text, so what is checked is what the backend controls: the tags of
recorded real outputs are read exactly; a transcript is the parse of what funasr emits for the same
audio; options reach the model; concurrent calls share model calls and each caller gets its own
result; cancellation and failures never strand a caller; missing weights fail before funasr is
touched, naming the path and the fetch command."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import shutil
import socket
import sys
import threading
from pathlib import Path
from unittest import mock

import numpy as np
import pytest

from avatarchat.audio import resample
from avatarchat.avatar import expression
from avatarchat.backends.asr import sensevoice
from avatarchat.backends.asr.sensevoice import (
    REQUIRED, SenseVoiceASR, SenseVoiceOutput, parse_output, to_transcript,
)
from avatarchat.backends.base import create_backend
from avatarchat.config import StageConfig
from avatarchat.errors import StageLoadError
from avatarchat.messages import AudioChunk, Transcript
from avatarchat.models import MissingWeights
from load_tests.random_models import sensevoice as random_sensevoice

pytestmark = pytest.mark.timeout(180)  # the first test also builds the model and imports funasr

FIXTURES = json.loads((Path(__file__).parent / "fixtures" / "sensevoice_outputs.json")
                      .read_text(encoding="utf-8"))["outputs"]
SR = 16000


@contextlib.contextmanager
def no_network():
    def refuse(*args, **kwargs):
        raise AssertionError(f"network use: {args!r}")

    with mock.patch.object(socket.socket, "connect", refuse), \
            mock.patch.object(socket, "create_connection", refuse), \
            mock.patch.object(socket, "getaddrinfo", refuse):
        yield


def clip(i: int, rate: int = SR) -> np.ndarray:
    """Utterance-like test audio: a tone and noise, different for each ``i``."""
    rng = np.random.default_rng(i)
    n = int(rate * rng.uniform(0.4, 2.5))
    t = np.arange(n) / rate
    tone = np.sin(2 * np.pi * rng.uniform(100, 1500) * t) * rng.uniform(0.05, 0.5)
    return (tone + rng.standard_normal(n) * rng.uniform(0.01, 0.3)).astype(np.float32)


CLIPS = [clip(i) for i in range(6)]


def load(model_dir: Path, **options) -> SenseVoiceASR:
    backend = SenseVoiceASR(SenseVoiceASR.Options(model_dir=model_dir, cpu_threads=1, **options))
    backend.load()
    return backend


def raw_text(backend: SenseVoiceASR, samples: np.ndarray) -> str:
    """What funasr itself emits for one utterance with the backend's options (called directly,
    never while a batch runs: AutoModel is not thread-safe)."""
    o = backend.options
    return backend._model.generate(input=samples, cache={}, language=o.language,
                                   use_itn=o.use_itn)[0]["text"]


def expected(backend: SenseVoiceASR, samples: np.ndarray) -> Transcript:
    return to_transcript(parse_output(raw_text(backend, samples)), backend.forced_language)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return random_sensevoice.build(tmp_path_factory.mktemp("sensevoice") / "tiny", "tiny")


@pytest.fixture(scope="module")
def backend(model_dir):
    with no_network():  # loading reads local files only: no hub, no update check
        b = load(model_dir, batch_max=8)
    yield b
    b.close()


@pytest.fixture
def counted(backend, monkeypatch):
    """The sizes of the inputs of each generate call the backend makes from now on."""
    sizes: list[int] = []
    original = backend._model.generate

    def generate(*args, **kwargs):
        sizes.append(len(kwargs["input"]))
        return original(*args, **kwargs)

    monkeypatch.setattr(backend._model, "generate", generate)
    return sizes


# --- tags of real outputs -------------------------------------------------------------------------

@pytest.mark.parametrize("case", FIXTURES, ids=[c["raw"][:40] for c in FIXTURES])
def test_recorded_outputs_parse_to_their_fields(case):
    assert parse_output(case["raw"]) == SenseVoiceOutput(**case["expected"])


def test_recorded_outputs_make_transcripts_the_pipeline_understands():
    by_raw = {c["raw"]: c["expected"] for c in FIXTURES}
    for raw, fields in by_raw.items():
        t = to_transcript(parse_output(raw))
        assert t.text == fields["text"] and "<|" not in t.text
        assert t.language == (None if fields["language"] == "nospeech" else fields["language"])
        assert t.emotion == fields["emotion"] and t.event == fields["event"]
        assert t.emotion is None or expression.normalise(t.emotion) in expression.EMOTIONS
    # the non-Latin scripts come through byte for byte
    assert to_transcript(parse_output(FIXTURES[0]["raw"])).text == "欢迎大家来体验达摩院推出的语音识别模型。"


@pytest.mark.parametrize("raw, want", [
    ("", SenseVoiceOutput("")),
    ("hello there", SenseVoiceOutput("hello there")),
    ("<|en|>  hello   there ", SenseVoiceOutput("hello there", language="en")),
    ("<|HAPPY|>", SenseVoiceOutput("", emotion="happy")),
    # unknown tags are dropped, not reported; a broken one is text
    ("<|xx|><|ko|><|FOO|>안녕", SenseVoiceOutput("안녕", language="ko")),
    ("<|en hello", SenseVoiceOutput("<|en hello")),
    # two segments joined (VAD): the first tag of each kind wins, the texts are joined
    ("<|en|><|NEUTRAL|><|Speech|><|woitn|>hello <|ko|><|HAPPY|><|BGM|><|withitn|>안녕하세요",
     SenseVoiceOutput("hello 안녕하세요", "en", "neutral", "Speech", False)),
    ("<|zh|><|SAD|><|Speech|><|withitn|>你好。<|zh|><|SAD|><|Speech|><|withitn|>再见。",
     SenseVoiceOutput("你好。再见。", "zh", "sad", "Speech", True)),
])
def test_odd_outputs(raw, want):
    assert parse_output(raw) == want


def test_the_language_told_stands_in_for_a_missing_tag():
    assert to_transcript(SenseVoiceOutput("hi"), "ja").language == "ja"
    assert to_transcript(SenseVoiceOutput("hi", language="en"), "ja").language == "en"
    assert to_transcript(SenseVoiceOutput("", language="nospeech"), "ja").language is None


# --- the backend through funasr -------------------------------------------------------------------

def test_loads_the_random_model_through_funasr(backend, model_dir):
    import torch
    from funasr import AutoModel
    from funasr.models.sense_voice.model import SenseVoiceSmall

    assert isinstance(backend._model, AutoModel)
    assert isinstance(backend._model.model, SenseVoiceSmall)
    saved = torch.load(model_dir / "model.pt")
    assert torch.equal(backend._model.model.ctc.ctc_lo.bias, saved["ctc.ctc_lo.bias"])
    assert backend._model.kwargs["frontend"].dither == 0.0
    assert backend._model.kwargs["tokenizer"].sp.get_piece_size() == \
        random_sensevoice.TINY["vocab_size"]


async def test_transcripts_are_the_tags_funasr_emitted(backend):
    raws = [raw_text(backend, c) for c in CLIPS]
    got = [await backend.transcribe(AudioChunk(c, SR)) for c in CLIPS]
    assert got == [to_transcript(parse_output(r)) for r in raws]
    assert all("<|" not in t.text for t in got)
    # not vacuous: the random model emitted tags of each kind the transcript carries
    assert any(t.emotion for t in got) and any(t.event for t in got)
    assert any("<|" in r for r in raws)


async def test_empty_audio_is_an_empty_transcript_without_a_model_call(backend, counted):
    t = await backend.transcribe(AudioChunk(np.zeros(0, np.float32), SR))
    assert t == Transcript(text="", language=None)
    assert counted == []


async def test_very_short_audio_is_padded_not_an_error(backend):
    t = await backend.transcribe(AudioChunk(np.full(80, 0.1, np.float32), SR))  # 5 ms
    padded = np.zeros(sensevoice.MIN_SAMPLES, np.float32)
    padded[:80] = 0.1
    assert t == expected(backend, padded)


async def test_48khz_input_is_resampled(backend):
    audio48 = clip(7, rate=48000)
    want = expected(backend, resample(audio48, 48000, SR))
    assert raw_text(backend, audio48) != raw_text(backend, resample(audio48, 48000, SR))
    assert await backend.transcribe(AudioChunk(audio48, 48000)) == want


async def test_a_forced_language_and_itn_reach_the_model(model_dir, monkeypatch):
    auto = load(model_dir)
    zh = load(model_dir, language="zh", use_itn=False)
    try:
        seen = []
        original = zh._model.generate
        monkeypatch.setattr(zh._model, "generate",
                            lambda *a, **k: seen.append(k) or original(*a, **k))
        got = [await zh.transcribe(AudioChunk(c, SR)) for c in CLIPS]
        assert [(k["language"], k["use_itn"]) for k in seen] == [("zh", False)] * len(CLIPS)
        monkeypatch.undo()
        assert got == [expected(zh, c) for c in CLIPS]
        # the query embeddings changed what the model emitted
        assert [raw_text(zh, c) for c in CLIPS] != [raw_text(auto, c) for c in CLIPS]
        # without a language tag the transcript carries the language the model was told
        assert all(t.language == "zh" for t, c in zip(got, CLIPS)
                   if parse_output(raw_text(zh, c)).language is None)
    finally:
        auto.close()
        zh.close()


# --- batching across sessions ---------------------------------------------------------------------

async def test_concurrent_calls_share_one_model_call_and_get_their_own_results(backend, counted):
    alone = [expected(backend, c) for c in CLIPS]
    assert alone == [expected(backend, c) for c in CLIPS]  # eval mode, no dither: deterministic
    assert len(set(alone)) > 1  # the clips tell apart whose result is whose
    counted.clear()
    together = await asyncio.gather(*(backend.transcribe(AudioChunk(c, SR)) for c in CLIPS))
    assert counted == [len(CLIPS)]
    assert list(together) == alone


async def test_batch_max_bounds_a_model_call(model_dir, monkeypatch):
    b = load(model_dir, batch_max=4, batch_wait_ms=0)
    try:
        sizes = []
        original = b._model.generate
        monkeypatch.setattr(b._model, "generate",
                            lambda *a, **k: sizes.append(len(k["input"])) or original(*a, **k))
        got = await asyncio.gather(*(b.transcribe(AudioChunk(c, SR)) for c in CLIPS))
        assert sizes == [4, 2]
        monkeypatch.undo()
        assert list(got) == [expected(b, c) for c in CLIPS]
        assert b.stats == {"batches": 2, "utterances": 6}
    finally:
        b.close()


async def test_an_utterance_waits_briefly_for_company(model_dir, monkeypatch):
    b = load(model_dir, batch_max=2, batch_wait_ms=1000)  # the second fills the batch: no 1 s wait
    try:
        sizes = []
        original = b._model.generate
        monkeypatch.setattr(b._model, "generate",
                            lambda *a, **k: sizes.append(len(k["input"])) or original(*a, **k))
        first = asyncio.create_task(b.transcribe(AudioChunk(CLIPS[0], SR)))
        await asyncio.sleep(0.05)  # the first is waiting for company
        second = await b.transcribe(AudioChunk(CLIPS[1], SR))
        await first
        assert sizes == [2]
        assert second == expected(b, CLIPS[1])
    finally:
        b.close()


@contextlib.contextmanager
def gated(backend, monkeypatch):
    """Model calls that block until the test opens the gate; yields (started, gate, sizes)."""
    started, gate, sizes = threading.Event(), threading.Event(), []
    original = backend._model.generate

    def generate(*args, **kwargs):
        sizes.append(len(kwargs["input"]))
        started.set()
        gate.wait(30)
        return original(*args, **kwargs)

    monkeypatch.setattr(backend._model, "generate", generate)
    try:
        yield started, gate, sizes
    finally:
        gate.set()  # never leave a worker thread blocked


async def test_cancelled_callers_do_not_break_the_others(backend, monkeypatch):
    want = [expected(backend, c) for c in CLIPS[:3]]
    with gated(backend, monkeypatch) as (started, gate, sizes):
        running = asyncio.create_task(backend.transcribe(AudioChunk(CLIPS[0], SR)))
        assert await asyncio.to_thread(started.wait, 30)
        waiting = asyncio.create_task(backend.transcribe(AudioChunk(CLIPS[1], SR)))
        other = asyncio.create_task(backend.transcribe(AudioChunk(CLIPS[2], SR)))
        await asyncio.sleep(0.01)
        running.cancel()  # its batch is in the model: the result is dropped
        waiting.cancel()  # still queued: it leaves the next batch
        gate.set()
        assert await asyncio.wait_for(other, 30) == want[2]
        for task in (running, waiting):
            with pytest.raises(asyncio.CancelledError):
                await task
        assert sizes == [1, 1]
    assert await backend.transcribe(AudioChunk(CLIPS[0], SR)) == want[0]
    backend.check_health()


async def test_a_failed_batch_fails_its_callers_only(backend, monkeypatch):
    original = backend._model.generate
    failures = iter([RuntimeError("CUDA error: out of memory")])

    def generate(*args, **kwargs):
        for err in failures:
            raise err
        return original(*args, **kwargs)

    monkeypatch.setattr(backend._model, "generate", generate)
    results = await asyncio.gather(*(backend.transcribe(AudioChunk(c, SR)) for c in CLIPS[:2]),
                                   return_exceptions=True)
    assert [str(r) for r in results] == ["CUDA error: out of memory"] * 2
    assert await backend.transcribe(AudioChunk(CLIPS[0], SR)) == expected(backend, CLIPS[0])
    backend.check_health()


async def test_batches_failing_in_a_row_make_it_unhealthy(model_dir, monkeypatch):
    b = load(model_dir)
    try:
        monkeypatch.setattr(b._model, "generate", mock.Mock(side_effect=RuntimeError("broken")))
        for _ in range(sensevoice.FAILURES_UNHEALTHY):
            b.check_health()
            with pytest.raises(RuntimeError, match="broken"):
                await b.transcribe(AudioChunk(CLIPS[0], SR))
        with pytest.raises(RuntimeError, match="batches failed"):
            b.check_health()
    finally:
        b.close()


async def test_a_dead_worker_fails_its_callers_and_the_health_check(model_dir, monkeypatch):
    b = load(model_dir, batch_max=1)
    try:
        b.check_health()
        monkeypatch.setattr(b._batcher, "_run_batch", mock.AsyncMock(side_effect=KeyError("bug")))
        results = await asyncio.wait_for(asyncio.gather(
            *(b.transcribe(AudioChunk(c, SR)) for c in CLIPS[:3]), return_exceptions=True), 30)
        # the first was in the failing batch; the two still queued are told the worker died
        assert isinstance(results[0], KeyError)
        assert [str(r) for r in results[1:]] == ["the SenseVoice batch worker died: KeyError('bug')"] * 2
        with pytest.raises(RuntimeError, match="died"):
            b.check_health()
        with pytest.raises(RuntimeError, match="died"):
            await asyncio.wait_for(b.transcribe(AudioChunk(CLIPS[0], SR)), 30)
    finally:
        b.close()


async def test_close_stops_the_worker_and_answers_every_waiting_caller(model_dir, monkeypatch):
    b = load(model_dir)
    with gated(b, monkeypatch) as (started, gate, _):
        running = asyncio.create_task(b.transcribe(AudioChunk(CLIPS[0], SR)))
        assert await asyncio.to_thread(started.wait, 30)
        queued = asyncio.create_task(b.transcribe(AudioChunk(CLIPS[1], SR)))
        await asyncio.sleep(0.01)
        b.close()
        for task in (running, queued):
            with pytest.raises(RuntimeError, match="stopped"):
                await asyncio.wait_for(task, 30)
    with pytest.raises(RuntimeError, match="closed"):
        await b.transcribe(AudioChunk(CLIPS[0], SR))


# --- loading --------------------------------------------------------------------------------------

def test_the_default_directory_is_the_models_directory(model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("AVATAR_CHAT_MODELS", str(tmp_path))
    (tmp_path / "sensevoice-small").symlink_to(model_dir, target_is_directory=True)
    b = SenseVoiceASR(SenseVoiceASR.Options(cpu_threads=1))
    b.load()
    b.close()


def test_the_release_configuration_json_is_optional(model_dir, tmp_path):
    copy = tmp_path / "no-configuration-json"
    shutil.copytree(model_dir, copy)
    (copy / "configuration.json").unlink()
    b = load(copy)  # the config.yaml path of funasr, with the file names given explicitly
    try:
        assert b._model.kwargs["tokenizer"].sp.get_piece_size() == \
            random_sensevoice.TINY["vocab_size"]
    finally:
        b.close()


async def test_load_and_transcribe_never_touch_the_network(model_dir):
    with no_network():
        b = load(model_dir)
        try:
            t = await b.transcribe(AudioChunk(CLIPS[0], SR))
            assert t == expected(b, CLIPS[0])
        finally:
            b.close()


def test_loading_leaves_the_process_logging_and_random_state_alone(model_dir, monkeypatch):
    import torch

    def draws():
        return random.random(), float(np.random.random()), float(torch.rand(1))

    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [])  # funasr's basicConfig would add one
    level = root.level
    random.seed(7), np.random.seed(7), torch.manual_seed(7)
    load(model_dir).close()  # funasr seeds all three with 0
    after_load = draws()
    random.seed(7), np.random.seed(7), torch.manual_seed(7)
    assert after_load == draws()
    assert root.handlers == [] and root.level == level


@pytest.mark.parametrize("missing", REQUIRED)
def test_missing_weights_fail_before_funasr_naming_the_path_and_fetch_command(
        missing, model_dir, tmp_path, monkeypatch):
    incomplete = tmp_path / "sensevoice-small"
    shutil.copytree(model_dir, incomplete)
    (incomplete / missing).unlink()
    monkeypatch.setitem(sys.modules, "funasr", None)  # importing funasr would now fail
    with pytest.raises(MissingWeights) as err:
        SenseVoiceASR(SenseVoiceASR.Options(model_dir=incomplete)).load()
    assert isinstance(err.value, FileNotFoundError)
    assert str(incomplete) in str(err.value) and missing in str(err.value)
    assert "avatar-chat models fetch sensevoice-small" in str(err.value)


def test_a_missing_model_stops_the_asr_stage(tmp_path):
    config = StageConfig(stage="asr", backend="sensevoice",
                         options=SenseVoiceASR.Options(model_dir=tmp_path / "nowhere"))
    with pytest.raises(StageLoadError) as err:
        create_backend(config)
    assert err.value.stage == "asr" and err.value.backend == "sensevoice"
    assert str(tmp_path / "nowhere") in str(err.value)
    assert "avatar-chat models fetch sensevoice-small" in str(err.value)


def test_a_cuda_device_needs_cuda(model_dir):
    import torch

    b = SenseVoiceASR(SenseVoiceASR.Options(model_dir=model_dir, device="cuda:0"))
    if torch.cuda.is_available():
        b.load()
        assert next(b._model.model.parameters()).device.type == "cuda"
        b.close()
    else:
        with pytest.raises(RuntimeError, match="cuda:0"):
            b.load()


def test_options_are_checked():
    with pytest.raises(ValueError):
        SenseVoiceASR.Options(language="fr")
    with pytest.raises(ValueError):
        SenseVoiceASR.Options(device="gpu")
    with pytest.raises(ValueError):
        SenseVoiceASR.Options(batch_max=0)
