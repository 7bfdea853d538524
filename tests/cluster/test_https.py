"""HTTPS from Serve's own proxy (http_options.ssl_certfile/ssl_keyfile) with a certificate made by
`avatar-chat cert`: health check and one live WebRTC session over the HTTPS signaling (own small
cluster, scripted stages so start-up is quick)."""

import httpx
import pytest
import yaml

from avatarchat.client.cert import write_pair
from avatarchat.local_cluster import ROOT, ServeCluster
from signaling.client import AvatarClient

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(420)]


@pytest.fixture(scope="module")
def https_service(tmp_path_factory):
    cert, key = write_pair(tmp_path_factory.mktemp("certs"), ["127.0.0.1"])
    doc = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    args = doc["applications"][0]["args"]
    args["stages"] = {"asr": {"backend": "scripted"}, "llm": {"backend": "scripted"},
                      "tts": {"backend": "scripted"}, "avatar": {"backend": "scripted"}}
    args["sessions"] = {**args.get("sessions", {}), "host_addresses": ["127.0.0.1"]}
    doc["http_options"].update({"ssl_certfile": str(cert), "ssl_keyfile": str(key)})
    cluster = ServeCluster(doc)
    try:
        cluster.start()
    except Exception:
        cluster.stop()
        raise
    yield cluster, cert
    cluster.stop()


def test_serves_https_with_the_given_certificate_and_not_plain_http(https_service):
    service, cert = https_service
    assert service.url.startswith("https://127.0.0.1:")
    assert httpx.get(f"{service.url}/healthz", verify=service.verify, timeout=10).status_code == 200
    with pytest.raises(httpx.ConnectError):  # the self-signed certificate is not trusted by default
        httpx.get(f"{service.url}/healthz", timeout=10)
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{service.http_port}/healthz", timeout=10)


async def test_a_live_session_over_https_signaling(https_service):
    service, cert = https_service
    client = AvatarClient(service.url, host_addresses=["127.0.0.1"], verify=cert)
    await client.connect()
    try:
        client.send_text("What is your name?")
        done = await client.wait_for_event(
            lambda e: e["type"] == "transcript" and e["role"] == "avatar" and e["final"], 60)
        assert done["text"].strip()
        assert client.events_of("transcript", role="user", text="What is your name?")
    finally:
        status = await client.close()
    assert status == 204
