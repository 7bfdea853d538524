"""The liteavatar avatar backend on a random-weight LiteAvatar (load_tests/random_models/liteavatar.py,
tiny size): real onnxruntime, TorchScript and Paraformer SAN-M code, random numbers.

Random weights draw meaningless mouths, so what is checked is what the backend controls: frames are
JPEG VideoFrames of the background's size; each chunk carries exactly the frames whose time falls
in it, on background frame k % n, with the 30 fps mouth parameters interpolated at each frame's
time; only the face box changes; the idle loop is the background with the neutral mouth; concurrent
streams get their own frames; a closed or cancelled stream stops after the piece in flight; the
SAN-M encoder and fbank frontend match funasr's; missing files fail at load naming how to get them;
``avatar-chat models fetch liteavatar``'s layout is the one the backend reads."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import shutil
import sys
import threading
import types
from pathlib import Path

import numpy as np
import pytest

from avatarchat import models, registry
from avatarchat.avatar.motion import frame_range
from avatarchat.backends.avatar.liteavatar import (
    PARAM_FPS, LiteAvatar, MissingAvatar, MouthTrack,
)
from avatarchat.backends.base import create_backend
from avatarchat.config import StageConfig
from avatarchat.errors import StageLoadError
from avatarchat.messages import AnimateRequest, AudioChunk, SpeechChunk, VideoFrame
from avatarchat.models import MissingWeights
from load_tests.random_models import liteavatar as random_liteavatar

pytestmark = pytest.mark.timeout(60)

SR = 24000  # CosyVoice's rate: the backend resamples to 16 kHz itself
WIDTH, HEIGHT = random_liteavatar.TINY["width"], random_liteavatar.TINY["height"]
Y1, Y2, X1, X2 = random_liteavatar.TINY["box"]


def speech(seconds: float, seed: int, rate: int = SR) -> np.ndarray:
    """Speech-like audio: a tone with a syllable-rate envelope, different for each seed."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(rate * seconds)) / rate
    env = np.abs(np.sin(2 * np.pi * rng.uniform(2, 5) * t))
    tone = np.sin(2 * np.pi * rng.uniform(120, 300) * t) + 0.3 * rng.standard_normal(len(t))
    return (0.3 * env * tone).astype(np.float32)


def request(samples: np.ndarray, start: float = 0.0, rate: int = SR, sentence: int = 0):
    return AnimateRequest(SpeechChunk(AudioChunk(samples, rate, start), "text", sentence))


async def collect(backend: LiteAvatar, req: AnimateRequest) -> list:
    return [chunk async for chunk in backend.animate(req)]


class DrawLog:
    """Wraps a backend's ``Avatar.draw`` to record (params, background index, track) per frame."""

    def __init__(self, backend: LiteAvatar):
        self.calls: list[tuple[np.ndarray, int]] = []
        self.lock = threading.Lock()
        self.active = self.most_at_once = 0
        self._draw = backend._avatar.draw
        self.before_draw = None  # called with the call's number, in the worker thread
        backend._avatar.draw = self

    def __call__(self, params, index):
        with self.lock:
            number = len(self.calls)
            self.calls.append((np.array(params), index))
            self.active += 1
            self.most_at_once = max(self.most_at_once, self.active)
        try:
            if self.before_draw is not None:
                self.before_draw(number)
            return self._draw(params, index)
        finally:
            with self.lock:
                self.active -= 1


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return random_liteavatar.build(tmp_path_factory.mktemp("liteavatar"), "tiny")


def load(model_dir: Path, **options) -> LiteAvatar:
    options = {"threads": 1, "jpeg_quality": 95, "workers": 2, **options}
    backend = LiteAvatar(LiteAvatar.Options(model_dir=model_dir, **options))
    backend.load()
    return backend


@pytest.fixture(scope="module")
def backend(model_dir):
    b = load(model_dir)
    yield b
    b.close()


def test_registered_with_documented_options():
    assert registry.backend_class("avatar", "liteavatar") is LiteAvatar
    assert LiteAvatar.draws_frames
    for name, field in LiteAvatar.Options.model_fields.items():
        assert field.description, name
    assert LiteAvatar.Options().fps == 25 and LiteAvatar.Options().device == "auto"
    assert models.CATALOG["liteavatar"].backend == "avatar.liteavatar"


def test_chunks_carry_the_frames_of_their_time(backend):
    # two sentences back to back on the reply timeline: the second continues the frame count
    first, second = speech(1.3, 1), speech(0.9, 2)
    chunks = asyncio.run(collect(backend, request(first, 0.0)))
    start2 = chunks[-1].audio.end
    chunks += asyncio.run(collect(backend, request(second, start2, sentence=1)))
    assert start2 == pytest.approx(1.3)
    expected_next = 0
    for chunk in chunks:
        frames = frame_range(chunk.audio.start, chunk.audio.end, 25)
        assert chunk.fps == 25 and chunk.first_frame == frames.start == expected_next
        assert len(chunk.frames) == len(frames)
        assert 0.05 <= chunk.audio.duration <= 0.25 + 1e-9  # chunk_s 0.2; the rest of a sentence
        for frame in chunk.frames:
            assert isinstance(frame, VideoFrame)
            assert (frame.width, frame.height) == (WIDTH, HEIGHT) == backend.frame_size()
            assert frame.rgb().shape == (HEIGHT, WIDTH, 3)
        expected_next = frames.stop
    assert expected_next == len(frame_range(0.0, 1.3 + 0.9, 25))
    audio = np.concatenate([c.audio.samples for c in chunks])
    np.testing.assert_array_equal(audio, np.concatenate([first, second]))


@pytest.mark.parametrize("fps", [25, 30])
def test_frame_k_is_the_30fps_track_at_k_over_fps_on_background_k_mod_n(model_dir, backend, fps):
    b = backend if fps == 25 else load(model_dir, fps=fps)
    try:
        log = DrawLog(b)
        samples, start = speech(1.1, 3), 0.37
        chunks = asyncio.run(collect(b, request(samples, start)))
        track = b.mouth_track(AudioChunk(samples, SR, start))  # deterministic: the same track
        n_frames = -(-len(samples) * PARAM_FPS // SR)  # ceil: parameters up to the sound's end
        assert track.params.shape == (n_frames, 32)
        ks = [chunk.first_frame + i for chunk in chunks for i in range(len(chunk.frames))]
        assert ks == list(frame_range(start, start + 1.1, fps))
        assert [index for _, index in log.calls] == [k % len(b._avatar) for k in ks]
        x = np.arange(n_frames) / PARAM_FPS + start
        for k, (params, _) in zip(ks, log.calls):
            want = [np.interp(k / fps, x, track.params[:, j]) for j in range(32)]
            np.testing.assert_allclose(params, want, rtol=1e-5, atol=1e-6)
        assert np.ptp(np.stack([p for p, _ in log.calls]), axis=0).max() > 0.05  # the mouth moves
    finally:
        if b is not backend:
            b.close()
        else:
            b._avatar.draw = log._draw


def test_mouth_track_interpolates_between_30fps_frames_and_holds_its_ends():
    params = np.array([[0.0] * 32, [3.0] * 32, [6.0] * 32], np.float32)
    track = MouthTrack(1.0, params)
    assert track.at(1.0)[0] == 0.0 and track.at(1.0 + 1 / 30)[0] == pytest.approx(3.0)
    assert track.at(1.0 + 1.5 / 30)[0] == pytest.approx(4.5)
    assert track.at(0.5)[0] == 0.0 and track.at(9.0)[0] == 6.0


def test_a_pause_in_the_speech_rests_the_mouth_in_its_neutral_pose(backend):
    pause = np.zeros(int(SR * 0.8), np.float32)
    samples = np.concatenate([speech(0.7, 14), pause, speech(0.7, 15)])
    track = backend.mouth_track(AudioChunk(samples, SR, 0.0))
    neutral = backend._avatar.neutral
    middle = track.params[int(0.7 * PARAM_FPS) + 4:int(1.5 * PARAM_FPS) - 4]
    np.testing.assert_allclose(middle, np.broadcast_to(neutral, middle.shape), atol=1e-5)
    assert np.abs(track.params[:15] - neutral).max() > 0.05  # speaking: not neutral


def test_only_the_face_box_changes(backend):
    avatar = backend._avatar
    inside = np.zeros((HEIGHT, WIDTH), bool)
    inside[Y1:Y2, X1:X2] = True
    # JPEG codes 16x16 blocks on their own (chroma upsampling reads the neighbours): the blocks one
    # block away from any the box touches decode exactly as in the background's own JPEG
    far_outside = np.ones((HEIGHT, WIDTH), bool)
    far_outside[max(0, (Y1 // 16 - 1) * 16):(-(-Y2 // 16) + 1) * 16,
                max(0, (X1 // 16 - 1) * 16):(-(-X2 // 16) + 1) * 16] = False
    assert far_outside.sum() > 0.2 * far_outside.size
    # drawn (before JPEG): exactly the background outside the box, a face inside
    rng = np.random.default_rng(0)
    for index in (0, 5, len(avatar) - 1):
        drawn = avatar.draw(rng.normal(0, 1, 32).astype(np.float32), index)
        bg = avatar.backgrounds[index]
        np.testing.assert_array_equal(drawn[~inside], bg[~inside])
        assert np.abs(drawn[inside].astype(int) - bg[inside]).mean() > 10
    # as sent (JPEG): the same up to compression noise
    chunks = asyncio.run(collect(backend, request(speech(0.6, 4), 0.0)))
    for chunk in chunks:
        for i, frame in enumerate(chunk.frames):
            k = chunk.first_frame + i
            bg = avatar.backgrounds[k % len(avatar)]
            sent = frame.rgb()
            np.testing.assert_array_equal(sent[far_outside], VideoFrame.from_rgb(bg, 95).rgb()[far_outside])
            assert np.abs(sent[inside].astype(int) - bg[inside]).mean() > 10


def test_idle_frames_are_the_background_with_the_neutral_mouth(backend):
    avatar = backend._avatar
    idle = backend.idle_frames()
    assert len(idle) == len(avatar) == random_liteavatar.TINY["frames"]
    for i, frame in enumerate(idle):
        assert isinstance(frame, VideoFrame) and (frame.width, frame.height) == (WIDTH, HEIGHT)
        assert frame.jpeg == VideoFrame.from_rgb(avatar.draw(avatar.neutral, i), 95).jpeg
    assert idle[0].jpeg != idle[len(idle) // 2].jpeg  # the background moves


def test_concurrent_streams_each_get_their_own_frames(backend):
    a, b = request(speech(1.2, 5), 0.0), request(speech(1.0, 6), 0.4)
    alone_a = asyncio.run(collect(backend, a))
    alone_b = asyncio.run(collect(backend, b))

    async def together():
        return await asyncio.gather(collect(backend, a), collect(backend, b))

    log = DrawLog(backend)
    try:
        both_a, both_b = asyncio.run(together())
    finally:
        backend._avatar.draw = log._draw
    assert log.most_at_once <= 2  # workers: 2
    assert [c.first_frame for c in both_a] == [c.first_frame for c in alone_a]
    assert [c.first_frame for c in both_b] == [c.first_frame for c in alone_b]
    assert [f.jpeg for c in both_a for f in c.frames] == [f.jpeg for c in alone_a for f in c.frames]
    assert [f.jpeg for c in both_b for f in c.frames] == [f.jpeg for c in alone_b for f in c.frames]
    assert [f.jpeg for c in alone_a for f in c.frames][:5] != [f.jpeg for c in alone_b for f in c.frames][:5]


def test_streams_take_turns_on_a_bounded_pool(model_dir):
    """One worker: never two model calls at once, and a short reply started while a long one
    streams finishes first (the long one's chunks queue behind it one at a time)."""
    b = load(model_dir, workers=1)
    log = DrawLog(b)
    try:
        async def run():
            finished = []

            async def stream(name, seconds, seed):
                await collect(b, request(speech(seconds, seed), 0.0))
                finished.append(name)

            await asyncio.gather(stream("long", 3.0, 12), stream("short", 0.4, 13))
            return finished

        assert asyncio.run(run()) == ["short", "long"]
        assert log.most_at_once == 1
    finally:
        b.close()


def test_a_closed_stream_draws_nothing_more(backend):
    log = DrawLog(backend)
    try:
        async def run():
            stream = backend.animate(request(speech(3.0, 7), 0.0))
            first = await anext(stream)
            await stream.aclose()  # the interruption: closed at its yield
            drawn_at_close = len(log.calls)
            await collect(backend, request(speech(0.5, 8), 10.0))  # the pool drains meanwhile
            return first, drawn_at_close

        first, drawn_at_close = asyncio.run(run())
        assert drawn_at_close == len(first.frames) == 5
        # afterwards only the later stream's frames were drawn
        assert len(log.calls) == 5 + len(frame_range(10.0, 10.5, 25))
    finally:
        backend._avatar.draw = log._draw


def test_a_cancelled_stream_finishes_only_the_piece_in_flight(backend):
    log = DrawLog(backend)
    in_flight, release = threading.Event(), threading.Event()

    def hold_second_chunk(number):
        if number == 5:  # the first frame of the second chunk: hold the piece while we cancel
            in_flight.set()
            release.wait(10)

    log.before_draw = hold_second_chunk
    try:
        async def run():
            got = []

            async def consume():
                async for chunk in backend.animate(request(speech(3.0, 9), 0.0)):
                    got.append(chunk)

            task = asyncio.create_task(consume())
            await asyncio.to_thread(in_flight.wait, 10)
            task.cancel()
            release.set()
            with pytest.raises(asyncio.CancelledError):
                await task
            log.before_draw = None
            await collect(backend, request(speech(0.5, 10), 10.0))  # the pool drains meanwhile
            return got

        got = asyncio.run(run())
        assert len(got) == 1
        later = len(frame_range(10.0, 10.5, 25))
        # five frames yielded, the second chunk's five finished in the worker and dropped, no more
        assert len(log.calls) == 5 + 5 + later
    finally:
        backend._avatar.draw = log._draw


def test_missing_weights_name_the_fetch_command(tmp_path, model_dir):
    with pytest.raises(MissingWeights) as err:
        LiteAvatar(LiteAvatar.Options(model_dir=tmp_path / "nowhere")).load()
    assert "avatar-chat models fetch liteavatar" in str(err.value)
    partial = tmp_path / "partial"
    shutil.copytree(model_dir, partial, ignore=shutil.ignore_patterns("model_1.onnx"))
    with pytest.raises(MissingWeights) as err:
        LiteAvatar(LiteAvatar.Options(model_dir=partial)).load()
    assert "lite_avatar_weights/model_1.onnx" in str(err.value)
    assert "avatar-chat models fetch liteavatar" in str(err.value)
    config = StageConfig(stage="avatar", backend="liteavatar",
                         options=LiteAvatar.Options(model_dir=tmp_path / "nowhere"))
    with pytest.raises(StageLoadError) as err:
        create_backend(config)
    assert "avatar-chat models fetch liteavatar" in str(err.value)


def test_an_encoder_that_does_not_fit_the_mouth_model_fails_at_load(tmp_path, model_dir):
    other = tmp_path / "other"
    shutil.copytree(model_dir, other)
    random_liteavatar.write_audio_to_mouth(other / "lite_avatar_weights" / "model_1.onnx",
                                           blocks=5, width=32, hidden=16)
    with pytest.raises(ValueError, match="takes features of 5 blocks x 32, the Paraformer "
                                         "encoder gives 3 x 32"):
        LiteAvatar(LiteAvatar.Options(model_dir=other, threads=1)).load()


def test_a_missing_avatar_says_how_to_get_it(tmp_path, model_dir):
    weights_only = tmp_path / "weights"
    shutil.copytree(model_dir, weights_only, ignore=shutil.ignore_patterns("20250408"))
    with pytest.raises(MissingAvatar) as err:  # the default avatar: the fetch brings it
        LiteAvatar(LiteAvatar.Options(model_dir=weights_only)).load()
    assert "avatar-chat models fetch liteavatar" in str(err.value)
    assert str(weights_only / "20250408" / "sample_data") in str(err.value)
    with pytest.raises(MissingAvatar) as err:  # another gallery avatar: its download
        LiteAvatar(LiteAvatar.Options(model_dir=weights_only, avatar="20250408/P1abc")).load()
    assert ("modelscope download --model HumanAIGC-Engineering/LiteAvatarGallery "
            f"20250408/P1abc.zip --local_dir {weights_only}") in str(err.value)
    broken = tmp_path / "broken_avatar"
    shutil.copytree(model_dir / "20250408" / "sample_data", broken)
    (broken / "face_box.txt").unlink()
    with pytest.raises(MissingAvatar) as err:  # a directory path, incomplete
        LiteAvatar(LiteAvatar.Options(model_dir=model_dir, avatar=str(broken))).load()
    assert "face_box.txt not found in " + str(broken) in str(err.value)


def test_the_fetched_layout_is_what_the_backend_reads(tmp_path, model_dir):
    """``models.fetch`` with stand-in downloaders serving the built files from the two repos."""
    gallery = tmp_path / "gallery"
    (gallery / "lite_avatar_weights").mkdir(parents=True)
    for name in ("model_1.onnx", "model.pb"):
        shutil.copy(model_dir / "lite_avatar_weights" / name, gallery / "lite_avatar_weights")
    shutil.make_archive(str(gallery / "20250408" / "sample_data"), "zip",
                        root_dir=model_dir / "20250408", base_dir="sample_data")
    (gallery / "20250408" / "other_avatar.zip").write_bytes(b"not asked for")
    paraformer = tmp_path / "paraformer"
    paraformer.mkdir()
    for name in ("am.mvn", "config.yaml"):
        shutil.copy(model_dir / name, paraformer)
    (paraformer / "model.pt").write_bytes(b"not asked for")
    repos = {"HumanAIGC-Engineering/LiteAvatarGallery": gallery,
             "iic/speech_paraformer-large_asr_nat-zh-cn-16k-common-vocab8404-pytorch": paraformer}
    asked = []

    def download(repo, dest, files=()):
        asked.append((repo, tuple(files)))
        for rel in files:
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(repos[repo] / rel, dest / rel)

    dest = models.fetch("liteavatar", tmp_path / "fetched",
                        downloaders={"modelscope": ("numpy", download)})
    assert [repo for repo, _ in asked] == list(repos)
    assert all(files for _, files in asked)  # named files, never the whole gallery
    b = load(dest)
    try:
        assert b.frame_size() == (WIDTH, HEIGHT) and len(b.idle_frames()) == len(b._avatar)
    finally:
        b.close()


@contextlib.contextmanager
def funasr_modules_only():
    """Import funasr's modules without running ``funasr/__init__.py``, which imports every model
    (~17 s of CPU); everything imported here is forgotten afterwards, so a later ``import funasr``
    (the SenseVoice tests) gets the real package. A no-op where funasr is already imported."""
    if "funasr" in sys.modules:
        yield
        return
    before = set(sys.modules)
    package = types.ModuleType("funasr")
    package.__path__ = list(importlib.util.find_spec("funasr").submodule_search_locations)
    sys.modules["funasr"] = package
    try:
        yield
    finally:
        for name in set(sys.modules) - before:
            if name == "funasr" or name.startswith("funasr."):
                del sys.modules[name]


def test_the_san_m_encoder_and_frontend_match_funasr(model_dir, backend):
    """Paraformer's features as funasr computes them: the checkpoint's encoder keys are funasr's
    SANMEncoder's, its last block (after the final norm) equals funasr's output, and the fbank,
    LFR and CMVN frontend equals funasr's WavFrontend (dither off)."""
    import torch
    import yaml

    with funasr_modules_only():
        from funasr.frontends.wav_frontend import WavFrontend
        from funasr.models.sanm.encoder import SANMEncoder

    features = backend._features
    conf = yaml.safe_load((model_dir / "config.yaml").read_text())
    enc = {k: v for k, v in conf["encoder_conf"].items() if k != "pos_enc_class"}
    reference = SANMEncoder(input_size=560, **enc).eval()
    state = torch.load(model_dir / "lite_avatar_weights" / "model.pb", weights_only=True)
    encoder_state = {k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")}
    reference.load_state_dict(encoder_state, strict=True)

    samples = speech(1.4, 11, rate=16000)
    frontend = WavFrontend(cmvn_file=str(model_dir / "am.mvn"), dither=0.0, **conf["frontend_conf"])
    with torch.inference_mode():
        want_feats, lengths = frontend(torch.from_numpy(samples)[None], torch.tensor([len(samples)]))
        want, _, _ = reference(want_feats, lengths)
        import torchaudio.compliance.kaldi as kaldi
        from avatarchat.backends.avatar.liteavatar import lfr

        fbank = kaldi.fbank(torch.from_numpy(samples * 32768)[None], num_mel_bins=80,
                            frame_length=25, frame_shift=10, dither=0.0, energy_floor=0.0,
                            window_type="hamming", sample_frequency=16000)
        ours_feats = (lfr(fbank, 7, 6) + features.shift) * features.scale
        np.testing.assert_allclose(ours_feats.numpy(), want_feats[0].numpy(), rtol=1e-4, atol=1e-4)
        hidden = features.encoder(want_feats)
        last = features.encoder.after_norm(hidden[:, -1])
    assert hidden.shape == (want_feats.shape[1], enc["num_blocks"], enc["output_size"])
    np.testing.assert_allclose(last.numpy(), want[0].numpy(), rtol=1e-4, atol=1e-4)
