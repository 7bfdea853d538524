"""The web page at / in a real browser against the real service: Debian's Chromium, headless, driven
by Playwright (never a browser Playwright downloads), a recorded utterance as its microphone.
Everything stays on loopback (the server offers 127.0.0.1 only; scripts/test.sh runs the suite in
a network namespace that has nothing else). Shares the one service start-up of
tests/cluster/conftest.py (max_sessions 3 there).

Chromium missing is a failure, not a skip (CI must run this); AVATAR_CHAT_SKIP_BROWSER=1 opts out.
Screenshots go to the test's temporary folder; AVATAR_CHAT_SCREENSHOTS=docs/images writes the ones
the docs show (page_conversation.png, page_no_microphone.png, page_server_full.png).
"""

import asyncio
import os
import time
from contextlib import asynccontextmanager
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest

from avatarchat.audio import encode_wav, read_wav, resample
from avatarchat.avatar.pack import AvatarPack
from avatarchat.local_cluster import ROOT
from avatarchat.client.avatar_client import AvatarClient, SessionRefused
from tests.conftest import BECKETT_TEXT
from tests.helpers import mouth_change, wer

pytestmark = [
    pytest.mark.cluster, pytest.mark.models, pytest.mark.timeout(300),
    pytest.mark.skipif(os.environ.get("AVATAR_CHAT_SKIP_BROWSER") == "1",
                       reason="AVATAR_CHAT_SKIP_BROWSER=1: browser tests opted out"),
]

CHROMIUM = os.environ.get("AVATAR_CHAT_CHROMIUM", "/usr/bin/chromium")
MOUTH_BOX = AvatarPack.load("astronaut").regions["mouth_box"]
VIEWPORT = {"width": 1280, "height": 860}
MIC_RATE = 48000
LEAD_S, TAIL_S = 2.5, 150.0  # silence before (the page connects) and after (no repeat) the speech


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's Chromium and Playwright's Python package, or a loud failure saying how to get them."""
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"Chromium is not installed at {CHROMIUM}: run scripts/bootstrap.sh as root (it "
                    "runs `apt-get install chromium`), or set AVATAR_CHAT_SKIP_BROWSER=1 to skip the "
                    "browser tests", pytrace=False)
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        pytest.fail("Playwright's Python package is missing: pip install -e '.[test]'", pytrace=False)
    return CHROMIUM


@pytest.fixture
def shots(tmp_path) -> Path:
    """Where screenshots go: AVATAR_CHAT_SCREENSHOTS (relative to the repository), else tmp_path."""
    where = os.environ.get("AVATAR_CHAT_SCREENSHOTS")
    path = ROOT / where if where else tmp_path / "screenshots"
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def mic_wav(speech_assets, tmp_path_factory) -> Path:
    """beckett.wav as Chromium's fake microphone: 16-bit PCM, 48 kHz, with silence before it (so
    no word is spoken before the session is up) and a long silence after it (Chromium loops the
    file; a second reading would talk over the avatar)."""
    samples, rate = read_wav(speech_assets / "beckett.wav")
    x = resample(samples, rate, MIC_RATE)
    x = np.concatenate([np.zeros(int(LEAD_S * MIC_RATE), np.float32), x,
                        np.zeros(int(TAIL_S * MIC_RATE), np.float32)])
    path = tmp_path_factory.mktemp("mic") / "beckett_48k.wav"
    path.write_bytes(encode_wav(x, MIC_RATE))
    return path


@asynccontextmanager
async def browser_page(chromium: str, mic_wav: Path, profile: Path, extra_args: tuple[str, ...] = ()):
    from playwright.async_api import async_playwright

    args = [*extra_args, "--headless=new", "--no-sandbox", "--use-fake-ui-for-media-stream",
            "--use-fake-device-for-media-stream", f"--use-file-for-fake-audio-capture={mic_wav}",
            "--allow-loopback-in-peer-connection", "--disable-background-networking",
            "--disable-component-update", "--no-first-run", "--disable-gpu",
            "--disable-features=WebRtcHideLocalIpsWithMdns"]
    async with async_playwright() as pw:
        context = await pw.chromium.launch_persistent_context(
            str(profile), executable_path=chromium, headless=True, args=args, viewport=VIEWPORT)
        try:
            page = context.pages[0] if context.pages else await context.new_page()
            page.console_messages = []
            page.on("console", lambda m: page.console_messages.append(m.text))
            yield page
        finally:
            await context.close()


async def active_sessions(service) -> int:
    async with httpx.AsyncClient() as http:
        return (await http.get(f"{service.url}/v1/sessions")).json()["active_sessions"]


async def wait_sessions(service, n: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while await active_sessions(service) != n:
        if time.monotonic() > deadline:
            raise AssertionError(f"{await active_sessions(service)} sessions active, expected {n}")
        await asyncio.sleep(0.2)


# In a sampler's interval: the inbound audio's running totals (totalAudioEnergy, totalSamplesDuration)
# set on the sample when getStats answers; the power between two samples is their difference.
AUDIO_POWER = """const pc = window.avatarChat && window.avatarChat.pc;
    if (pc) pc.getStats().then((stats) => stats.forEach((r) => {
      if (r.type === "inbound-rtp" && r.kind === "audio") {
        sample.energy = r.totalAudioEnergy || 0;
        sample.seconds = r.totalSamplesDuration || 0;
      }
    }));"""


def talking_and_resting_motion(samples: list[dict]) -> tuple[float, float, int, int]:
    """(talking, resting) mean mouth change between consecutive samples, and how many pairs each.
    Talking: both samples while the avatar speaks, its voice heard between them (over -40 dBFS): a
    reply's pauses, its silent tail and a playout held by the user's voice rest the mouth and would
    dilute it (a CI run: 1.9 against 1.1 resting). Resting: the idle face (it breathes and blinks)
    before the first turn began."""
    luma = np.array([s["luma"] for s in samples], np.float32)
    change = mouth_change(luma)
    energy = np.array([s.get("energy", np.nan) for s in samples], np.float64)
    seconds = np.array([s.get("seconds", np.nan) for s in samples], np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        power = np.diff(energy) / np.diff(seconds)  # of each pair of consecutive samples
    speaking = np.array([s["state"] == "speaking" for s in samples])
    talking = speaking[1:] & speaking[:-1] & (np.nan_to_num(power) > 1e-4)
    first_turn = next(i for i, s in enumerate(samples) if s["state"] in ("thinking", "speaking"))
    idle = np.array([i < first_turn and s["state"] == "listening" for i, s in enumerate(samples)])
    resting = idle[1:] & idle[:-1]
    return float(change[talking].mean()), float(change[resting].mean()), int(talking.sum()), int(resting.sum())


# In the page: count decoded video frames (requestVideoFrameCallback) and sample the mouth region
# of the playing video into a canvas every 100 ms, with the conversation state shown at that moment.
SAMPLER = """([x0, y0, x1, y1]) => {
  const video = document.getElementById("avatar");
  const probe = window.__probe = {frames: 0, samples: []};
  const count = () => { probe.frames++; video.requestVideoFrameCallback(count); };
  video.requestVideoFrameCallback(count);
  const canvas = document.createElement("canvas");
  const ctx = canvas.getContext("2d", {willReadFrequently: true});
  setInterval(() => {
    if (video.readyState < 2 || !video.videoWidth) return;
    if (canvas.width !== video.videoWidth) { canvas.width = video.videoWidth; canvas.height = video.videoHeight; }
    ctx.drawImage(video, 0, 0);
    const d = ctx.getImageData(x0, y0, x1 - x0, y1 - y0).data;
    const luma = [];
    for (let i = 0; i < d.length; i += 4) luma.push(Math.round(0.299 * d[i] + 0.587 * d[i + 1] + 0.114 * d[i + 2]));
    const sample = {t: performance.now(), state: document.getElementById("state").dataset.state,
                    frames: probe.frames, time: video.currentTime, luma};
    probe.samples.push(sample);
    AUDIO_POWER
  }, 100);
}""".replace("AUDIO_POWER", AUDIO_POWER)

# Inbound RTP counters of the page's peer connection (audio bytes and energy, video frames).
STATS = """async () => {
  const pc = window.avatarChat.pc;
  const out = {audio_bytes: 0, audio_energy: 0, video_frames: 0};
  if (!pc) return out;
  (await pc.getStats()).forEach((r) => {
    if (r.type !== "inbound-rtp") return;
    if (r.kind === "audio") { out.audio_bytes = r.bytesReceived || 0; out.audio_energy = r.totalAudioEnergy || 0; }
    if (r.kind === "video") out.video_frames = r.framesDecoded || 0;
  });
  return out;
}"""


async def test_a_spoken_question_in_the_browser_is_answered_with_voice_and_a_moving_face(
        chromium, service, mic_wav, tmp_path, shots):
    async with browser_page(chromium, mic_wav, tmp_path / "profile") as page:
        await page.goto(f"{service.url}/")
        assert await page.title() == "avatar-chat"
        await page.evaluate(SAMPLER, list(MOUTH_BOX))
        t0 = time.monotonic()
        await page.click("#start")
        await page.wait_for_function(
            "window.avatarChat.connected || !document.getElementById('notice').hidden", timeout=15_000)
        assert await page.is_hidden("#notice"), await page.text_content("#notice")
        connect_s = time.monotonic() - t0
        await page.wait_for_selector('#state[data-state="listening"]', timeout=10_000)
        stats_connected = await page.evaluate(STATS)

        # The recorded question is heard, transcribed and answered: both sides appear on the page.
        await page.wait_for_selector(".line.avatar.final", timeout=120_000)
        reply_s = time.monotonic() - t0
        lines = await page.eval_on_selector_all(
            ".line", "els => els.map(e => [e.className, e.querySelector('.text').textContent])")
        first_final = next(i for i, (cls, _) in enumerate(lines) if "avatar" in cls and "final" in cls)
        user = [text for cls, text in lines[:first_final] if "user" in cls][-1]
        reply = lines[first_final][1]
        assert wer(BECKETT_TEXT, user) <= 0.35, user
        assert len(reply.split()) >= 2, reply
        await page.wait_for_selector('#timings tr[data-key="input_to_first_frame"]', timeout=30_000)
        await page.wait_for_selector('#state[data-state="listening"]', timeout=60_000)
        await asyncio.sleep(0.5)
        stats_replied = await page.evaluate(STATS)
        probe = await page.evaluate("window.__probe")

        # Audio arrived: bytes all along, and the reply's sound (energy) on top of the silence.
        assert stats_replied["audio_bytes"] > stats_connected["audio_bytes"] + 20_000, (stats_connected, stats_replied)
        assert stats_replied["audio_energy"] > stats_connected["audio_energy"] + 1e-3, (stats_connected, stats_replied)
        # The video plays: frames keep coming while the page is open. Only that they come is
        # asserted: the rate (25 fps sent) is the machine's, 7 fps decoded on a loaded 2-core CI box,
        # and is measured by the benchmarks (load_tests/bench_latency.py), not here.
        samples = probe["samples"]
        assert len(samples) > 50 and probe["frames"] > 0
        span_s = (samples[-1]["t"] - samples[0]["t"]) / 1000
        fps = (samples[-1]["frames"] - samples[0]["frames"]) / span_s
        assert fps > 2, fps
        assert stats_replied["video_frames"] > stats_connected["video_frames"] + 100
        # ...and the mouth moves while the avatar's voice is heard, more than the idle face does.
        talk_motion, rest_motion, n_talk, n_rest = talking_and_resting_motion(samples)
        # >= 4 pairs (0.5 s) of speech: replies are sometimes one short sentence now.
        assert n_rest >= 4 and n_talk >= 4, (n_rest, n_talk)
        assert talk_motion > 1.5 and talk_motion > 2 * rest_motion, (talk_motion, rest_motion)

        # A typed message is answered too; the transcript shows it.
        await page.fill("#text", "What is your name?")
        await page.click("#send")
        await page.wait_for_selector('.line.user:has-text("What is your name?")', timeout=30_000)
        await page.wait_for_function(
            "n => document.querySelectorAll('.line.avatar.final').length >= n",
            arg=2, timeout=120_000)
        await page.wait_for_selector('#state[data-state="listening"]', timeout=60_000)
        await page.screenshot(path=str(shots / "page_conversation.png"))

        # Muted, the microphone track still sends silence: the session outlives media_timeout_s (4 s).
        await page.click("#mute")
        assert await page.get_attribute("#mute", "aria-pressed") == "true"
        await asyncio.sleep(6)
        assert await active_sessions(service) == 1
        assert await page.evaluate("window.avatarChat.connected")
        await page.click("#mute")
        assert await page.get_attribute("#mute", "aria-pressed") == "false"

        # Interrupt stops a reply: back to listening at once, the cut reply marked as such.
        interrupted = await page.locator(".line.avatar.interrupted").count()
        await page.fill("#text", "Tell me a long story about the moon and the stars.")
        await page.click("#send")
        await page.wait_for_selector('#state[data-state="speaking"]', timeout=60_000)
        await asyncio.sleep(0.5)
        await page.click("#interrupt")
        t_interrupt = time.monotonic()
        await page.wait_for_selector('#state[data-state="listening"]', timeout=3_000)
        interrupt_s = time.monotonic() - t_interrupt
        assert await page.locator(".line.avatar.interrupted").count() == interrupted + 1

        # Stop hangs up: the session is gone from the server (DELETE Location).
        await page.click("#stop")
        await page.wait_for_selector('#state[data-state="off"]')
        await wait_sessions(service, 0, 5)
        errors = [m for m in page.console_messages if "error" in m.lower()]
        assert not errors, errors
    print(f"\nbrowser: connect {connect_s:.2f} s, first reply on the page {reply_s:.1f} s after Start, "
          f"{fps:.1f} fps, mouth motion talking {talk_motion:.1f} vs idle {rest_motion:.1f}, "
          f"audio energy {stats_replied['audio_energy']:.3f}, interrupt -> listening {interrupt_s:.2f} s\n"
          f"  user: {user!r}\n  avatar: {reply!r}")


# render=browser: sample the face canvas's mouth region every 100 ms, with the state shown then.
FACE_SAMPLER = """([x0, y0, x1, y1]) => {
  const canvas = document.getElementById("face");
  const probe = window.__probe = {samples: []};
  setInterval(() => {
    if (canvas.hidden || !canvas.width) return;
    const d = canvas.getContext("2d").getImageData(x0, y0, x1 - x0, y1 - y0).data;
    const luma = [];
    for (let i = 0; i < d.length; i += 4) luma.push(Math.round(0.299 * d[i] + 0.587 * d[i + 1] + 0.114 * d[i + 2]));
    const face = window.avatarChat.face;
    const sample = {t: performance.now(), state: document.getElementById("state").dataset.state,
                    drawn: face ? face.drawn : 0, luma};
    probe.samples.push(sample);
    AUDIO_POWER
  }, 100);
}""".replace("AUDIO_POWER", AUDIO_POWER)


async def test_in_browser_render_mode_the_page_draws_a_talking_face_with_no_video(
        chromium, service, mic_wav, tmp_path, shots):
    async with browser_page(chromium, mic_wav, tmp_path / "profile") as page:
        await page.goto(f"{service.url}/?render=browser")
        await page.evaluate(FACE_SAMPLER, list(MOUTH_BOX))
        await page.click("#start")
        await page.wait_for_function(
            "window.avatarChat.connected || !document.getElementById('notice').hidden", timeout=15_000)
        assert await page.is_hidden("#notice"), await page.text_content("#notice")
        assert await page.evaluate("window.avatarChat.render") == "browser"
        await page.wait_for_selector('#state[data-state="listening"]', timeout=10_000)
        stats_connected = await page.evaluate(STATS)
        # The recorded question is answered; screenshots of the face while the avatar speaks.
        await page.wait_for_selector('#state[data-state="speaking"]', timeout=120_000)
        face = page.locator("#face")
        first = tmp_path / "face_1.png"
        await face.screenshot(path=str(first))
        await asyncio.sleep(0.37)
        second = tmp_path / "face_2.png"
        await face.screenshot(path=str(second))
        await page.wait_for_selector(".line.avatar.final", timeout=120_000)
        await page.wait_for_selector('#state[data-state="listening"]', timeout=60_000)
        await asyncio.sleep(0.5)
        stats = await page.evaluate(STATS)
        probe = await page.evaluate("window.__probe")
        received = await page.evaluate("window.avatarChat.face.received")
        await page.screenshot(path=str(shots / "page_browser_render.png"))
        await page.click("#stop")
        await page.wait_for_selector('#state[data-state="off"]')
        await wait_sessions(service, 0, 5)
        errors = [m for m in page.console_messages if "error" in m.lower()]
        assert not errors, errors

    # No video was sent, the voice was, and faces were drawn at a real-time rate.
    assert stats["video_frames"] == 0
    assert stats["audio_energy"] > stats_connected["audio_energy"] + 1e-3, (stats_connected, stats)
    samples = probe["samples"]
    span_s = (samples[-1]["t"] - samples[0]["t"]) / 1000
    fps = (samples[-1]["drawn"] - samples[0]["drawn"]) / span_s
    assert fps > 15 and received > 100, (fps, received)
    # Two moments of speech differ in the mouth region (the screenshots are of the canvas, 512 px
    # shown at the page's size, so compare the mouth box scaled to it).
    a, b = (cv2.imread(str(p), cv2.IMREAD_GRAYSCALE).astype(np.float32) for p in (first, second))
    scale = a.shape[1] / 512
    x0, y0, x1, y1 = (int(round(v * scale)) for v in MOUTH_BOX)
    assert np.abs(a[y0:y1, x0:x1] - b[y0:y1, x0:x1]).mean() > 1.0
    # The mouth moves while the avatar's voice is heard, more than the idle face does.
    talk_motion, rest_motion, n_talk, n_rest = talking_and_resting_motion(samples)
    # >= 4 pairs (0.5 s) of speech: replies are sometimes one short sentence now (9 failed CI).
    assert n_rest >= 4 and n_talk >= 4, (n_rest, n_talk)
    assert talk_motion > 1.5 and talk_motion > 2 * rest_motion, (talk_motion, rest_motion)
    print(f"\nbrowser render: {fps:.1f} faces/s drawn, {received} received, mouth motion talking "
          f"{talk_motion:.1f} vs idle {rest_motion:.1f}")


async def test_the_page_says_when_the_microphone_is_refused_the_server_full_or_unreachable(
        chromium, service, mic_wav, tmp_path, shots):
    await wait_sessions(service, 0, 10)
    async with browser_page(chromium, mic_wav, tmp_path / "profile") as page:
        # No microphone permission (what getUserMedia raises when the user says no).
        await page.add_init_script("""navigator.mediaDevices.getUserMedia = () =>
            Promise.reject(new DOMException("Permission denied", "NotAllowedError"));""")
        await page.goto(f"{service.url}/")
        await page.click("#start")
        notice = page.locator('#notice[data-reason="no-microphone"]')
        await notice.wait_for(timeout=5_000)
        assert "microphone permission" in (await notice.text_content()).lower()
        assert await page.is_enabled("#start") and await active_sessions(service) == 0
        await page.screenshot(path=str(shots / "page_no_microphone.png"))

    clients = []
    try:
        # Fill the server (max_sessions 3) with Python clients, then start from the page: 503.
        while True:
            client = AvatarClient(service.url, host_addresses=["127.0.0.1"])
            try:
                await client.connect()
            except SessionRefused:
                break
            clients.append(client)
            assert len(clients) <= 8
        async with browser_page(chromium, mic_wav, tmp_path / "profile2") as page:
            await page.goto(f"{service.url}/")
            await page.click("#start")
            notice = page.locator('#notice[data-reason="server-full"]')
            await notice.wait_for(timeout=15_000)
            text = await notice.text_content()
            assert "server is full" in text and "Try again in" in text, text
            assert await page.is_enabled("#start")
            await page.screenshot(path=str(shots / "page_server_full.png"))

            # The server cannot be reached (the request fails in the network): "Connection failed".
            await page.route("**/v1/sessions*", lambda route: route.abort("connectionrefused"))
            await page.click("#start")
            notice = page.locator('#notice[data-reason="connection-failed"]')
            await notice.wait_for(timeout=15_000)
            assert "connection failed" in (await notice.text_content()).lower()
            assert await page.is_enabled("#start")
    finally:
        await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)
    await wait_sessions(service, 0, 10)
