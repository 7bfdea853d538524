"""Time-limited TURN credentials (sessions.ice_servers[].secret_env) against a real TURN server:
Debian's coturn with the same shared secret (``use-auth-secret``), on loopback. A credential from
GET /v1/ice gets a relay allocation; an expired one, or one made with another secret, does not."""

import asyncio
import shutil
import subprocess
import time

import pytest
from aioice import Connection

from avatarchat.config import parse_config
from avatarchat.errors import ConfigError
from avatarchat.local_cluster import free_port
from avatarchat.webrtc.service import check_ice_secrets, ice_configuration, ice_servers, use_host_addresses
from avatarchat.webrtc.turn_credentials import time_limited_credential

pytestmark = pytest.mark.timeout(120)

SECRET = "shared-secret-for-this-test"


def sessions_with(secret_env: str = "AC_TEST_TURN_SECRET", **server):
    cfg = parse_config({"sessions": {"ice_servers": [{"urls": ["turn:127.0.0.1:3478?transport=udp"],
                                                       "secret_env": secret_env, **server}]}})
    return cfg.sessions


@pytest.fixture(scope="module")
def turn_server(tmp_path_factory):
    """coturn on 127.0.0.1 with a shared secret; its port."""
    binary = shutil.which("turnserver")
    assert binary, "coturn is missing: scripts/test.sh installs it with apt (apt-get install coturn)"
    port, log = free_port(), tmp_path_factory.mktemp("coturn") / "turnserver.log"
    proc = subprocess.Popen(
        [binary, "-n", "--listening-ip=127.0.0.1", f"--listening-port={port}", "--relay-ip=127.0.0.1",
         "--min-port=49200", "--max-port=49300", "--realm=avatar-chat.test", "--use-auth-secret",
         f"--static-auth-secret={SECRET}", "--no-tls", "--no-dtls", "--no-cli", "--allow-loopback-peers",
         f"--log-file={log}", "--simple-log", f"--pidfile={log.with_suffix('.pid')}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and proc.poll() is None and f":{port}" not in _listening():
        time.sleep(0.2)
    assert proc.poll() is None, log.read_text(errors="replace")[-2000:] if log.exists() else "coturn exited"
    yield port
    proc.terminate()
    proc.wait(10)


def _listening() -> str:
    return subprocess.run(["ss", "-lun"], capture_output=True, text=True).stdout


async def relay_candidates(port: int, username: str, password: str) -> list:
    use_host_addresses(["127.0.0.1"])
    conn = Connection(ice_controlling=True, turn_server=("127.0.0.1", port), turn_username=username,
                      turn_password=password, turn_transport="udp", use_ipv6=False)
    try:
        await asyncio.wait_for(conn.gather_candidates(), 20)
        return [c for c in conn.local_candidates if c.type == "relay"]
    finally:
        await conn.close()


async def test_a_password_from_the_service_gets_a_relay_and_an_expired_one_does_not(turn_server, monkeypatch):
    monkeypatch.setenv("AC_TEST_TURN_SECRET", SECRET)
    (server,) = ice_servers(sessions_with(credential_ttl_s=3600))
    assert await relay_candidates(turn_server, server["username"], server["credential"])
    expired = time_limited_credential(SECRET, 3600, now=time.time() - 7200)
    assert not await relay_candidates(turn_server, expired.username, expired.password)
    other = time_limited_credential("another secret", 3600)
    assert not await relay_candidates(turn_server, other.username, other.password)


def test_each_page_gets_its_own_expiring_name_and_never_the_secret(monkeypatch):
    monkeypatch.setenv("AC_TEST_TURN_SECRET", SECRET)
    options = sessions_with(credential_ttl_s=7200)
    now = time.time()
    first, second = ice_servers(options, now=now)[0], ice_servers(options, now=now)[0]
    assert first["username"] != second["username"] and first["credential"] != second["credential"]
    expiry, tag = first["username"].split(":")
    assert int(expiry) == int(now) + 7200 and tag
    assert SECRET not in str(first) and "AC_TEST_TURN_SECRET" not in str(first)
    # the server's own peer connections use the same scheme
    (config,) = ice_configuration(options).iceServers
    assert config.username.count(":") == 1 and config.credential


def test_a_missing_secret_or_a_password_shorter_than_a_session_fails_the_start(monkeypatch):
    monkeypatch.delenv("AC_TEST_TURN_SECRET", raising=False)
    with pytest.raises(ConfigError, match=r"sessions\.ice_servers\.0\.secret_env: environment variable "
                                          r"AC_TEST_TURN_SECRET .* is not set"):
        check_ice_secrets(sessions_with())
    with pytest.raises(ConfigError, match=r"sessions\.ice_servers\.0\.credential_ttl_s: 600 s is shorter "
                                          r"than sessions.max_duration_s"):
        sessions_with(credential_ttl_s=600)
    with pytest.raises(ConfigError, match="secret_env makes its own user names"):
        sessions_with(username="fixed")
