"""HTTPS: `avatar-chat cert` makes a usable self-signed pair; `python -m avatarchat.config` checks
http_options.ssl_certfile/ssl_keyfile at start-up, naming the file and key."""

import ipaddress
import ssl
import stat

import pytest
import yaml
from cryptography import x509

from avatarchat.client.cli import main as cli
from avatarchat.config import main as check_config
from avatarchat.local_cluster import ROOT


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    out = tmp_path_factory.mktemp("certs")
    assert cli(["cert", "--host", "192.168.1.20", "--host", "avatar.lan", "--out", str(out), "--days", "30"]) == 0
    return out / "cert.pem", out / "key.pem"


def config_with(tmp_path, **http_options):
    doc = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    doc["http_options"].update({k: str(v) for k, v in http_options.items()})
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def error_of(path, capsys) -> str:
    assert check_config([str(path)]) == 1
    return capsys.readouterr().err


def test_cert_writes_a_loadable_pair_for_the_hosts_with_a_private_key(pair, capsys):
    cert_path, key_path = pair
    ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert_path, key_path)
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.IPAddress)) == {ipaddress.ip_address("192.168.1.20"),
                                                           ipaddress.ip_address("127.0.0.1")}
    assert set(san.get_values_for_type(x509.DNSName)) == {"avatar.lan", "localhost"}
    assert cert.issuer == cert.subject
    assert 29 <= (cert.not_valid_after_utc - cert.not_valid_before_utc).days <= 31


def test_cert_prints_the_config_lines_and_refuses_to_overwrite(tmp_path, capsys):
    assert cli(["cert", "--host", "10.0.0.5", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"ssl_certfile: {tmp_path / 'cert.pem'}" in out and f"ssl_keyfile: {tmp_path / 'key.pem'}" in out
    before = (tmp_path / "cert.pem").read_bytes()
    assert cli(["cert", "--host", "10.0.0.5", "--out", str(tmp_path)]) == 1
    assert "--force" in capsys.readouterr().err
    assert (tmp_path / "cert.pem").read_bytes() == before
    assert cli(["cert", "--host", "10.0.0.5", "--out", str(tmp_path), "--force"]) == 0
    assert (tmp_path / "cert.pem").read_bytes() != before


def test_a_good_pair_passes(pair, tmp_path, capsys):
    cert_path, key_path = pair
    assert check_config([str(config_with(tmp_path, ssl_certfile=cert_path, ssl_keyfile=key_path))]) == 0
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("given,missing", [("ssl_certfile", "ssl_keyfile"), ("ssl_keyfile", "ssl_certfile")])
def test_one_key_without_the_other_fails(pair, tmp_path, capsys, given, missing):
    path = config_with(tmp_path, **{given: pair[0] if given == "ssl_certfile" else pair[1]})
    err = error_of(path, capsys)
    assert f"{path}: http_options.{missing}: missing" in err
    assert "allowed: both ssl_certfile and ssl_keyfile, or neither" in err


def test_a_missing_file_fails_naming_the_key(pair, tmp_path, capsys):
    path = config_with(tmp_path, ssl_certfile=pair[0], ssl_keyfile=tmp_path / "nope.pem")
    err = error_of(path, capsys)
    assert f"{path}: http_options.ssl_keyfile: no such file: {tmp_path / 'nope.pem'}" in err


def test_a_key_that_is_not_the_certificates_fails(pair, tmp_path, capsys):
    other = tmp_path / "other"
    assert cli(["cert", "--host", "10.0.0.6", "--out", str(other)]) == 0
    path = config_with(tmp_path, ssl_certfile=pair[0], ssl_keyfile=other / "key.pem")
    err = error_of(path, capsys)
    assert f"{path}: http_options.ssl_keyfile:" in err and "do not load as a certificate" in err


def test_plain_http_off_loopback_warns_but_passes(tmp_path, capsys):
    path = config_with(tmp_path, host="0.0.0.0")
    doc = yaml.safe_load(path.read_text())  # open beyond loopback, said explicitly (docs/deployment.md)
    doc["applications"][0]["args"]["access"] = {"allow_open_beyond_loopback": True}
    path.write_text(yaml.safe_dump(doc))
    assert check_config([str(path)]) == 0
    err = capsys.readouterr().err
    assert "config warning" in err and "microphone" in err and "docs/deployment.md" in err
