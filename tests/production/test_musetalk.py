"""The musetalk avatar backend through the real diffusers UNet/VAE and transformers Whisper, on a
random-weight MuseTalk 1.5 of the real layout (load_tests/random_models/musetalk.py, tiny size) and a
base video made here, prepared by the real preparation tool.

Random weights paint random faces, so what is checked is what the backend controls: frames are the
base video's size and follow the reply timeline (frame k of the reply in the chunk whose audio holds
k / fps, drawn on loop frame k % loop length); pixels change only inside the face's crop box; the idle
loop is the base video; concurrent sessions share model calls and each gets the faces of its own
audio; a closed stream stops drawing within one batch; missing weights or an unprepared avatar stop
start-up naming the command that fixes it."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from avatarchat.avatar import musetalk_prepare
from avatarchat.avatar.motion import frame_range
from avatarchat.backends.avatar.musetalk import MuseTalkAvatar
from avatarchat.backends.base import create_backend
from avatarchat.config import StageConfig
from avatarchat.errors import StageLoadError
from avatarchat.media_file import read_video
from avatarchat.messages import AnimateRequest, AudioChunk, SpeechChunk, VideoFrame
from avatarchat.models import MissingWeights
from load_tests.random_models import musetalk as random_musetalk

pytestmark = pytest.mark.timeout(300)  # generous: the first test also builds the model and prepares
# the video (~15 s of CPU), and these machines are shared

SR = 16000
FPS = 25
WIDTH, HEIGHT = 256, 192
BASE_FRAMES = 50                       # 2 s at 25 fps
LOOP = 2 * BASE_FRAMES - 2             # pingpong: 0..49 then 48..1
FACE_BOX = (100, 38, 160, 112)         # given to the tool; it adds 10 px below the chin
MARKER = 10                            # a square in the top-left corner that moves every frame


def base_frame(i: int) -> np.ndarray:
    """A drawn face on a background (RGB), with a marker far from the face that says which frame
    this is, so the loop order can be read back from any output frame."""
    img = np.full((HEIGHT, WIDTH, 3), (140, 90, 40), np.uint8)
    cv2.ellipse(img, (130, 75), (28, 36), 0, 0, 360, (220, 180, 150), -1)
    cv2.circle(img, (119, 65), 3, (30, 30, 30), -1)
    cv2.circle(img, (141, 65), 3, (30, 30, 30), -1)
    cv2.ellipse(img, (130, 94), (9, 3), 0, 0, 360, (160, 40, 40), -1)
    x = 2 + (i % 5) * MARKER  # 5 positions x 2 rows: the marker differs between neighbouring frames
    y = 2 + (i // 5 % 2) * MARKER
    img[y:y + MARKER, x:x + MARKER] = (255, 255, 255)
    return img


def write_video(path: Path) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), FPS, (WIDTH, HEIGHT))
    for i in range(BASE_FRAMES):
        writer.write(cv2.cvtColor(base_frame(i), cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def tone(seconds: float, hz: float) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (0.3 * np.sin(2 * np.pi * hz * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))).astype(np.float32)


def noise(seconds: float, seed: int) -> np.ndarray:
    return (0.2 * np.random.default_rng(seed).standard_normal(int(seconds * SR))).astype(np.float32)


def request(samples: np.ndarray, start: float = 0.0, sentence: int = 0) -> AnimateRequest:
    return AnimateRequest(SpeechChunk(AudioChunk(samples, SR, start), "hello", sentence))


async def collect(backend: MuseTalkAvatar, req: AnimateRequest):
    return [chunk async for chunk in backend.animate(req)]


def load(model_dir: Path, avatar: Path, **options) -> MuseTalkAvatar:
    backend = MuseTalkAvatar(MuseTalkAvatar.Options(model_dir=model_dir, avatar=avatar,
                                                    cpu_threads=2, **options))
    backend.load()
    return backend


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return random_musetalk.build(tmp_path_factory.mktemp("musetalk") / "tiny", "tiny")


@pytest.fixture(scope="module")
def avatar(model_dir, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("avatar")
    video = write_video(root / "base.mp4")
    out = root / "prepared"
    box = ",".join(str(v) for v in FACE_BOX)
    assert musetalk_prepare.main(["--video", str(video), "--out", str(out), "--model-dir",
                                  str(model_dir), "--box", box, "--device", "cpu"]) == 0
    return out


@pytest.fixture(scope="module")
def backend(model_dir, avatar):
    b = load(model_dir, avatar, batch_size=8)
    yield b
    b.close()


@pytest.fixture(scope="module")
def video_frames(avatar) -> list[np.ndarray]:
    frames, fps = read_video(Path(avatar).parent / "base.mp4")
    assert fps == FPS and len(frames) == BASE_FRAMES
    return frames


def outside(mask_box, shape, margin: int = 8) -> np.ndarray:
    """True outside ``mask_box`` grown by ``margin`` (JPEG's 8x8 blocks spread an edit a little)."""
    x1, y1, x2, y2 = mask_box
    keep = np.ones(shape[:2], bool)
    keep[max(0, y1 - margin):y2 + margin, max(0, x1 - margin):x2 + margin] = False
    return keep


# --- the prepared avatar and the idle loop --------------------------------------------------------

def test_the_tool_prepares_boxes_masks_and_latents(avatar):
    meta = json.loads((avatar / "avatar.json").read_text())
    assert (meta["width"], meta["height"], meta["frames"]) == (WIDTH, HEIGHT, BASE_FRAMES)
    x1, y1, x2, y2 = FACE_BOX
    assert meta["boxes"][0] == [x1, y1, x2, y2 + 10]  # MuseTalk 1.5's extra margin below the chin
    assert meta["loop"] == list(range(BASE_FRAMES)) + list(range(BASE_FRAMES - 2, 0, -1))
    prepared = musetalk_prepare.PreparedAvatar.load(avatar)
    assert tuple(prepared.latents.shape) == (BASE_FRAMES, 8, 32, 32)
    mask, (cx1, cy1, cx2, cy2) = prepared.masks[0], prepared.crops[0]
    assert mask.shape == (cy2 - cy1, cx2 - cx1)
    # the lower face is painted, the eyes are not
    mid_y = (FACE_BOX[1] + FACE_BOX[3] + 10) // 2
    assert mask[94 - cy1, 130 - cx1] == 255 and mask[65 - cy1, 119 - cx1] == 0
    assert mask[: mid_y - cy1 - 8].max() < 128


def test_idle_frames_are_the_base_video_looping_back_and_forth(backend, video_frames):
    idle = backend.idle_frames()
    assert len(idle) == backend.loop_length == LOOP
    assert all(isinstance(f, VideoFrame) and (f.width, f.height) == (WIDTH, HEIGHT) for f in idle)
    for j in (0, 7, 49, 50, 77, LOOP - 1):
        i = j if j < BASE_FRAMES else LOOP - j
        assert np.abs(idle[j].rgb().astype(int) - video_frames[i]).mean() < 2.0, j
    assert backend.frame_size() == (WIDTH, HEIGHT)
    assert backend.draws_frames and backend.pack is None


# --- timing ---------------------------------------------------------------------------------------

@pytest.mark.timeout(60)
def test_chunks_carry_exactly_the_frames_of_their_audio(backend):
    samples = tone(0.9, 180)
    first = asyncio.run(collect(backend, request(samples, start=0.37)))
    end = 0.37 + len(samples) / SR
    assert first[0].audio.start == 0.37 and abs(first[-1].audio.end - end) < 1e-9
    for chunk, after in zip(first, first[1:]):
        assert chunk.audio.end == pytest.approx(after.audio.start, abs=1e-12)
    for chunk in first:
        ks = frame_range(chunk.audio.start, chunk.audio.end, FPS)
        assert chunk.first_frame == ks.start and len(chunk.frames) == len(ks) > 0
        assert chunk.fps == FPS and chunk.text == "hello"
        assert all(isinstance(f, VideoFrame) and (f.width, f.height) == (WIDTH, HEIGHT)
                   for f in chunk.frames)
        assert np.array_equal(chunk.audio.samples, samples[round((chunk.audio.start - 0.37) * SR):
                                                           round((chunk.audio.end - 0.37) * SR)])
    assert first[0].first_frame == 10  # ceil(0.37 * 25)
    frames = [k for c in first for k in range(c.first_frame, c.first_frame + len(c.frames))]
    assert frames == list(frame_range(0.37, end, FPS))
    # the next sentence starts where this one ended: no frame twice, none missing
    second = asyncio.run(collect(backend, request(tone(0.3, 250), start=end, sentence=1)))
    assert second[0].first_frame == frames[-1] + 1 and second[0].sentence == 1


@pytest.mark.timeout(60)
def test_frame_k_is_drawn_on_loop_frame_k_mod_length_and_only_the_face_changes(backend):
    """Across the loop's end (frames 95..102 of a 98-frame loop): outside the face's crop box each
    frame is loop frame k % 98, marker included; inside the mask the face is repainted."""
    idle = backend.idle_frames()
    n = backend.loop_length
    start = (LOOP - 3) / FPS
    chunks = asyncio.run(collect(backend, request(tone(0.32, 300), start=start)))
    prepared = backend._avatar
    checked = 0
    for chunk in chunks:
        for i, frame in enumerate(chunk.frames):
            k = chunk.first_frame + i
            base = prepared.loop[k % n]
            got, want = frame.rgb().astype(int), idle[k % n].rgb().astype(int)
            keep = outside(prepared.crops[base], got.shape)
            assert np.abs(got - want)[keep].max() <= 12, k      # JPEG noise only
            assert np.abs(got - want)[keep].mean() < 1.0, k
            # the marker is loop frame k % n's, not its neighbour's
            neighbour = idle[(k + 1) % n].rgb().astype(int)
            assert np.abs(got - neighbour)[:2 * MARKER + 4, :5 * MARKER + 4].mean() > 5, k
            cx1, cy1, cx2, cy2 = prepared.crops[base]
            painted = prepared.masks[base] > 200
            diff = np.abs(got - want)[cy1:cy2, cx1:cx2][painted]
            assert diff.mean() > 10, k                            # the face is repainted
            checked += 1
    assert checked == len(frame_range(start, start + 0.32, FPS)) and checked >= 8


# --- sessions together ------------------------------------------------------------------------------

@pytest.mark.timeout(120)
def test_concurrent_sessions_share_batches_and_each_gets_its_own_faces(model_dir, avatar):
    shared = load(model_dir, avatar, batch_size=16, max_wait_ms=150)
    try:
        voices = [tone(0.4, 220), noise(0.4, 7)]

        def faces(chunks):
            return [f.rgb().astype(int) for c in chunks for f in c.frames]

        alone = [faces(asyncio.run(collect(shared, request(v)))) for v in voices]
        before = shared.stats

        async def together():
            return await asyncio.gather(*(collect(shared, request(v)) for v in voices))

        both = [faces(c) for c in asyncio.run(together())]
        after = shared.stats
        prepared = shared._avatar
    finally:
        shared.close()
    n_faces = 2 * len(frame_range(0, 0.4, FPS))
    assert after["faces"] - before["faces"] == n_faces
    # alone, every batch held one session's chunk (5 faces); together, batches held both sessions'
    assert before["largest_face_batch"] == 5 and before["face_batches"] == 4
    assert after["largest_face_batch"] > 5
    assert after["face_batches"] - before["face_batches"] < 4
    for mine, solo, other in zip(both, alone, alone[::-1]):
        for k, (got, want, theirs) in enumerate(zip(mine, solo, other)):
            x1, y1, x2, y2 = prepared.crops[prepared.loop[k]]
            painted = prepared.masks[prepared.loop[k]] > 200
            crop = (slice(y1, y2), slice(x1, x2))
            assert np.abs(got - want)[crop][painted].mean() < 0.5    # batching changes no face
            assert np.abs(got - theirs)[crop][painted].mean() > 1.5  # each from its own audio


# --- stopping ---------------------------------------------------------------------------------------

@pytest.mark.timeout(60)
def test_a_closed_stream_stops_drawing_within_one_batch(backend):
    batch = backend.options.batch_size
    long = tone(3.0, 200)  # 75 frames, 15 chunks

    async def scenario():
        start = backend.stats["faces"]
        stream = backend.animate(request(long))
        first = await anext(stream)
        await stream.aclose()  # the listener went away after one chunk
        # one short request afterwards: the model thread runs one batch at a time, so once its
        # faces are back, whatever batch was under way at the close has finished
        probe = await collect(backend, request(tone(0.2, 300)))
        probe_faces = sum(len(c.frames) for c in probe)
        return backend.stats["faces"] - start - probe_faces, len(first.frames)

    drawn, first_chunk = asyncio.run(scenario())
    assert first_chunk == 5
    assert first_chunk <= drawn <= first_chunk + batch  # the chunk asked for next, at most


@pytest.mark.timeout(60)
def test_a_cancelled_caller_drops_its_waiting_faces(model_dir, avatar):
    slow = load(model_dir, avatar, batch_size=4, max_wait_ms=0)
    try:
        async def scenario():
            stream = slow.animate(request(tone(2.0, 200)))
            await anext(stream)  # chunk 0 is drawn; chunk 1's 5 faces are asked for

            async def next_chunk():
                return await anext(stream)

            waiting = asyncio.ensure_future(next_chunk())
            await asyncio.sleep(0)  # it now awaits chunk 1's faces (batches of 4 and 1)
            waiting.cancel()        # as Serve cancels a replica's generator on hang-up
            with pytest.raises(asyncio.CancelledError):
                await waiting
            await collect(slow, request(tone(0.2, 300)))  # flushes the model thread
            return slow.stats["faces"] - len(frame_range(0, 0.2, FPS))

        drawn = asyncio.run(scenario())
    finally:
        slow.close()
    assert 5 <= drawn <= 5 + 4  # chunk 0, then at most the batch under way at the cancel


@pytest.mark.timeout(60)
def test_a_failed_batch_fails_its_callers_only(backend, monkeypatch):
    draw = backend._faces._run
    calls = []

    def first_fails(faces):
        calls.append(len(faces))
        if len(calls) == 1:
            raise RuntimeError("CUDA error: out of memory")
        return draw(faces)

    monkeypatch.setattr(backend._faces, "_run", first_fails)
    with pytest.raises(RuntimeError, match="out of memory"):
        asyncio.run(collect(backend, request(tone(0.2, 200))))
    chunks = asyncio.run(collect(backend, request(tone(0.2, 200))))  # the worker went on
    assert sum(len(c.frames) for c in chunks) == 5
    backend.check_health()

    def always_fails(faces):
        raise ValueError("broken device")

    monkeypatch.setattr(backend._faces, "_run", always_fails)
    for _ in range(3):  # FAILURES_UNHEALTHY batches in a row make the replica unhealthy
        with pytest.raises(ValueError, match="broken device"):
            asyncio.run(collect(backend, request(tone(0.2, 200))))
    with pytest.raises(RuntimeError, match="batches failed"):
        backend.check_health()
    monkeypatch.setattr(backend._faces, "_run", draw)
    asyncio.run(collect(backend, request(tone(0.2, 200))))
    backend.check_health()  # healthy again once a batch succeeds


# --- start-up failures ------------------------------------------------------------------------------

def test_missing_weights_name_the_fetch_command(tmp_path, avatar, monkeypatch):
    monkeypatch.setenv("AVATAR_CHAT_MODELS", str(tmp_path / "models"))
    with pytest.raises(MissingWeights, match="avatar-chat models fetch musetalk"):
        MuseTalkAvatar(MuseTalkAvatar.Options(avatar=avatar)).load()
    (tmp_path / "partial" / "musetalkV15").mkdir(parents=True)
    with pytest.raises(MissingWeights, match=r"musetalkV15/musetalk.json not found"):
        MuseTalkAvatar(MuseTalkAvatar.Options(model_dir=tmp_path / "partial", avatar=avatar)).load()
    config = StageConfig(stage="avatar", backend="musetalk",
                         options=MuseTalkAvatar.Options(avatar=avatar))
    with pytest.raises(StageLoadError) as err:
        create_backend(config)
    assert "stage 'avatar'" in str(err.value) and "avatar-chat models fetch musetalk" in str(err.value)


def test_an_unprepared_avatar_names_the_prepare_command(tmp_path, model_dir, avatar):
    command = "python -m avatarchat.avatar.musetalk_prepare"
    for where in (tmp_path / "nowhere", tmp_path):
        with pytest.raises(musetalk_prepare.AvatarNotPrepared, match=command):
            load(model_dir, where)
    with pytest.raises(ValueError, match=command):
        load(model_dir, None)
    # latents made by another VAE are refused, not blended into garbage
    other = tmp_path / "other"
    shutil.copytree(avatar, other)
    meta = json.loads((other / "avatar.json").read_text())
    (other / "avatar.json").write_text(json.dumps({**meta, "vae": "0" * 32}))
    with pytest.raises(musetalk_prepare.AvatarNotPrepared, match="another VAE"):
        load(model_dir, other)


def test_the_tool_without_a_box_needs_a_face(tmp_path, model_dir):
    video = tmp_path / "no_face.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), FPS, (WIDTH, HEIGHT))
    for _ in range(3):
        writer.write(np.full((HEIGHT, WIDTH, 3), 90, np.uint8))
    writer.release()
    with pytest.raises(ValueError, match="no face found.*--box"):
        musetalk_prepare.prepare(video, tmp_path / "out", model_dir)
    assert not (tmp_path / "out" / "avatar.json").exists()


def test_half_precision_on_the_cpu_is_refused(model_dir, avatar):
    with pytest.raises(ValueError, match="float16 needs a GPU"):
        load(model_dir, avatar, device="cpu", dtype="float16")
