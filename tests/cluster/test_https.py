"""HTTPS from Serve's own proxy (http_options.ssl_certfile/ssl_keyfile) with a certificate made by
`avatar-chat cert`, and bearer tokens on the API (access.*), as a deployment beyond loopback runs:
health check, the token checks, and one live WebRTC session over the HTTPS signaling (own small
cluster, scripted stages so start-up is quick)."""

import httpx
import pytest
import yaml

from avatarchat.client.cert import write_pair
from avatarchat.local_cluster import ROOT, ServeCluster
from avatarchat.client.avatar_client import AvatarClient, SessionRefused
from tests.cluster.test_browser import browser_page, chromium, mic_wav  # noqa: F401 - fixtures

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(420)]

TOKENS = {"AC_TEST_USER_TOKEN": "user-7c1d0e", "AC_TEST_OPERATOR_TOKEN": "operator-93b2aa"}
USER, OPERATOR = TOKENS["AC_TEST_USER_TOKEN"], TOKENS["AC_TEST_OPERATOR_TOKEN"]


@pytest.fixture(scope="module")
def https_service(tmp_path_factory):
    cert, key = write_pair(tmp_path_factory.mktemp("certs"), ["127.0.0.1"])
    doc = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    args = doc["applications"][0]["args"]
    args["stages"] = {"asr": {"backend": "scripted"}, "llm": {"backend": "scripted"},
                      "tts": {"backend": "scripted"}, "avatar": {"backend": "scripted"}}
    args["sessions"] = {**args.get("sessions", {}), "host_addresses": ["127.0.0.1"]}
    args["access"] = {"user_token_env": "AC_TEST_USER_TOKEN", "operator_token_env": "AC_TEST_OPERATOR_TOKEN"}
    doc["http_options"].update({"ssl_certfile": str(cert), "ssl_keyfile": str(key)})
    cluster = ServeCluster(doc, extra_env=TOKENS).start()
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


def test_the_api_needs_its_tokens(https_service):
    service, _ = https_service

    def get(method, path, token=None, headers=None, **kw):
        headers = {**(headers or {}), **({"Authorization": f"Bearer {token}"} if token else {})}
        return httpx.request(method, f"{service.url}{path}", headers=headers, verify=service.verify,
                             timeout=30, **kw).status_code

    offer = {"content": "v=0\r\n", "headers": {"content-type": "application/sdp"}}
    assert get("GET", "/healthz") == 200 and get("GET", "/") == 200  # the page loads to ask for one
    assert get("POST", "/v1/sessions", **offer) == 401
    assert get("POST", "/v1/sessions", "wrong", **offer) == 401
    assert get("POST", "/v1/sessions", USER, **offer) == 400  # let through: the offer is what is wrong
    assert get("POST", "/v1/turns", json={"text": "hi"}) == 401
    assert get("GET", "/v1/ice") == 401 and get("GET", "/v1/ice", USER) == 200
    assert get("GET", "/v1/info") == 401 and get("GET", "/v1/info", USER) == 200
    for path in ("/v1/diagnostics", "/v1/stages", "/docs", "/openapi.json"):
        assert get("GET", path) == 401 and get("GET", path, USER) == 401, path
        assert get("GET", path, OPERATOR) == 200, path
    assert get("GET", "/v1/sessions", OPERATOR) == 200  # the operator's token opens user routes too


async def test_a_live_session_over_https_signaling(https_service):
    service, cert = https_service
    refused = AvatarClient(service.url, host_addresses=["127.0.0.1"], verify=cert)
    with pytest.raises(SessionRefused) as err:
        await refused.connect()
    assert err.value.status == 401 and "Authorization: Bearer" in str(err.value)
    client = AvatarClient(service.url, host_addresses=["127.0.0.1"], verify=cert, token=USER)
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


async def test_offers_that_never_connect_are_bounded_per_client_address(https_service):
    """Through Serve's proxy the Gateway sees the client's address: a third offer from it that is
    still connecting is refused (429) while the server still has room for others."""
    from aiortc import RTCConfiguration, RTCPeerConnection

    from avatarchat.webrtc.service import use_host_addresses

    use_host_addresses(["127.0.0.1"])
    service, _ = https_service
    headers = {"content-type": "application/sdp", "authorization": f"Bearer {USER}"}
    peers, locations = [], []
    try:
        async with httpx.AsyncClient(verify=service.verify, timeout=30) as http:
            codes = []
            for _ in range(3):
                pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))  # no STUN: nothing leaves
                peers.append(pc)
                pc.addTransceiver("audio")
                pc.createDataChannel("events")
                await pc.setLocalDescription(await pc.createOffer())
                r = await http.post(f"{service.url}/v1/sessions", content=pc.localDescription.sdp,
                                    headers=headers)
                codes.append(r.status_code)
                if r.status_code == 201:
                    locations.append(r.headers["location"])
            assert codes == [201, 201, 429], codes
            assert int(r.headers["retry-after"]) >= 1 and "connect" in r.json()["error"]
            for location in locations:
                assert (await http.delete(f"{service.url}{location}", headers=headers)).status_code == 204
    finally:
        for pc in peers:
            await pc.close()


async def test_the_page_asks_for_the_token_and_then_talks(https_service, chromium, mic_wav, tmp_path):
    """In Chromium: Start without a token shows the token field and why; with the token typed in,
    the session connects and a typed question is answered."""
    import os

    if os.environ.get("AVATAR_CHAT_SKIP_BROWSER") == "1":
        pytest.skip("AVATAR_CHAT_SKIP_BROWSER=1")
    service, _ = https_service
    # the service's self-signed certificate is this test's own
    async with browser_page(chromium, mic_wav, tmp_path / "profile", ("--ignore-certificate-errors",)) as page:
        await page.goto(f"{service.url}/")
        assert await page.is_hidden("#token-box")
        await page.click("#start")
        await page.wait_for_selector('#notice[data-reason="needs-token"]', timeout=15_000)
        assert "access token" in await page.text_content("#notice")
        assert await page.is_visible("#token-box")
        await page.wait_for_selector('#state[data-state="off"]')
        await page.fill("#token", USER)
        await page.click("#start")
        await page.wait_for_selector('#state[data-state="listening"]', timeout=20_000)
        assert await page.is_hidden("#notice"), await page.text_content("#notice")
        await page.fill("#text", "What is your name?")
        await page.click("#send")
        await page.wait_for_selector(".line.avatar.final", timeout=60_000)
        await page.click("#stop")
        await page.wait_for_selector('#state[data-state="off"]')
