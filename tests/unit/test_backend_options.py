"""Options of the embedded CPU backends: defaults, and errors that name the key (no weights needed)."""

import subprocess
import sys

import pytest

from avatarchat.backends.base import create_backend
from avatarchat.config import parse_config, parse_stage
from avatarchat.errors import ConfigError, StageLoadError
from avatarchat.registry import backend_class

EMBEDDED = [("vad", "silero"), ("asr", "faster_whisper"), ("llm", "llama_cpp"),
            ("llm", "openai_compat"), ("tts", "hibari")]


def config_error(stages: dict) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_config({"stages": {"avatar": {"backend": "scripted"}, **stages}})
    return info.value


def test_defaults_are_the_embedded_stack():
    cfg = parse_config({"stages": {"avatar": {"backend": "scripted"}}})
    assert {s: cfg.stage(s).backend for s in ("vad", "asr", "llm", "tts")} == {
        "vad": "silero", "asr": "faster_whisper", "llm": "llama_cpp", "tts": "hibari"}
    assert cfg.stage("asr").options.beam_size == 1
    assert cfg.stage("vad").options.end_ms == 600
    assert cfg.stage("llm").options.max_tokens == 48
    assert cfg.stage("tts").options.voice == "heart"


@pytest.mark.parametrize("stage,name", EMBEDDED)
def test_every_option_has_a_default_and_a_description(stage, name):
    fields = backend_class(stage, name).Options.model_fields
    assert fields
    for key, field in fields.items():
        assert not field.is_required(), f"{name}.{key} has no default"
        assert field.description, f"{name}.{key} has no description"


def test_misspelt_key_names_the_dotted_key_and_lists_allowed_keys():
    err = config_error({"asr": {"backend": "faster_whisper", "beam_sizee": 2}})
    assert err.key == "stages.asr.beam_sizee"
    assert "unknown key" in err.message
    for allowed in ("beam_size", "compute_type", "cpu_threads", "model_path"):
        assert allowed in err.message


@pytest.mark.parametrize("stage,name,key", [
    ("vad", "silero", "treshold"), ("llm", "llama_cpp", "max_token"),
    ("llm", "openai_compat", "api_key"), ("tts", "hibari", "voices")])
def test_unknown_key_for_each_backend(stage, name, key):
    err = config_error({stage: {"backend": name, key: 1}})
    assert err.key == f"stages.{stage}.{key}"
    assert "allowed keys" in err.message


def test_unknown_backend_lists_the_allowed_ones():
    err = config_error({"asr": {"backend": "whisperx"}})
    assert err.key == "stages.asr.backend"
    assert "'whisperx'" in err.message and "faster_whisper" in err.message


@pytest.mark.parametrize("stage,options,key", [
    ("vad", {"threshold": 1.5}, "stages.vad.threshold"),
    ("vad", {"end_ms": "long"}, "stages.vad.end_ms"),
    ("asr", {"compute_type": "int4"}, "stages.asr.compute_type"),
    ("asr", {"beam_size": 0}, "stages.asr.beam_size"),
    ("llm", {"n_ctx": "lots"}, "stages.llm.n_ctx"),
    ("llm", {"temperature": -1}, "stages.llm.temperature"),
    ("tts", {"speed": 5}, "stages.tts.speed"),
])
def test_bad_value_names_the_key_and_the_value(stage, options, key):
    err = config_error({stage: options})
    assert err.key == key
    assert "got" in err.message


def test_vad_thresholds_must_be_ordered():
    err = config_error({"vad": {"threshold": 0.3, "neg_threshold": 0.6}})
    assert err.key.startswith("stages.vad")
    assert "neg_threshold" in err.message


def test_only_bundled_tts_voices_are_accepted():
    err = config_error({"tts": {"backend": "hibari", "voice": "emma"}})
    assert err.key == "stages.tts.voice"
    assert "download" in err.message and "heart" in err.message


@pytest.mark.parametrize("options,key,words", [
    ({"base_url": "ftp://host/v1"}, "stages.llm.base_url", "http"),
    ({"api_key_env": "sk-secret-key-123"}, "stages.llm.api_key_env", "NAME"),
])
def test_openai_compat_option_errors(options, key, words):
    err = config_error({"llm": {"backend": "openai_compat", **options}})
    assert err.key == key and words in err.message


def test_openai_compat_missing_key_env_fails_the_stage(monkeypatch):
    monkeypatch.delenv("AVATARCHAT_TEST_NO_SUCH_KEY", raising=False)
    stage = parse_stage("test", "llm", {"backend": "openai_compat",
                                        "api_key_env": "AVATARCHAT_TEST_NO_SUCH_KEY"})
    with pytest.raises(StageLoadError) as info:
        create_backend(stage)
    assert info.value.stage == "llm" and "AVATARCHAT_TEST_NO_SUCH_KEY" in str(info.value)


@pytest.mark.parametrize("stage,name", [("vad", "silero"), ("asr", "faster_whisper"),
                                        ("llm", "llama_cpp")])
def test_missing_model_file_is_a_stage_load_error(tmp_path, stage, name):
    missing = tmp_path / "no-such-model"
    config = parse_stage("test", stage, {"backend": name, "model_path": str(missing)})
    with pytest.raises(StageLoadError) as info:
        create_backend(config)
    err = info.value
    assert err.stage == stage and err.backend == name
    assert f"stage '{stage}'" in str(err) and str(missing) in str(err)


def test_backend_modules_import_without_their_heavy_libraries():
    heavy = ["llama_cpp", "faster_whisper", "ctranslate2", "onnxruntime", "hibari", "httpx", "torch"]
    code = ("import sys\n"
            "import avatarchat.backends.vad.silero, avatarchat.backends.asr.faster_whisper\n"
            "import avatarchat.backends.llm.llama_cpp, avatarchat.backends.llm.openai_compat\n"
            "import avatarchat.backends.tts.hibari, avatarchat.segmenter\n"
            f"print(sorted(m for m in {heavy!r} if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
