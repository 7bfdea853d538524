"""The portrait avatar backend: chunking, frame timing across sentences, options, load errors."""

import dataclasses
import math

import numpy as np
import pytest

from avatarchat.avatar.pack import AvatarPack
from avatarchat.avatar.renderer import PortraitRenderer
from avatarchat.backends.base import create_backend
from avatarchat.config import parse_config, parse_stage
from avatarchat.errors import StageLoadError
from avatarchat.messages import AnimateRequest, AudioChunk, SpeechChunk
from avatarchat.registry import DEFAULT_BACKENDS, available, backend_class


def make(**options):
    return create_backend(parse_stage("test", "avatar", {"backend": "portrait", **options}))


def tone_bursts(seconds, rate, seed=0):
    rng = np.random.default_rng(seed)
    n = int(round(seconds * rate))
    t = np.arange(n) / rate
    return (0.2 * np.sin(2 * np.pi * 180 * t) * (np.sin(2 * np.pi * 3 * t) > 0)
            + rng.normal(0, 1e-3, n)).astype(np.float32)


async def animate_all(backend, request):
    return [chunk async for chunk in backend.animate(request)]


def test_registered_as_the_default_avatar():
    assert "portrait" in available("avatar")
    assert DEFAULT_BACKENDS["avatar"] == "portrait"
    assert parse_config({}).stage("avatar").backend == "portrait"


def test_every_option_has_a_default_and_a_description():
    fields = backend_class("avatar", "portrait").Options.model_fields
    assert {"pack", "fps", "chunk_s"} <= set(fields)
    for key, field in fields.items():
        assert not field.is_required(), key
        assert field.description, key


def test_missing_pack_fails_to_load_with_the_reason():
    with pytest.raises(StageLoadError) as err:
        make(pack="no_such_pack")
    assert "no_such_pack" in str(err.value) and "astronaut" in str(err.value)


async def test_chunks_carry_audio_text_and_their_frames():
    backend = make(chunk_s=0.2)
    assert backend.pack == "astronaut" and backend.fps == 25
    audio = AudioChunk(tone_bursts(1.05, 24000), 24000, start=0.3)
    chunks = await animate_all(backend, AnimateRequest(SpeechChunk(audio, "Hi there.", sentence=2)))
    assert np.array_equal(np.concatenate([c.audio.samples for c in chunks]), audio.samples)
    assert chunks[0].audio.start == 0.3 and math.isclose(chunks[-1].audio.end, audio.end)
    for c in chunks:
        assert c.text == "Hi there." and c.sentence == 2 and c.fps == 25
        assert c.audio.sample_rate == 24000 and c.audio.duration <= 0.2 * 1.25 + 1e-9
    frames = [k for c in chunks for k in range(c.first_frame, c.first_frame + len(c.frames))]
    assert frames == list(range(8, 34))  # k/25 in [0.3, 1.35)


@pytest.mark.parametrize("rate,chunk_s,durations", [
    (24000, 0.2, [1.337, 0.913, 0.0173, 2.0011]),
    (22050, 0.13, [0.5, 0.777, 1.0 / 3, 0.04]),
    (16000, 0.25, [0.03, 0.03, 0.03, 1.21]),
])
async def test_frames_are_continuous_across_sentences(rate, chunk_s, durations):
    """Sentences back to back (each starts where the last ended): every frame of the reply comes
    out exactly once, inside its chunk's audio span, and motion carries over via ``previous``."""
    backend = make(chunk_s=chunk_s)
    start, previous, seen, chunks = 0.0, None, [], []
    for i, seconds in enumerate(durations):
        audio = AudioChunk(tone_bursts(seconds, rate, seed=i), rate, start)
        request = AnimateRequest(SpeechChunk(audio, f"s{i}", i), previous=previous, seed=5)
        for chunk in await animate_all(backend, request):
            chunks.append(chunk)
            for j, motion in enumerate(chunk.frames):
                k = chunk.first_frame + j
                t = k / chunk.fps
                assert chunk.audio.start - 1e-9 <= t < chunk.audio.end + 1e-9
                seen.append(k)
                previous = motion
        start = audio.end
    assert seen == list(range(math.ceil(start * 25 - 1e-9)))
    for a, b in zip(chunks, chunks[1:]):
        assert b.audio.start == a.audio.end or math.isclose(b.audio.start, a.audio.end,
                                                            abs_tol=1e-12)
        assert b.first_frame == a.first_frame + len(a.frames)


async def test_mouth_carries_over_between_sentences():
    backend = make()
    vowel = (0.2 * np.sin(np.arange(14400) * 2 * np.pi * 200 / 24000)).astype(np.float32)
    loud = AudioChunk(vowel, 24000, 0.0)
    first = await animate_all(backend, AnimateRequest(SpeechChunk(loud, "a")))
    last = first[-1].frames[-1]
    assert last.mouth_open > 0.3
    quiet = AudioChunk(np.zeros(12000, np.float32), 24000, loud.end)
    carried = await animate_all(backend, AnimateRequest(SpeechChunk(quiet, "b"), previous=last))
    fresh = await animate_all(backend, AnimateRequest(SpeechChunk(quiet, "b")))
    assert 0.0 < carried[0].frames[0].mouth_open < last.mouth_open
    assert fresh[0].frames[0].mouth_open == 0.0
    assert carried[-1].frames[-1].mouth_open == 0.0


async def test_silence_gives_a_closed_mouth_and_idle_life():
    backend = make()
    audio = AudioChunk(np.zeros(24000 * 8, np.float32), 24000, 0.0)
    chunks = await animate_all(backend, AnimateRequest(SpeechChunk(audio, ""), seed=1))
    frames = [f for c in chunks for f in c.frames]
    assert len(frames) == 200
    assert {f.mouth_open for f in frames} == {0.0} and {f.mouth_width for f in frames} == {0.0}
    assert max(f.blink for f in frames) > 0.9  # at least one blink in 8 s
    assert np.std([f.head_yaw for f in frames]) > 0.1
    # with the head held still, the mouth region is the same in every frame: no flicker
    pack = AvatarPack.load("astronaut")
    renderer = PortraitRenderer(pack)
    x0, y0, x1, y1 = pack.regions["mouth_box"]
    still = [dataclasses.replace(f, head_yaw=0.0, head_pitch=0.0, head_roll=0.0, breath=0.0)
             for f in frames[::10]]
    mouths = [renderer.render(f)[y0:y1, x0:x1] for f in still]
    assert all(np.array_equal(mouths[0], m) for m in mouths[1:])


async def test_empty_audio_yields_nothing():
    backend = make()
    audio = AudioChunk(np.zeros(0, np.float32), 24000, 1.0)
    assert await animate_all(backend, AnimateRequest(SpeechChunk(audio, ""))) == []
