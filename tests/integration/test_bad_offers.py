"""Offers the session service must refuse, without Ray: broken or unworkable SDP gets a 400 with a
reason the sender can act on, and one client address cannot hold more than
``sessions.max_pending_per_client`` sessions that have not connected (429). Nothing refused may
keep a session's place."""

import asyncio
import logging
import re

import httpx
import pytest
from aiortc import RTCPeerConnection

from avatarchat.webrtc import service as service_module
from avatarchat.client.avatar_client import SessionRefused
from tests.integration.test_sessions_local import client_for, make_app

pytestmark = pytest.mark.timeout(120)

SDP = {"content-type": "application/sdp"}


async def real_offer() -> list[str]:
    """An offer as aiortc makes it (audio, video, the events data channel), as lines."""
    pc = RTCPeerConnection()
    pc.addTransceiver("audio")
    pc.addTransceiver("video")
    pc.createDataChannel("events")
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    await pc.close()
    return sdp.split("\r\n")


def drop(*prefixes):
    return lambda lines: [line for line in lines if not line.startswith(prefixes)]


def edit(prefix: str, change):
    return lambda lines: [change(line) if line.startswith(prefix) else line for line in lines]


def section(lines: list[str], kind: str) -> list[str]:
    start = next(i for i, line in enumerate(lines) if line.startswith(f"m={kind}"))
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("m=")), len(lines))
    return lines[start:end]


def cut(lines: list[str], at: str, keep: int) -> list[str]:
    text = "\r\n".join(lines)
    return text[:text.index(at) + keep].split("\r\n")


def no_codec_in_common(lines):
    lines = edit("m=audio", lambda l: re.sub(r"SAVPF .*", "SAVPF 96", l))(lines)
    lines = drop("a=rtpmap:9 ", "a=rtpmap:0 ", "a=rtpmap:8 ")(lines)
    return edit("a=rtpmap:96 ", lambda l: "a=rtpmap:96 speex/16000")(lines)


# (what is wrong, how, words the reason must hold)
BROKEN = [
    ("not SDP", lambda lines: ["hello"], "v=0"),
    ("no audio section", lambda lines: [l for l in lines if l not in section(lines, "audio")], "audio section"),
    ("no a=fingerprint", drop("a=fingerprint"), "a=fingerprint"),
    ("an md5 fingerprint only", lambda lines: [l.replace("sha-256", "md5") for l in drop(
        "a=fingerprint:sha-384", "a=fingerprint:sha-512")(lines)], "md5"),
    ("no a=ice-ufrag", drop("a=ice-ufrag"), "a=ice-ufrag"),
    ("no a=ice-pwd", drop("a=ice-pwd"), "a=ice-pwd"),
    ("no a=setup", drop("a=setup"), "a=setup"),
    ("a=setup:holdconn", edit("a=setup", lambda l: "a=setup:holdconn"), "'a=setup:holdconn'"),
    ("audio on port 0", edit("m=audio", lambda l: re.sub(r"^m=audio \d+", "m=audio 0", l)), "port 0"),
    ("a garbage m= line", edit("m=video", lambda l: "m=video what is this"), "'m=video what is this'"),
    ("a non-numeric port", edit("m=audio", lambda l: re.sub(r"^m=audio \d+", "m=audio abc", l)), "'m=audio abc"),
    ("payload type 300", edit("m=audio", lambda l: re.sub(r"SAVPF 96", "SAVPF 300", l)), "could not parse line"),
    ("cut short", lambda lines: cut(lines, "m=video", 0), ""),
    ("cut mid-line", lambda lines: cut(lines, "a=rtpmap:96", 14), "could not parse line"),
    ("a section twice", lambda lines: lines + section(lines, "audio"), "a=mid:0"),
    ("two sections, one mid", edit("a=mid:1", lambda l: "a=mid:0"), "repeats a=mid:0"),
    ("no a=mid", drop("a=mid"), "a=mid"),
    ("a BUNDLE naming no section", edit("a=group:BUNDLE", lambda l: l + " 7"), "mid '7'"),
    ("no c= line", drop("c="), "c= line"),
    ("no a=rtcp-mux", drop("a=rtcp-mux"), "a=rtcp-mux"),
    ("no direction", drop("a=sendrecv"), "a=sendrecv"),
    ("a=fmtp of no codec", edit("a=fmtp:98", lambda l: "a=fmtp:55 apt=97"), "'a=fmtp:55 apt=97'"),
    ("an a=fmtp parameter without its value", edit("a=fmtp:99", lambda l: "a=fmtp:99 packetization-mode"),
     "a=fmtp:99"),
    ("no codec in common", no_codec_in_common, "no codec"),
    ("a kind aiortc cannot answer", edit("m=video", lambda l: l.replace("m=video", "m=text")), "m=text"),
    ("a=msid without a track id", edit("a=msid:", lambda l: l.split(" ")[0] + " "), "a=msid"),
    ("a data channel without a=sctp-port", drop("a=sctp-port"), "a=sctp-port"),
]


def assert_actionable(reason: str) -> None:
    assert reason.strip(), "an empty reason"
    for internal in ("StopIteration", "Traceback", "NoneType", "has no attribute", "list index"):
        assert internal not in reason, reason


@pytest.mark.parametrize("name,mutate,words", BROKEN, ids=[b[0] for b in BROKEN])
async def test_a_broken_offer_is_refused_with_a_reason_and_holds_nothing(name, mutate, words):
    app, service = make_app()
    lines = await real_offer()
    offer = "\r\n".join(mutate(lines))
    assert offer != "\r\n".join(lines)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://test") as http:
        r = await http.post("/v1/sessions", content=offer, headers=SDP)
        assert r.status_code == 400, (r.status_code, r.text)
        reason = r.json()["error"]
        assert_actionable(reason)
        assert words in reason, reason
        assert len(service) == 0 and service.registry._reserved == 0
        # the offer as it was is still answered
        r = await http.post("/v1/sessions", content="\r\n".join(lines), headers=SDP)
        assert r.status_code == 201, r.text
    await service.close_all()


async def test_what_aiortc_fails_on_past_the_checks_is_logged_and_answered_in_words(monkeypatch, caplog):
    """Without check_offer, aiortc's parser ends in 'coroutine raised StopIteration': that goes to
    the log, the sender gets a sentence naming what to check, and no place stays held."""
    monkeypatch.setattr(service_module, "check_offer", lambda sdp: None)
    app, service = make_app()
    offer = "\r\n".join(edit("a=fmtp:98", lambda l: "a=fmtp:55 apt=97")(await real_offer()))
    serve_log = logging.getLogger("ray.serve")
    serve_log.addHandler(caplog.handler)  # whether or not Ray stops it propagating to the root
    caplog.set_level(logging.WARNING, logger="ray.serve")
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://test") as http:
            r = await http.post("/v1/sessions", content=offer, headers=SDP)
    finally:
        serve_log.removeHandler(caplog.handler)
    assert r.status_code == 400
    assert_actionable(r.json()["error"])
    assert "createOffer()" in r.json()["error"]
    assert any("offer refused" in rec.getMessage() for rec in caplog.records)
    assert "StopIteration" in caplog.text
    assert len(service) == 0 and service.registry._reserved == 0
    await service.close_all()


def http_from(app, address: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app, client=(address, 50000)), base_url="http://test")


async def test_one_address_cannot_fill_the_server_with_offers_that_never_connect():
    app, service = make_app(max_sessions=3)  # max_pending_per_client: 2 by default
    offer = "\r\n".join(await real_offer())  # nobody answers its ICE: it never connects
    async with http_from(app, "10.0.0.1") as mallory, http_from(app, "10.0.0.2") as alice:
        first = await mallory.post("/v1/sessions", content=offer, headers=SDP)
        second = await mallory.post("/v1/sessions", content=offer, headers=SDP)
        assert first.status_code == second.status_code == 201
        third = await mallory.post("/v1/sessions", content=offer, headers=SDP)
        assert third.status_code == 429, third.text
        assert "max_pending_per_client=2" in third.json()["error"]
        assert 1 <= int(third.headers["retry-after"]) <= service.options.retry_after_s
        assert len(service) == 2 and service.registry._reserved == 0
        # the server is not full for everyone else
        assert (await alice.post("/v1/sessions", content=offer, headers=SDP)).status_code == 201
        # one ended: that address may offer again
        assert (await mallory.delete(first.headers["location"])).status_code == 204
        assert (await mallory.post("/v1/sessions", content=offer, headers=SDP)).status_code == 201
    await service.close_all()


async def test_a_connected_session_no_longer_counts_as_pending():
    app, service = make_app(max_sessions=4)
    offer = "\r\n".join(await real_offer())
    connected = client_for(app)  # the ASGI transport's own address: 127.0.0.1
    async with http_from(app, "127.0.0.1") as http:
        assert (await http.post("/v1/sessions", content=offer, headers=SDP)).status_code == 201
        await connected.connect()  # pending while it connects, then not
        try:
            session = service.registry.get(connected.session_id)
            for _ in range(50):  # the server sees "connected" as the client's channel opens
                if session.connected_at is not None:
                    break
                await asyncio.sleep(0.1)
            assert (await http.post("/v1/sessions", content=offer, headers=SDP)).status_code == 201
            refused = await http.post("/v1/sessions", content=offer, headers=SDP)
            assert refused.status_code == 429, refused.text
        finally:
            await connected.close()
    await service.close_all()


async def test_the_client_retries_a_429_after_its_retry_after():
    app, service = make_app(max_sessions=4, retry_after_s=1)
    offer = "\r\n".join(await real_offer())
    async with http_from(app, "127.0.0.1") as http:
        pending = [await http.post("/v1/sessions", content=offer, headers=SDP) for _ in range(2)]
        assert [r.status_code for r in pending] == [201, 201]

        async def hang_up_one():
            await asyncio.sleep(0.5)
            await http.delete(pending[0].headers["location"])

        hanging_up = asyncio.ensure_future(hang_up_one())
        client = client_for(app)
        try:
            await client.connect()  # 429 first, then accepted after Retry-After (1 s)
            assert client.connect_s >= 1.0
        finally:
            await hanging_up
            await client.close()
        # the retries are bounded: with nothing hung up, the client gives up with the 429
        more = await http.post("/v1/sessions", content=offer, headers=SDP)
        assert more.status_code == 201
        stubborn = client_for(app)
        with pytest.raises(SessionRefused) as refused:
            await stubborn.connect()
        assert refused.value.status == 429 and refused.value.retry_after == "1"
    await service.close_all()
