"""The ``cosyvoice`` TTS backend through CosyVoice 2's official code, on a random-weight tiny model
(load_tests/random_models/cosyvoice.py): streaming, voices per language (built-in and cloned, an
avatar pack's own), cancellation that stops the model, concurrent sentences, and start-up errors.

The random LLM never stops by itself, so a sentence runs to CosyVoice's cap of 20 speech tokens
per text token: 0.8 s of audio per text token, which the tests check lengths against."""

from __future__ import annotations

import asyncio
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from avatarchat.audio import encode_wav
from avatarchat.avatar.pack import AvatarPack, PackVoice, avatars_dir, load_voice
from avatarchat.backends.base import create_backend
from avatarchat.backends.tts.cosyvoice import REQUIRED, CosyVoiceTTS
from avatarchat.config import parse_stage
from avatarchat.errors import ConfigError, StageLoadError
from avatarchat.models import MissingWeights
from load_tests.random_models import cosyvoice as random_cosyvoice

pytestmark = pytest.mark.timeout(600)

SECONDS_PER_TEXT_TOKEN = 20 * 2 * 480 / 24000  # max_token_text_ratio x mel frames x hop / rate
LONG = ("Well, that is a very good question, and I would love to tell you all about it, because "
        "the history of the place is long and full of surprising turns.")


def _clip(path: Path, rate: int, seconds: float = 3.0, seed: int = 0) -> Path:
    """A stand-in voice prompt: a gliding tone with some noise."""
    t = np.arange(int(rate * seconds)) / rate
    rng = np.random.default_rng(seed)
    wav = 0.3 * np.sin(2 * np.pi * (180 + 40 * t) * t) + 0.02 * rng.standard_normal(len(t))
    path.write_bytes(encode_wav(wav.astype(np.float32), rate))
    return path


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return random_cosyvoice.build(tmp_path_factory.mktemp("cosyvoice2") / "CosyVoice2-0.5B", "tiny")


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("clips")
    return {"ja": _clip(d / "ja.wav", 16000, seed=1), "pack": _clip(d / "pack.wav", 24000, seed=2)}


@pytest.fixture(scope="module")
def voiceless_pack(tmp_path_factory) -> Path:
    """The astronaut pack without its voice section."""
    pack = tmp_path_factory.mktemp("packs") / "voiceless"
    shutil.copytree(avatars_dir() / "astronaut", pack)
    meta = yaml.safe_load((pack / "pack.yaml").read_text())
    del meta["voice"]
    (pack / "voice.wav").unlink()
    (pack / "pack.yaml").write_text(yaml.safe_dump(meta, allow_unicode=True))
    return pack


@pytest.fixture(scope="module")
def pack_dir(voiceless_pack, tmp_path_factory, clips) -> Path:
    """A pack with a voice section of the test's own clip."""
    pack = tmp_path_factory.mktemp("packs") / "astronaut"
    shutil.copytree(voiceless_pack, pack)
    shutil.copy(clips["pack"], pack / "voice.wav")
    meta = yaml.safe_load((pack / "pack.yaml").read_text())
    meta["voice"] = {"prompt_wav": "voice.wav", "prompt_text": "Hello, I am the astronaut.",
                     "language": "EN"}
    (pack / "pack.yaml").write_text(yaml.safe_dump(meta, allow_unicode=True))
    return pack


@pytest.fixture(scope="module")
def tts(model_dir, clips, pack_dir):
    """One replica: zh and en built-in speakers, ja cloned from a clip, the pack's voice otherwise."""
    threads = torch.get_num_threads()
    backend = CosyVoiceTTS(CosyVoiceTTS.Options(
        model_dir=model_dir, pack=str(pack_dir), cpu_threads=1,
        voices={"zh": {"speaker": "中文女"}, "EN": {"speaker": "英文女"},
                "ja": {"prompt_wav": clips["ja"], "prompt_text": "今天天气很好，我们去散步吧。"}}))
    backend.load()  # warms up every voice: each synthesises once here
    yield backend
    backend.close()
    torch.set_num_threads(threads)


class Spy:
    """Records what reaches CosyVoice's frontend and which voice entry each sentence used."""

    def __init__(self, monkeypatch, frontend):
        self.calls: list[tuple[str, str, dict]] = []
        for kind in ("frontend_sft", "frontend_zero_shot"):
            original = getattr(frontend, kind)

            def spy(text, *args, _original=original, _kind=kind, **kwargs):
                spk = args[0] if _kind == "frontend_sft" else (args[-1] if len(args) == 4 else
                                                               kwargs.get("zero_shot_spk_id", ""))
                self.calls.append((_kind, text, dict(frontend.spk2info[spk])))
                return _original(text, *args, **kwargs)

            monkeypatch.setattr(frontend, kind, spy)


class Steps:
    """Counts model steps: LLM forward passes, flow-decoder estimator calls, HiFT passes."""

    def __init__(self, model):
        self.counts = {"llm": 0, "flow": 0, "hift": 0}
        self._hooks = [
            model.llm.llm.model.register_forward_hook(self._count("llm")),
            model.flow.decoder.estimator.register_forward_hook(self._count("flow")),
            model.hift.f0_predictor.register_forward_hook(self._count("hift")),
        ]

    def _count(self, name):
        def hook(*_):
            self.counts[name] += 1
        return hook

    def remove(self):
        for h in self._hooks:
            h.remove()


def _synthesis_threads() -> list[str]:
    return [t.name for t in threading.enumerate()
            if t.name == "stream_in_thread" or "llm_job" in t.name]


async def _all(tts, text, language=None):
    return [c async for c in tts.synthesize(text, language)]


def _n_tokens(tts, text) -> int:
    return len(tts._cv.frontend.tokenizer.encode(text))


def _check_stream(chunks, expected_s):
    assert chunks and all(c.sample_rate == 24000 for c in chunks)
    assert all(c.samples.dtype == np.float32 and c.samples.ndim == 1 and len(c.samples) for c in chunks)
    assert all(np.isfinite(c.samples).all() for c in chunks)
    assert chunks[0].start == 0.0
    assert all(b.start == pytest.approx(a.end) for a, b in zip(chunks, chunks[1:]))
    assert chunks[-1].end == pytest.approx(expected_s, abs=1e-6)


async def test_built_in_speaker_streams_chunks(tts, monkeypatch):
    spy = Spy(monkeypatch, tts._cv.frontend)
    text = "Tell me a story please."
    chunks = await _all(tts, text, "en")
    # ~1 s of audio per chunk (25 speech tokens), the first while the LLM still writes the rest
    assert len(chunks) >= 3
    _check_stream(chunks, _n_tokens(tts, text) * SECONDS_PER_TEXT_TOKEN)
    assert [(kind, t) for kind, t, _ in spy.calls] == [("frontend_sft", text)]


async def test_cloned_voice_streams_from_the_prompt_computed_at_load(tts, monkeypatch, clips):
    spy = Spy(monkeypatch, tts._cv.frontend)
    voice = tts.voice_for("ja")
    assert voice.kind == "zero_shot" and voice.name == str(clips["ja"])
    prompt = tts._cv.frontend.spk2info[voice.spk_id]
    assert prompt["flow_prompt_speech_token"].shape[1] > 0 and prompt["prompt_speech_feat"].shape[1] > 0
    text = "今天天气很好。"
    chunks = await _all(tts, text, "ja")
    assert len(chunks) >= 3
    _check_stream(chunks, _n_tokens(tts, text) * SECONDS_PER_TEXT_TOKEN)
    [(kind, seen, entry)] = spy.calls
    assert kind == "frontend_zero_shot" and seen == text
    # the prompt's features, not recomputed: the very tensors computed at load
    assert entry["prompt_speech_feat"] is prompt["prompt_speech_feat"]


async def test_language_picks_the_voice(tts, monkeypatch, pack_dir):
    assert (tts.voice_for("zh").kind, tts.voice_for("zh").name) == ("sft", "中文女")
    assert tts.voice_for("<|en|>").name == tts.voice_for("en-US").name == "英文女"
    pack_voice = load_voice(pack_dir)
    for other in (None, "ko", "fr"):
        assert tts.voice_for(other).name == str(pack_voice.prompt_wav)
    spy = Spy(monkeypatch, tts._cv.frontend)
    speakers = torch.load(tts._cv.model_dir + "/spk2info.pt", weights_only=True)
    for language, speaker in (("zh", "中文女"), ("en", "英文女")):
        spy.calls.clear()
        await _all(tts, "Hi.", language)
        [(kind, _, entry)] = spy.calls
        assert kind == "frontend_sft" and torch.equal(entry["embedding"], speakers[speaker]["embedding"])
    spy.calls.clear()
    await _all(tts, "Hi.", "ko")
    [(kind, _, entry)] = spy.calls
    pack_entry = tts._cv.frontend.spk2info[tts.voice_for("ko").spk_id]
    assert kind == "frontend_zero_shot" and entry["prompt_speech_feat"] is pack_entry["prompt_speech_feat"]


@pytest.mark.parametrize("text,language", [("你好，今天天气很好。", "zh"),
                                           ("Nice to meet you, 朋友!", "en")])
async def test_text_reaches_the_frontend_whole(tts, monkeypatch, text, language):
    spy = Spy(monkeypatch, tts._cv.frontend)
    chunks = await _all(tts, f"  {text}\n", language)
    assert [seen for _, seen, _ in spy.calls] == [text]
    tokens = tts._cv.frontend.tokenizer.encode(text)
    assert tts._cv.frontend.tokenizer.decode(tokens) == text
    assert chunks[-1].end == pytest.approx(len(tokens) * SECONDS_PER_TEXT_TOKEN)


async def test_closing_the_stream_stops_the_model(tts):
    model = tts._cv.model
    steps = Steps(model)
    try:
        stream = tts.synthesize(LONG * 2, "en")
        first = await anext(stream)
        assert first.start == 0.0
        await stream.aclose()
        deadline = time.monotonic() + 60  # liveness bound, not a timing claim
        while _synthesis_threads() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert _synthesis_threads() == []
        settled = dict(steps.counts)
        await asyncio.sleep(1.0)
        assert steps.counts == settled  # nothing runs once the threads are gone
    finally:
        steps.remove()
    full_run = 20 * _n_tokens(tts, LONG * 2)
    assert 0 < settled["llm"] < full_run / 2
    # CosyVoice's per-call state and our per-call voice copies are gone
    assert model.tts_speech_token_dict == {} and model.llm_end_dict == {} and model.hift_cache_dict == {}
    assert not [k for k in tts._cv.frontend.spk2info if k.startswith("avatarchat-call:")]


async def test_concurrent_sentences_keep_their_own_text_and_voice(tts):
    texts = [("Hi.", "ja"), ("Tell me a story please.", "ja"), ("你好。", "zh"),
             ("Hello there, how are you?", "en")]
    results = await asyncio.gather(*(_all(tts, t, lang) for t, lang in texts))
    for (text, _), chunks in zip(texts, results):
        _check_stream(chunks, _n_tokens(tts, text) * SECONDS_PER_TEXT_TOKEN)


async def test_closing_one_of_two_sentences_in_one_voice_leaves_the_other_whole(tts):
    steps = Steps(tts._cv.model)
    other_text = "What would you like to talk about today?"
    try:
        closed = tts.synthesize(LONG * 2, "en")
        other = asyncio.create_task(_all(tts, other_text, "en"))
        await anext(closed)
        await closed.aclose()
        other_chunks = await other
    finally:
        steps.remove()
    _check_stream(other_chunks, _n_tokens(tts, other_text) * SECONDS_PER_TEXT_TOKEN)
    # the other sentence's LLM ran to its end; the closed one's stopped early
    other_steps = 20 * _n_tokens(tts, other_text)
    assert steps.counts["llm"] < other_steps + 20 * _n_tokens(tts, LONG * 2) / 2


async def test_llm_failure_reaches_the_caller(tts):
    model, calls = tts._cv.model, [0]

    def fail_fifth_step(*_):
        calls[0] += 1
        if calls[0] == 5:
            raise RuntimeError("injected LLM failure")

    hook = model.llm.llm.model.register_forward_hook(fail_fifth_step)
    try:
        with pytest.raises(RuntimeError, match="injected LLM failure"):
            await asyncio.wait_for(_all(tts, "Hello there, how are you?", "en"), 120)
    finally:
        hook.remove()
    assert model.tts_speech_token_dict == {}


async def test_speed_synthesises_whole_sentences(tts):
    normal = tts.options
    tts.options = normal.model_copy(update={"speed": 2.0})
    try:
        text = "Hello there, how are you?"
        chunks = await _all(tts, text, "en")
    finally:
        tts.options = normal
    assert len(chunks) == 1
    assert chunks[0].duration == pytest.approx(_n_tokens(tts, text) * SECONDS_PER_TEXT_TOKEN / 2, rel=0.02)


async def test_empty_text_yields_nothing(tts):
    assert await _all(tts, "  \n") == []


# --- start-up errors: all before the model loads ----------------------------------------------


def test_unknown_speaker_lists_the_speakers(model_dir):
    backend = CosyVoiceTTS(CosyVoiceTTS.Options(model_dir=model_dir, voice="无此人"))
    with pytest.raises(ValueError, match="无此人") as err:
        backend.load()
    assert "中文女, 英文女" in str(err.value)
    config = parse_stage("test", "tts", {"backend": "cosyvoice", "model_dir": str(model_dir),
                                         "voices": {"en": {"speaker": "Nobody"}}})
    with pytest.raises(StageLoadError) as info:
        create_backend(config)
    assert info.value.stage == "tts" and info.value.backend == "cosyvoice"
    assert "voices.en" in str(info.value) and "Nobody" in str(info.value) and "英文女" in str(info.value)


def test_missing_weights_name_the_file_and_the_fetch_command(tmp_path, model_dir):
    empty = tmp_path / "nothing"
    with pytest.raises(MissingWeights) as err:
        CosyVoiceTTS(CosyVoiceTTS.Options(model_dir=empty)).load()
    assert str(empty) in str(err.value) and "avatar-chat models fetch cosyvoice2-0.5b" in str(err.value)

    partial = tmp_path / "partial"
    partial.mkdir()
    for item in model_dir.iterdir():
        if item.name != "flow.pt":
            (partial / item.name).symlink_to(item)
    assert "flow.pt" in REQUIRED
    config = parse_stage("test", "tts", {"backend": "cosyvoice", "model_dir": str(partial)})
    with pytest.raises(StageLoadError) as info:
        create_backend(config)
    assert info.value.stage == "tts" and "flow.pt" in str(info.value) and str(partial) in str(info.value)


def test_bad_voice_prompts_are_named(tmp_path, model_dir):
    missing = tmp_path / "missing.wav"
    backend = CosyVoiceTTS(CosyVoiceTTS.Options(
        model_dir=model_dir, voices={"en": {"prompt_wav": missing, "prompt_text": "Hi."}}))
    with pytest.raises(FileNotFoundError, match="voices.en") as err:
        backend.load()
    assert str(missing) in str(err.value)
    low = _clip(tmp_path / "low.wav", 8000)
    backend = CosyVoiceTTS(CosyVoiceTTS.Options(model_dir=model_dir, prompt_wav=low, prompt_text="Hi."))
    with pytest.raises(ValueError, match="8000 Hz"):
        backend.load()
    (tmp_path / "junk.wav").write_bytes(b"not a wav")
    backend = CosyVoiceTTS(CosyVoiceTTS.Options(model_dir=model_dir, prompt_wav=tmp_path / "junk.wav",
                                                prompt_text="Hi."))
    with pytest.raises(ValueError, match="junk.wav"):
        backend.load()


@pytest.mark.parametrize("options,words", [
    ({"voices": {"en": {"speaker": "x", "prompt_wav": "a.wav", "prompt_text": "x"}}}, "either speaker"),
    ({"voices": {"en": {}}}, "either speaker"),
    ({"voices": {"en": {"prompt_wav": "a.wav"}}}, "prompt_text"),
    ({"voices": {"": {"speaker": "英文女"}}}, "not a language code"),
    ({"prompt_wav": "a.wav"}, "go together"),
    ({"prompt_wav": "a.wav", "prompt_text": "x", "pack": "astronaut"}, "keep one"),
    ({"fp16": True, "device": "cpu"}, "fp16 needs a GPU"),
    ({"speed": 3}, "speed"),
    ({"voice_id": "x"}, "voice_id"),
])
def test_option_errors(options, words):
    with pytest.raises(ConfigError) as err:
        parse_stage("test", "tts", {"backend": "cosyvoice", **options})
    assert words in str(err.value)


def test_option_defaults_and_language_keys():
    o = parse_stage("test", "tts", {"backend": "cosyvoice", "voices": {"EN": {"speaker": "x"}}}).options
    assert o.voice == "中文女" and o.model_dir is None and o.speed == 1.0 and o.max_concurrent >= 1
    assert list(o.voices) == ["en"]


# --- the avatar pack's voice section ------------------------------------------------------------


def test_pack_voice_section(pack_dir, voiceless_pack, clips):
    voice = PackVoice(prompt_wav=(pack_dir / "voice.wav").resolve(),
                      prompt_text="Hello, I am the astronaut.", language="en")
    assert load_voice(pack_dir) == voice
    assert AvatarPack.load(pack_dir).voice == voice
    assert load_voice(voiceless_pack) is None and AvatarPack.load(voiceless_pack).voice is None
    shipped = load_voice("astronaut")  # the shipped pack carries its voice (serve_config.gpu.yaml)
    assert shipped.prompt_wav.is_file() and shipped.language == "en"


@pytest.mark.parametrize("section,words", [
    ({"prompt_wav": "voice.wav"}, "prompt_text"),
    ({"prompt_wav": "nope.wav", "prompt_text": "x"}, "nope.wav"),
    ({"prompt_wav": "voice.wav", "prompt_text": "x", "pitch": 3}, "pitch"),
    ("voice.wav", "mapping"),
])
def test_bad_pack_voice_sections(tmp_path, pack_dir, section, words):
    pack = tmp_path / "p"
    shutil.copytree(pack_dir, pack)
    meta = yaml.safe_load((pack / "pack.yaml").read_text())
    meta["voice"] = section
    (pack / "pack.yaml").write_text(yaml.safe_dump(meta))
    for load in (load_voice, AvatarPack.load):
        with pytest.raises((ValueError, FileNotFoundError), match=words):
            load(pack)


def test_pack_without_voice_is_refused(model_dir, voiceless_pack):
    backend = CosyVoiceTTS(CosyVoiceTTS.Options(model_dir=model_dir, pack=str(voiceless_pack)))
    with pytest.raises(ValueError, match="no voice section"):
        backend.load()
