"""The web page's files: served by name from signaling/static/, nothing else; the page asks for
what the protocol needs (checked in a real browser by tests/cluster/test_browser.py)."""

from fastapi import FastAPI
from fastapi.testclient import TestClient

from signaling import web


def client() -> TestClient:
    app = FastAPI()
    app.get("/")(web.index)
    app.get("/static/{name}")(web.static_file)
    return TestClient(app)


def test_the_page_and_its_files_are_served_with_their_types():
    c = client()
    page = c.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert '<video id="avatar"' in page.text and "/static/app.js" in page.text
    assert '<canvas id="face"' in page.text and "/static/face.js" in page.text
    assert "/static/style.css" in page.text
    js = c.get("/static/app.js")
    assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript")
    assert c.get("/static/style.css").headers["content-type"].startswith("text/css")
    assert page.headers["cache-control"] == "no-cache"


def test_only_files_in_the_folder_are_served():
    c = client()
    for name in ("missing.js", "..%2Fweb.py", "web.py", "..%2F..%2Fpyproject.toml"):
        assert c.get(f"/static/{name}").status_code == 404, name


def test_the_page_speaks_the_protocol():
    js = (web.STATIC_DIR / "app.js").read_text()
    for needle in ('createDataChannel("events")', '"application/sdp"', '"/v1/sessions"', '"/v1/ice"',
                   'direction: "recvonly"', 'direction: "sendrecv"', "echoCancellation: true",
                   "noiseSuppression: true", "autoGainControl: true", 'method: "DELETE", keepalive: true',
                   '{type: "interrupt"}', '{type: "text", text}', "iceGatheringState", "Retry-After",
                   "NotAllowedError", 'createDataChannel("motion", {ordered: false, maxRetransmits: 0})',
                   '"/v1/avatar"', "?render=", "askedRender()"):
        assert needle in js, needle
