"""The sessions: config block, ICE settings and the cheap offer checks (no peer connection)."""

import aioice.ice
import pytest

from avatarchat.config import parse_config
from avatarchat.errors import ConfigError
from avatarchat.webrtc.service import BadOffer, check_offer, ice_configuration, ice_servers, use_host_addresses


def test_defaults_are_private_and_bounded():
    s = parse_config({}).sessions
    assert s.max_sessions == 3 and s.ice_servers == [] and s.host_addresses == []
    assert s.media_timeout_s < 10 and s.max_offer_bytes > 0
    assert ice_configuration(s).iceServers == []  # no STUN: nothing leaves the machine


def test_unknown_session_keys_are_named():
    with pytest.raises(ConfigError, match="sessions.max_session"):
        parse_config({"sessions": {"max_session": 3}})


def test_turn_password_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("TURN_PW", "s3cret")
    cfg = parse_config({"sessions": {"ice_servers": [
        {"urls": ["turn:turn.example.org:3478"], "username": "u", "credential_env": "TURN_PW"},
        {"urls": ["stun:stun.example.org:3478"]}]}})
    turn, stun = ice_configuration(cfg.sessions).iceServers
    assert turn.credential == "s3cret" and turn.username == "u" and stun.credential is None


def test_browser_ice_servers_carry_resolved_passwords_never_variable_names(monkeypatch):
    monkeypatch.setenv("TURN_PW", "s3cret")
    cfg = parse_config({"sessions": {"ice_servers": [
        {"urls": ["turn:turn.example.org:3478"], "username": "u", "credential_env": "TURN_PW"},
        {"urls": ["stun:stun.example.org:3478"]}]}})
    assert ice_servers(cfg.sessions) == [
        {"urls": ["turn:turn.example.org:3478"], "username": "u", "credential": "s3cret"},
        {"urls": ["stun:stun.example.org:3478"]}]
    assert "TURN_PW" not in repr(ice_servers(cfg.sessions))
    assert ice_servers(parse_config({}).sessions) == []


def test_host_addresses_replace_aioices_choice(monkeypatch):
    monkeypatch.setattr(aioice.ice, "get_host_addresses", aioice.ice.get_host_addresses)
    use_host_addresses(["127.0.0.1"])
    assert aioice.ice.get_host_addresses(use_ipv4=True, use_ipv6=False) == ["127.0.0.1"]


@pytest.mark.parametrize("sdp,reason", [
    ("", "must start with 'v=0'"),
    ("hello", "must start with 'v=0'"),
    ("v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n", "no audio"),
])
def test_offers_without_sdp_or_audio_are_refused(sdp, reason):
    with pytest.raises(BadOffer, match=reason):
        check_offer(sdp)
