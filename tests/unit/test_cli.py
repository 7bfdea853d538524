"""The command-line client's own error handling (no service needed)."""

from avatarchat.client.cli import main


def test_an_unreachable_server_is_a_clear_error(capsys):
    assert main(["--server", "http://127.0.0.1:9", "turn", "--text", "hi"]) == 1
    assert "cannot reach http://127.0.0.1:9" in capsys.readouterr().err
    assert main(["--server", "http://127.0.0.1:9", "info"]) == 1


def test_a_missing_wav_file_is_a_clear_error(capsys, tmp_path):
    assert main(["turn", "--wav", str(tmp_path / "nope.wav")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_models_list_shows_each_model_and_where_it_goes(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("AVATAR_CHAT_MODELS", str(tmp_path))
    (tmp_path / "sensevoice-small").mkdir()
    (tmp_path / "sensevoice-small" / "model.pt").write_bytes(b"x")
    assert main(["models", "list"]) == 0
    out = capsys.readouterr().out
    assert f"models directory: {tmp_path}" in out
    lines = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert "fetched" in lines["sensevoice-small"] and "modelscope:iic/SenseVoiceSmall" in lines["sensevoice-small"]
    assert "fetched" not in lines["cosyvoice2-0.5b"]


def test_models_fetch_without_the_hub_library_says_what_to_install(capsys, tmp_path, monkeypatch):
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "modelscope" else real(name, *a))
    monkeypatch.setenv("AVATAR_CHAT_MODELS", str(tmp_path))
    assert main(["models", "fetch", "sensevoice-small"]) == 2
    assert "pip install modelscope" in capsys.readouterr().err
    assert not (tmp_path / "sensevoice-small").exists()
