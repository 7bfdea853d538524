"""The face drawn in the browser (render=browser, signaling/static/face.js) matches the server's
PortraitRenderer pixel for pixel, within rounding: the page gets the pack from GET /v1/avatar and
draws FaceMotions in Debian's headless Chromium; each is compared with the Python render.

Chromium missing is a failure, as in tests/cluster/test_browser.py; AVATAR_CHAT_SKIP_BROWSER=1
opts out."""

import asyncio
import base64
import os
import socket
import threading

import cv2
import numpy as np
import pytest
import uvicorn
from fastapi import FastAPI, Response

from avatarchat.avatar.browser_pack import browser_pack
from avatarchat.avatar.pack import AvatarPack
from avatarchat.avatar.renderer import PortraitRenderer
from avatarchat.messages import FaceMotion
from signaling import web

pytestmark = [
    pytest.mark.timeout(180),
    pytest.mark.skipif(os.environ.get("AVATAR_CHAT_SKIP_BROWSER") == "1",
                       reason="AVATAR_CHAT_SKIP_BROWSER=1: browser tests opted out"),
]

CHROMIUM = os.environ.get("AVATAR_CHAT_CHROMIUM", "/usr/bin/chromium")

MOTIONS = {
    "rest": FaceMotion(),
    "open": FaceMotion(mouth_open=0.8),
    "ee": FaceMotion(mouth_open=0.4, mouth_width=1.0),
    "oo": FaceMotion(mouth_open=0.5, mouth_width=-1.0),
    "happy": FaceMotion(mouth_open=0.2, smile=0.8, brow=0.15),
    "sad": FaceMotion(smile=-0.7, brow=-0.45, head_pitch=-2.5),
    "blink": FaceMotion(blink=1.0, brow=0.5),
    "half blink": FaceMotion(blink=0.5, brow=-0.5),
    "head": FaceMotion(mouth_open=0.3, head_yaw=1.5, head_pitch=-0.8, head_roll=0.9, breath=0.7),
}


@pytest.fixture(scope="module")
def server():
    renderer = PortraitRenderer(AvatarPack.load("astronaut"))
    body = __import__("json").dumps(browser_pack(renderer))
    app = FastAPI()
    app.get("/")(web.index)
    app.get("/static/{name}")(web.static_file)
    app.get("/v1/avatar")(lambda: Response(body, media_type="application/json"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    while not srv.started:
        threading.Event().wait(0.05)
    yield f"http://127.0.0.1:{port}", renderer
    srv.should_exit = True
    thread.join(5)


def decode(data_url: str) -> np.ndarray:
    raw = base64.b64decode(data_url.split(",", 1)[1])
    bgr = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_COLOR)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


async def test_the_browser_draws_the_same_face_as_the_server(server):
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"Chromium is not installed at {CHROMIUM}: scripts/test.sh installs it "
                    "(apt-get install chromium); AVATAR_CHAT_SKIP_BROWSER=1 skips", pytrace=False)
    from playwright.async_api import async_playwright

    url, renderer = server
    x0, y0, x1, y1 = AvatarPack.load("astronaut").regions["face_box"]
    mx0, my0, mx1, my1 = renderer.mouth.box
    drawn = {}
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                           args=["--headless=new", "--no-sandbox", "--disable-gpu"])
        try:
            page = await browser.new_page()
            errors = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            await page.goto(url)
            for name, motion in MOTIONS.items():
                drawn[name] = decode(await page.evaluate("v => window.avatarChat.drawFace(v)", motion.as_list()))
            timing = await page.evaluate("""async (v) => {
              const t0 = performance.now();
              for (let i = 0; i < 50; i++) { v[0] = (i % 10) / 10; await window.avatarChat.drawFace(v); }
              return (performance.now() - t0) / 50; }""", MOTIONS["open"].as_list())
            assert not errors, errors
        finally:
            await browser.close()
    report = []
    for name, motion in MOTIONS.items():
        expected = renderer.render(motion).astype(np.float32)
        got = drawn[name].astype(np.float32)
        assert got.shape == expected.shape
        diff = np.abs(got - expected)[y0:y1, x0:x1]
        report.append(f"{name} {diff.mean():.2f}/{np.percentile(diff, 99):.0f}")
        # canvas bilinear sampling and OpenCV's 1/32-pixel fixed point differ by a level or two
        assert diff.mean() < 1.0 and np.percentile(diff, 99) < 8, (name, diff.mean(), np.percentile(diff, 99))
    # and the poses really differ where they should (the comparison is not of two still photos)
    mouth = lambda img: img[my0:my1, mx0:mx1].astype(np.float32)  # noqa: E731
    assert np.abs(mouth(drawn["open"]) - mouth(drawn["rest"])).mean() > 8
    assert np.abs(mouth(drawn["happy"]) - mouth(drawn["sad"])).mean() > 3
    print(f"\nbrowser face vs server render (mean/p99 abs diff in the face box): {', '.join(report)}; "
          f"drawFace incl. PNG export {timing:.1f} ms")
