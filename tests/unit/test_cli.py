"""The command-line client's own error handling (no service needed)."""

from avatarchat.client.cli import main


def test_an_unreachable_server_is_a_clear_error(capsys):
    assert main(["--server", "http://127.0.0.1:9", "turn", "--text", "hi"]) == 1
    assert "cannot reach http://127.0.0.1:9" in capsys.readouterr().err
    assert main(["--server", "http://127.0.0.1:9", "info"]) == 1


def test_a_missing_wav_file_is_a_clear_error(capsys, tmp_path):
    assert main(["turn", "--wav", str(tmp_path / "nope.wav")]) == 2
    assert "no such file" in capsys.readouterr().err
