"""The production models' catalog: where weights are looked for, the missing-weights error, fetch."""

from pathlib import Path

import pytest

from avatarchat import models
from avatarchat.backends.asr.faster_whisper import FasterWhisperASR, bundled_model_path
from avatarchat.backends.base import create_backend
from avatarchat.config import StageConfig
from avatarchat.errors import StageLoadError


@pytest.fixture
def models_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("AVATAR_CHAT_MODELS", str(tmp_path / "models"))
    return tmp_path / "models"


def test_missing_weights_name_the_path_and_the_fetch_command(models_dir):
    with pytest.raises(models.MissingWeights) as err:
        models.resolve(None, "sensevoice-small", ["model.pt"])
    assert str(models_dir / "sensevoice-small") in str(err.value)
    assert "avatar-chat models fetch sensevoice-small" in str(err.value)
    (models_dir / "sensevoice-small").mkdir(parents=True)
    with pytest.raises(models.MissingWeights, match="model.pt not found in"):
        models.resolve(None, "sensevoice-small", ["model.pt"])
    (models_dir / "sensevoice-small" / "model.pt").write_bytes(b"x")
    assert models.resolve(None, "sensevoice-small", ["model.pt"]) == models_dir / "sensevoice-small"


def test_a_configured_directory_wins(models_dir, tmp_path):
    (tmp_path / "mine").mkdir()
    assert models.resolve(tmp_path / "mine", "sensevoice-small", []) == tmp_path / "mine"


def test_fetch_uses_the_models_home_hub_or_a_mirror(models_dir):
    calls = []
    fake = {hub: ("json", lambda repo, dest, hub=hub: calls.append((hub, repo, dest)))
            for hub in ("modelscope", "huggingface")}  # "json": a package that is always there
    assert models.fetch("sensevoice-small", downloaders=fake) == models_dir / "sensevoice-small"
    models.fetch("sensevoice-small", hub="huggingface", downloaders=fake)
    assert calls == [("modelscope", "iic/SenseVoiceSmall", models_dir / "sensevoice-small"),
                     ("huggingface", "FunAudioLLM/SenseVoiceSmall", models_dir / "sensevoice-small")]
    with pytest.raises(models.FetchError, match="not on modelscope"):
        models.fetch("whisper-large-v3", hub="modelscope", downloaders=fake)
    with pytest.raises(models.FetchError, match="unknown model 'nope'"):
        models.fetch("nope", downloaders=fake)


def test_fetch_without_the_hub_library_says_what_to_install_and_leaves_nothing(models_dir):
    missing = {"modelscope": ("no_such_package_xyz", lambda repo, dest: None)}
    with pytest.raises(models.FetchError, match="pip install no_such_package_xyz"):
        models.fetch("cosyvoice2-0.5b", downloaders=missing)
    assert not (models_dir / "cosyvoice2-0.5b").exists()


def test_every_catalog_entry_names_a_backend_that_exists():
    from avatarchat import registry
    for spec in models.CATALOG.values():
        stage, backend = spec.backend.split(".")
        assert backend in registry.available(stage), spec


def test_faster_whisper_reads_a_fetched_model_by_name(models_dir):
    config = StageConfig(stage="asr", backend="faster_whisper",
                         options=FasterWhisperASR.Options(model="whisper-large-v3-turbo"))
    with pytest.raises(StageLoadError) as err:
        create_backend(config)
    assert "stage 'asr'" in str(err.value) and "avatar-chat models fetch whisper-large-v3-turbo" in str(err.value)
    # any CTranslate2 Whisper directory under that name loads (here the bundled tiny.en's files)
    (models_dir / "whisper-large-v3-turbo").mkdir(parents=True)
    for f in bundled_model_path().iterdir():
        (models_dir / "whisper-large-v3-turbo" / f.name).symlink_to(f)
    asr = FasterWhisperASR(FasterWhisperASR.Options(model="whisper-large-v3-turbo"))
    asr.load()
    assert asr._model is not None
    asr.close()
