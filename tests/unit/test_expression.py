"""Expressions: emotion names, the LLM's emotion tag taken off a streamed reply, easing, and what
the face does with them (avatarchat/avatar/expression.py, the portrait backend and renderer)."""

import asyncio

import numpy as np
import pytest

from avatarchat.avatar import expression
from avatarchat.avatar.expression import EmotionTagFilter, Expression, normalise
from avatarchat.avatar.pack import AvatarPack
from avatarchat.avatar.renderer import PortraitRenderer
from avatarchat.backends.avatar.portrait import PortraitAvatar
from avatarchat.messages import AnimateRequest, AudioChunk, FaceMotion, SpeechChunk
from avatarchat.webrtc import motion_channel
from avatarchat.conversation.playout import Playout


@pytest.mark.parametrize("raw, name", [("HAPPY", "happy"), ("<|SAD|>", "sad"), ("Surprised", "surprised"),
                                       ("EMO_UNKNOWN", "neutral"), ("joy", "happy"), ("bored", None),
                                       (None, None), ("", None)])
def test_emotion_names_from_asr_and_llm_map_to_ours(raw, name):
    assert normalise(raw) == name


def feed_all(pieces):
    tags = EmotionTagFilter()
    text = "".join(tags.feed(p) for p in pieces) + tags.flush()
    return tags.emotion, text


@pytest.mark.parametrize("pieces, emotion, text", [
    (["[happy]", " Great", " news!"], "happy", "Great news!"),
    (["[", "ha", "ppy] Great!"], "happy", "Great!"),
    (["(sad) Oh", " no."], "sad", "Oh no."),
    (["Hello", " [happy] there"], None, "Hello [happy] there"),   # only at the very start
    (["[note] Hi"], None, "[note] Hi"),                            # not an emotion: kept
    (["[", "unfinished"], None, "[unfinished"),                    # never closed: kept
    ([" ", "Plain text."], None, " Plain text."),
    (["【开心】", "你好！"], "happy", "你好！"),                    # Chinese tag, full-width brackets
    (["（", "难过）我很", "抱歉。"], "sad", "我很抱歉。"),
    (["[surprised] ", "真的吗？"], "surprised", "真的吗？"),
    (["【注意】请", "小心。"], None, "【注意】请小心。"),             # not an emotion: kept
    (["你好", "，很高兴见到你。"], None, "你好，很高兴见到你。"),   # no tag: CJK text passes at once
    (["こんにちは"], None, "こんにちは"),
])
def test_an_emotion_tag_is_taken_off_the_start_of_the_reply(pieces, emotion, text):
    assert feed_all(pieces) == (emotion, text)


def test_easing_reaches_the_target_and_settles_exactly():
    e = Expression()
    for _ in range(25):  # one second at 25 fps
        e = expression.ease(e, expression.target("happy"), 0.04, expression.BLEND_IN_S)
    assert 0.75 < e.smile <= 0.8
    for _ in range(100):
        e = expression.ease(e, expression.target(None), 0.04, expression.BLEND_OUT_S)
    assert e == Expression()


def animate(emotion, previous=None):
    backend = PortraitAvatar(PortraitAvatar.Options())
    backend.load()
    t = np.arange(int(2.0 * 16000)) / 16000
    audio = AudioChunk((0.3 * np.sin(2 * np.pi * 180 * t)).astype(np.float32), 16000, 0.0)
    request = AnimateRequest(SpeechChunk(audio, "Hi."), previous=previous, emotion=emotion)

    async def run():
        return [m for c in [c async for c in backend.animate(request)] for m in c.frames]
    return asyncio.run(run())


def test_the_turns_emotion_eases_in_and_carries_across_sentences():
    happy = animate("happy")
    assert happy[0].smile < 0.2 and happy[-1].smile > 0.7  # eased in, not switched
    assert np.all(np.diff([m.smile for m in happy]) >= 0)
    assert all(m.smile == 0.0 for m in animate(None))
    surprised = animate("surprised")
    assert surprised[-1].surprise > 0.8 and surprised[-1].brow > 0.6
    sad, neutral = animate("sad"), animate(None)
    assert sad[-1].smile < -0.6 and sad[-1].brow < neutral[-1].brow - 0.25  # on top of speech's brow
    assert sad[-1].head_pitch < neutral[-1].head_pitch - 1.5  # looks down
    # the next sentence starts from where the last one ended
    assert animate("happy", previous=happy[-1])[0].smile > 0.7


def test_happy_and_sad_faces_differ_at_the_mouth_corners():
    renderer = PortraitRenderer(AvatarPack.load("astronaut"))
    x0, y0, x1, y1 = renderer.mouth.box
    crop = lambda m: renderer.render(m)[y0:y1, x0:x1].astype(np.float32)  # noqa: E731
    rest, happy, sad = crop(FaceMotion()), crop(FaceMotion(smile=0.8)), crop(FaceMotion(smile=-0.7))
    assert np.abs(happy - rest).mean() > 1.0 and np.abs(sad - rest).mean() > 1.0
    assert np.abs(happy - sad).mean() > 2.0


def test_the_idle_face_eases_back_to_neutral_after_a_reply():
    playout = Playout(fps=25)
    playout._last_face = (10.0, FaceMotion(smile=0.8, brow=0.15))
    smiles = [playout.frame_at(10.0 + k / 25)[0].smile for k in range(1, 200)]
    assert 0.6 < smiles[0] < 0.8 and smiles[-1] == 0.0
    assert np.all(np.diff(smiles) <= 0)


def test_motion_packets_round_trip_and_reject_other_sizes():
    motion = FaceMotion(mouth_open=0.5, mouth_width=-0.25, head_yaw=1.5, blink=1.0, smile=0.75)
    data = motion_channel.pack(1234, motion, True)
    assert len(data) == motion_channel.PACKET.size == 5 + 4 * len(motion.as_list())
    k, back, speaking = motion_channel.unpack(data)
    assert (k, speaking) == (1234, True) and back == motion
    with pytest.raises(ValueError, match="bytes"):
        motion_channel.unpack(data[:-1])
