"""The portrait avatar on real synthetic speech (hibari TTS): the mouth moves with the voice."""

import numpy as np
import pytest

from avatarchat.avatar.pack import AvatarPack
from avatarchat.avatar.renderer import PortraitRenderer
from avatarchat.backends.base import create_backend
from avatarchat.config import parse_stage
from avatarchat.messages import AnimateRequest, AudioChunk, SpeechChunk

pytestmark = pytest.mark.models

TEXT = "Hello there, how are you today?"


@pytest.fixture(scope="module")
def speech():
    from hibari import Hibari

    samples = np.asarray(Hibari()(TEXT), dtype=np.float32)
    return AudioChunk(samples, 24000, start=0.52)  # an odd start, as for a second sentence


@pytest.fixture(scope="module")
def avatar():
    return create_backend(parse_stage("test", "avatar", {"backend": "portrait"}))


async def test_mouth_follows_the_voice(speech, avatar):
    chunks = [c async for c in avatar.animate(AnimateRequest(SpeechChunk(speech, TEXT)))]
    frames, rms = [], []
    for chunk in chunks:
        for j, motion in enumerate(chunk.frames):
            k = chunk.first_frame + j
            a = int(round((k / 25 - speech.start) * 24000))
            segment = speech.samples[a:a + 24000 // 25]
            frames.append(motion.mouth_open)
            rms.append(float(np.sqrt(np.mean(segment ** 2))) if len(segment) else 0.0)
    frames, rms = np.array(frames), np.array(rms)
    assert len(frames) == round(speech.duration * 25)
    r = float(np.corrcoef(frames, rms)[0, 1])
    assert r > 0.5, f"Pearson r between mouth_open and frame RMS is {r:.2f}"
    assert frames.max() >= 0.5
    assert frames[0] == 0.0  # the clip starts with silence
    assert np.abs(np.diff(frames)).max() <= 0.5  # no flicker


async def test_rendered_mouth_moves_while_speaking(speech, avatar):
    chunks = [c async for c in avatar.animate(AnimateRequest(SpeechChunk(speech, TEXT)))]
    motions = [m for c in chunks for m in c.frames]
    pack = AvatarPack.load("astronaut")
    renderer = PortraitRenderer(pack)
    x0, y0, x1, y1 = pack.regions["mouth_box"]
    dark = [int((renderer.render(m)[y0:y1, x0:x1].max(axis=-1) < 70).sum()) for m in motions]
    # the mouth interior shows on open frames and not on closed ones
    opening = np.array([m.mouth_open for m in motions])
    assert max(dark) > 60
    assert np.corrcoef(opening, dark)[0, 1] > 0.7
