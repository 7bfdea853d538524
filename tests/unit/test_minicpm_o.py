"""MiniCPM-o 2.6 (speech_to_speech.minicpm_o) without the model: start-up errors, and the code
around the model driven by a fake with the published streaming interface (reset_session,
get_sys_prompt, streaming_prefill, streaming_generate). The fake shows what this backend sends and
how it turns outputs into messages; it is no evidence that the real model works (docs/backends.md)."""

import asyncio
import json
import threading
from contextlib import aclosing
from types import SimpleNamespace

import numpy as np
import pytest

from avatarchat.backends.base import create_backend
from avatarchat.backends.speech_to_speech.minicpm_o import (MODEL_NAME, REQUIRED, MiniCPMO,
                                                            audio_pieces, check_transformers)
from avatarchat.config import parse_stage
from avatarchat.errors import StageLoadError
from avatarchat.messages import AudioChunk, ChatMessage, SpeechRequest, TextDelta

FETCH = f"avatar-chat models fetch {MODEL_NAME}"


def load_error(**options) -> StageLoadError:
    with pytest.raises(StageLoadError) as info:
        create_backend(parse_stage("test", "speech_to_speech", {"backend": "minicpm_o", **options}))
    return info.value


def test_missing_weights_name_the_stage_the_path_and_the_fetch_command(tmp_path):
    err = load_error(model_dir=str(tmp_path / "nope"))
    assert err.stage == "speech_to_speech" and err.backend == "minicpm_o"
    assert str(tmp_path / "nope") in str(err) and FETCH in str(err)


def test_the_default_directory_is_the_catalog_entry_under_the_models_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("AVATAR_CHAT_MODELS", str(tmp_path / "models"))
    err = load_error()
    assert str(tmp_path / "models" / MODEL_NAME) in str(err) and FETCH in str(err)


def test_a_missing_file_or_shard_is_named(tmp_path):
    for rel in REQUIRED:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("{}")
    (tmp_path / "modeling_minicpmo.py").unlink()
    assert "modeling_minicpmo.py not found" in str(load_error(model_dir=str(tmp_path)))
    (tmp_path / "modeling_minicpmo.py").write_text("")
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
        "a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}))
    (tmp_path / "model-00001-of-00002.safetensors").write_bytes(b"")
    err = load_error(model_dir=str(tmp_path))
    assert "model-00002-of-00002.safetensors not found" in str(err) and FETCH in str(err)


def test_a_transformers_without_what_the_model_code_imports_is_named(tmp_path):
    (tmp_path / "modeling_minicpmo.py").write_text("from transformers import LogitsWarper\n")
    with pytest.raises(RuntimeError, match=r"LogitsWarper.*5\.19\.0.*4\.44\.2"):
        check_transformers(tmp_path, SimpleNamespace(__version__="5.19.0"))
    check_transformers(tmp_path, SimpleNamespace(__version__="4.44.2", LogitsWarper=object))


# --- the code around the model ----------------------------------------------------------------------

class FakeTensor:
    """What the model's audio_wav is: a CPU float tensor (vocos output)."""

    def __init__(self, values):
        self.values = np.asarray(values, np.float64)

    def detach(self):
        return self

    def float(self):
        return self

    def cpu(self):
        return self

    def numpy(self):
        return self.values


class FakeMiniCPMO:
    """The streaming interface of MiniCPM-o 2.6's modeling_minicpmo.py, recording every call.
    ``replies`` outputs per reply (None: endless); each is text plus 0.1 s of 24 kHz audio."""

    def __init__(self, replies=3):
        self.replies, self.calls, self.pulled = replies, [], 0
        self.generator_closed = threading.Event()

    def reset_session(self):
        self.calls.append(("reset",))

    def get_sys_prompt(self, ref_audio=None, mode="default", language="zh"):
        self.calls.append(("sys_prompt", mode, language))
        return {"role": "user", "content": ["Clone the voice.", ref_audio, "Speak like it."]}

    def streaming_prefill(self, session_id, msgs, tokenizer, **kwargs):
        assert len(msgs) == 1 and tokenizer == "tok"  # upstream asserts one message per call
        self.calls.append(("prefill", session_id, msgs[0]))

    def streaming_generate(self, session_id, tokenizer, **kwargs):
        self.calls.append(("generate", session_id, kwargs))

        def outputs():
            try:
                n = 0
                while self.replies is None or n < self.replies:
                    self.pulled += 1
                    text = f"word{n} " + ("<|tts_eos|>" if self.replies is not None and n == self.replies - 1 else "")
                    wav = FakeTensor(np.full(2400, 0.25))
                    yield SimpleNamespace(text=text, audio_wav=wav, sampling_rate=24000)
                    n += 1
            finally:
                self.generator_closed.set()

        return outputs()


def bound(replies=3, **options) -> tuple[MiniCPMO, FakeMiniCPMO]:
    backend = MiniCPMO(MiniCPMO.Options(**options))
    fake = FakeMiniCPMO(replies)
    backend._bind(fake, "tok", ref_audio=np.zeros(16000, np.float32))
    return backend, fake


async def collect(backend, request):
    async with aclosing(backend.converse(request)) as pieces:
        return [p async for p in pieces]


async def test_prefill_order_system_history_then_user_audio_at_16khz():
    backend, fake = bound(system_prompt="Be brief.", temperature=0.4, max_new_tokens=64)
    audio = AudioChunk(np.zeros(int(2.5 * 48000), np.float32), 48000)  # 2.5 s at 48 kHz
    history = (ChatMessage("user", "Hi there"), ChatMessage("assistant", "Hello! <|im_end|>"))
    await collect(backend, SpeechRequest(history=history, audio=audio, language="en"))

    assert fake.calls[0] == ("reset",) and fake.calls[-1] == ("reset",)  # fresh state, then freed
    assert fake.calls[1] == ("sys_prompt", "audio_assistant", "en")
    prefills = [c for c in fake.calls if c[0] == "prefill"]
    sessions = {c[1] for c in prefills}
    generate = [c for c in fake.calls if c[0] == "generate"]
    assert len(sessions) == 1 and generate[0][1] in sessions  # one fresh session for the reply
    assert generate[0][2] == {"generate_audio": True, "temperature": 0.4, "top_p": 0.8,
                              "max_new_tokens": 64}
    msgs = [c[2] for c in prefills]
    system, turns, pieces = msgs[0], msgs[1:3], msgs[3:]
    assert system["role"] == "user" and system["content"][0] == "Be brief.\n"
    assert system["content"][1] == "Clone the voice." and isinstance(system["content"][2], np.ndarray)
    assert turns == [  # whole ChatML turns; text cannot write special tokens
        {"role": "assistant", "content": ["<|im_start|>user\nHi there<|im_end|>\n"]},
        {"role": "assistant", "content": ["<|im_start|>assistant\nHello! < |im_end|><|im_end|>\n"]}]
    assert [p["role"] for p in pieces] == ["user"] * 3
    arrays = [p["content"][0] for p in pieces]
    assert [len(a) for a in arrays] == [16000, 16000, 8000]  # 1 s pieces at 16 kHz
    assert all(a.dtype == np.float32 and a.ndim == 1 for a in arrays)


async def test_typed_text_is_one_user_message_and_chinese_gets_chinese_instructions():
    backend, fake = bound()
    await collect(backend, SpeechRequest(history=(), text="你好", language="zh"))
    prefills = [c[2] for c in fake.calls if c[0] == "prefill"]
    assert prefills[-1] == {"role": "user", "content": ["你好"]} and len(prefills) == 2
    assert ("sys_prompt", "audio_assistant", "zh") in fake.calls


def test_a_short_tail_is_padded_and_empty_audio_is_one_short_piece():
    assert [len(p) for p in audio_pieces(AudioChunk(np.zeros(16100, np.float32), 16000), 1.0)] == [16000, 1600]
    assert [len(p) for p in audio_pieces(AudioChunk(np.zeros(0, np.float32), 16000), 1.0)] == [1600]


async def test_outputs_become_text_deltas_and_24khz_float32_audio():
    backend, fake = bound(replies=3)
    out = await collect(backend, SpeechRequest(history=(), text="hi"))
    assert [type(p) for p in out] == [TextDelta, AudioChunk] * 3
    assert "".join(p.text for p in out if isinstance(p, TextDelta)) == "word0 word1 word2 "
    for chunk in (p for p in out if isinstance(p, AudioChunk)):
        assert chunk.sample_rate == 24000 and chunk.samples.dtype == np.float32
        assert len(chunk.samples) == 2400 and chunk.samples[0] == pytest.approx(0.25)
    assert not any(c for c in fake.calls if c[0] == "transcript")  # the model transcribes nothing


async def test_closing_early_stops_generation_and_frees_the_model():
    backend, fake = bound(replies=None)  # an endless reply
    async with aclosing(backend.converse(SpeechRequest(history=(), text="go on"))) as pieces:
        got = [await anext(pieces), await anext(pieces)]
    assert isinstance(got[0], TextDelta) and isinstance(got[1], AudioChunk)
    assert await asyncio.to_thread(fake.generator_closed.wait, 2.0), "generation still running"
    pulled = fake.pulled
    assert pulled < 10  # the pieces taken, plus at most the bounded queue's worth
    await asyncio.sleep(0.05)
    assert fake.pulled == pulled and fake.calls[-1] == ("reset",)
    fake.replies = 1  # the lock was released: the next reply runs
    assert len(await asyncio.wait_for(collect(backend, SpeechRequest(history=(), text="x")), 2.0)) == 2


async def test_replies_take_turns_on_one_model():
    backend, fake = bound(replies=4)
    await asyncio.gather(*(collect(backend, SpeechRequest(history=(), text=str(i))) for i in range(3)))
    order = [c[1] for c in fake.calls if c[0] in ("prefill", "generate")]
    runs = [s for i, s in enumerate(order) if i == 0 or order[i - 1] != s]
    assert len(runs) == 3 == len(set(runs))  # each reply's calls all together, never interleaved


def test_a_model_without_the_streaming_api_is_refused():
    backend = MiniCPMO(MiniCPMO.Options())
    with pytest.raises(RuntimeError, match="streaming_generate"):
        backend._bind(SimpleNamespace(reset_session=lambda: None, streaming_prefill=lambda **k: None),
                      "tok")
