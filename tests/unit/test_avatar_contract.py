"""The avatar contract around the backends: frames a backend draws (VideoFrame) through the wire,
the playout and the painter; which render modes a service offers; where a media process gets its
avatar from (avatarchat/avatar/media_avatar.py)."""

import numpy as np
import pytest

from avatarchat.avatar.media_avatar import media_avatar, painter_for
from avatarchat.avatar.painter import DrawnFramePainter, MotionPainter
from avatarchat.config import Sessions, parse_config
from avatarchat.conversation.playout import Playout
from avatarchat.errors import ConfigError
from avatarchat.messages import AudioChunk, AvatarChunk, FaceMotion, VideoFrame
from avatarchat.webrtc.service import render_modes
from avatarchat import wire

pytestmark = pytest.mark.timeout(60)


def solid(value: int, w: int = 64, h: int = 48) -> VideoFrame:
    return VideoFrame.from_rgb(np.full((h, w, 3), value, np.uint8))


def test_a_video_frame_is_a_jpeg_of_its_image():
    image = np.zeros((48, 64, 3), np.uint8)
    image[:, :32] = (200, 40, 10)
    frame = VideoFrame.from_rgb(image)
    assert (frame.width, frame.height) == (64, 48) and frame.jpeg[:2] == b"\xff\xd8"
    assert np.abs(frame.rgb().astype(int) - image).mean() < 3
    with pytest.raises(ValueError, match="uint8 RGB"):
        VideoFrame.from_rgb(np.zeros((48, 64), np.uint8))
    with pytest.raises(ValueError, match="decodable"):
        VideoFrame(b"not a jpeg", 64, 48).rgb()


def test_drawn_frames_cross_the_wire_as_jpegs():
    chunk = AvatarChunk(AudioChunk(np.zeros(800, np.float32), 16000, 0.5), (solid(10), solid(250)), 13, 25,
                        "Hi.", 2)
    line = wire.encode(chunk)
    assert "frames" not in line and len(line["jpeg"]) == 2 and (line["width"], line["height"]) == (64, 48)
    back = wire.decode_media(line)
    assert back.frames == chunk.frames and back.first_frame == 13 and back.sentence == 2
    motion = AvatarChunk(chunk.audio, (FaceMotion(mouth_open=0.5),), 13, 25)
    assert wire.decode_media(wire.encode(motion)).frames[0].mouth_open == 0.5


def test_the_drawn_frame_painter_shows_the_idle_loop_by_the_session_clock():
    painter = DrawnFramePainter([solid(20), solid(120), solid(220)], fps=25)
    assert painter.size == (64, 48) and not painter.draws_in_browser
    idle = FaceMotion()
    means = [round(float(painter.paint(idle, k / 25).mean()), -1) for k in range(7)]
    assert means == [20, 120, 220, 20, 120, 220, 20]
    assert abs(float(painter.paint(solid(90), 0.0).mean()) - 90) < 2  # a drawn frame as it came
    with pytest.raises(ValueError, match="32x48 frame"):
        painter.paint(solid(90, w=32), 0.0)
    with pytest.raises(ValueError, match="differ in size"):
        DrawnFramePainter([solid(1), solid(1, w=32)], fps=25)
    with pytest.raises(ValueError, match="at least one"):
        DrawnFramePainter([], fps=25)


def test_the_motion_painter_refuses_drawn_frames():
    painter = painter_for(load("portrait"))
    assert isinstance(painter, MotionPainter) and painter.draws_in_browser
    assert painter.paint(FaceMotion(mouth_open=0.4), 0.0).shape == (512, 512, 3)
    with pytest.raises(TypeError, match="VideoFrame"):
        painter.paint(solid(1), 0.0)


def test_the_playout_holds_drawn_frames_by_reply_frame_like_motion():
    playout = Playout(fps=25)
    playout.start_reply()
    frames = tuple(solid(10 * k) for k in range(5))
    playout.push(AvatarChunk(AudioChunk(np.full(3200, 0.1, np.float32), 16000, 0.0), frames, 0, 25))
    playout.audio_frame(0.0)  # the first 20 ms is heard
    shown, speaking = playout.frame_at(0.0)
    assert speaking and shown is frames[0]
    playout.flush()
    shown, speaking = playout.frame_at(0.1)
    assert not speaking and isinstance(shown, FaceMotion)  # idle: the painter shows its loop


def test_render_browser_is_not_offered_with_an_avatar_that_draws_its_own_frames():
    drawn = DrawnFramePainter([solid(1)], fps=25)
    motion = painter_for(load("portrait"))
    both = Sessions(render=["browser", "server"])
    assert render_modes(both, motion) == ("browser", "server")
    assert render_modes(both, drawn) == ("server",)
    with pytest.raises(ConfigError, match="sessions.render"):
        render_modes(Sessions(render=["browser"]), drawn)


class FakeAvatarDeployment:
    """The Avatar deployment's handle, as far as media_avatar uses it."""

    def __init__(self, frames):
        self.asked = 0

        class Method:
            @staticmethod
            async def remote():
                self.asked += 1
                return frames

        self.idle_frames = Method()


async def test_a_media_process_runs_the_portrait_itself_and_asks_a_drawing_avatar_for_its_loop():
    config = parse_config({"stages": {"avatar": {"backend": "portrait"}}})
    deployment = FakeAvatarDeployment([solid(1)])
    here = await media_avatar(config.stage("avatar"), deployment)
    assert here.local is not None and here.local.name == "portrait" and isinstance(here.painter, MotionPainter)
    assert deployment.asked == 0

    config = parse_config({"stages": {"avatar": {"backend": "scripted_frames", "fps": 30}}})
    here = await media_avatar(config.stage("avatar"), deployment)
    assert here.local is None and isinstance(here.painter, DrawnFramePainter)
    assert deployment.asked == 1 and here.painter.fps == 30


def load(backend: str):
    from avatarchat.backends.base import create_backend

    return create_backend(parse_config({"stages": {"avatar": {"backend": backend}}}).stage("avatar"))
