"""The stage contracts: small typed messages that flow between pipeline stages.

Messages are frozen dataclasses (cheap to create, cheap to pickle across Ray) rather than pydantic
models: pydantic is for configuration, validated once at start-up, not for hot-path data.

Each message's class says what an interruption does to it (``dropped_on_interrupt``), the way
Pipecat's frame types do: media and partial text belong to the reply being spoken and are flushed on
barge-in; transcripts and timings describe what already happened and are kept. The conversation
core reads it when it cuts a reply (avatarchat/conversation/outbox.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

import numpy as np

Role = Literal["system", "user", "assistant"]


@dataclass(frozen=True, slots=True)
class Message:
    dropped_on_interrupt: ClassVar[bool] = False


@dataclass(frozen=True, slots=True)
class AudioChunk(Message):
    """Mono float32 samples in [-1, 1] at ``sample_rate``; ``start`` is the position of the first
    sample on its stream's timeline, in seconds."""

    samples: np.ndarray
    sample_rate: int
    start: float = 0.0
    dropped_on_interrupt: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if self.samples.ndim != 1:
            raise ValueError(f"AudioChunk needs mono samples, got shape {self.samples.shape}")
        if self.samples.dtype != np.float32:
            object.__setattr__(self, "samples", self.samples.astype(np.float32))
        if self.sample_rate <= 0:
            raise ValueError(f"AudioChunk sample_rate must be positive, got {self.sample_rate}")

    @property
    def duration(self) -> float:
        return len(self.samples) / self.sample_rate

    @property
    def end(self) -> float:
        return self.start + self.duration


@dataclass(frozen=True, slots=True)
class Transcript(Message):
    """What the user said. ``language`` is a code (en, zh, yue, ja, ko, ...) as the ASR heard or was
    told it, None when unknown (typed text). ``emotion`` and ``event`` (an audio event such as
    ``Speech``, ``Laughter``, ``BGM``) are set only by backends that detect them (SenseVoice)."""

    text: str
    language: str | None = "en"
    emotion: str | None = None
    event: str | None = None
    final: bool = True


@dataclass(frozen=True, slots=True)
class ChatMessage:
    role: Role
    content: str


@dataclass(frozen=True, slots=True)
class LLMRequest:
    """One reply to generate. ``history`` is the conversation so far, oldest first, without the
    system prompt (the backend owns the fixed system prompt so its KV prefix stays cached)."""

    history: tuple[ChatMessage, ...]
    max_tokens: int | None = None
    language: str | None = None  # what the user spoke (Transcript.language): the reply's language


@dataclass(frozen=True, slots=True)
class SpeechRequest:
    """One reply of a speech-to-speech model (it hears the user and answers in speech, in place of
    ASR, LLM and TTS). ``history`` is the conversation so far, as text, without the system prompt;
    the user's new message is ``audio``, or ``text`` when they typed it."""

    history: tuple[ChatMessage, ...]
    audio: AudioChunk | None = None
    text: str | None = None
    language: str | None = None

    def __post_init__(self) -> None:
        if (self.audio is None) == (self.text is None):
            raise ValueError("a SpeechRequest carries the user's audio or their text, exactly one")


@dataclass(frozen=True, slots=True)
class TextDelta(Message):
    """A piece of the reply text as the LLM streams it."""

    text: str
    dropped_on_interrupt: ClassVar[bool] = True


@dataclass(frozen=True, slots=True)
class SpeechChunk(Message):
    """TTS audio tagged with the text it speaks. ``sentence`` counts sentences within the turn."""

    audio: AudioChunk
    text: str
    sentence: int = 0
    dropped_on_interrupt: ClassVar[bool] = True


@dataclass(frozen=True, slots=True)
class FaceMotion:
    """The avatar's face in one video frame, as a few numbers rather than pixels.

    This is what crosses Ray between the avatar stage and the renderer (~100 bytes a frame, where a
    raw 512x512 RGB frame is 786 kB and ~4 ms a hop). ``mouth_open`` is 0 (closed) .. 1 (wide);
    ``mouth_width`` -1 (rounded) .. +1 (spread); head angles are degrees; ``blink`` is 0 (open) ..
    1 (closed); ``brow`` -1 (lowered) .. +1 (raised); ``breath`` is the breathing phase, -1 .. +1.
    ``smile`` (-1 corners down, sad .. +1 corners up, happy) and ``surprise`` (0 .. 1) are the
    expression; its effect on brows, jaw and head is already in the other values (expression.py),
    they ride along so the next sentence and the idle face can blend on from them.
    """

    mouth_open: float = 0.0
    mouth_width: float = 0.0
    head_yaw: float = 0.0
    head_pitch: float = 0.0
    head_roll: float = 0.0
    blink: float = 0.0
    brow: float = 0.0
    breath: float = 0.0
    smile: float = 0.0
    surprise: float = 0.0

    def as_list(self) -> list[float]:
        return [self.mouth_open, self.mouth_width, self.head_yaw, self.head_pitch,
                self.head_roll, self.blink, self.brow, self.breath, self.smile, self.surprise]

    @classmethod
    def from_list(cls, values: list[float]) -> "FaceMotion":
        return cls(*values)


@dataclass(frozen=True, slots=True)
class VideoFrame:
    """A frame an avatar backend drew itself (MuseTalk, LiteAvatar), as JPEG: what crosses Ray from
    a frame generator to the media plane is ~40 kB a 512x512 frame where raw RGB is 786 kB. Decoded
    next to the video encoder, like a FaceMotion is rendered there."""

    jpeg: bytes
    width: int
    height: int

    @classmethod
    def from_rgb(cls, image: np.ndarray, quality: int = 90) -> "VideoFrame":
        """Encode an (H, W, 3) uint8 RGB image."""
        import cv2

        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"VideoFrame needs (H, W, 3) uint8 RGB, got {image.shape} {image.dtype}")
        ok, buf = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR),
                               [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
        if not ok:
            raise ValueError("JPEG encoding failed")
        return cls(buf.tobytes(), int(image.shape[1]), int(image.shape[0]))

    def rgb(self) -> np.ndarray:
        """The (H, W, 3) uint8 RGB image."""
        import cv2

        bgr = cv2.imdecode(np.frombuffer(self.jpeg, np.uint8), cv2.IMREAD_COLOR)
        if bgr is None:
            raise ValueError("VideoFrame holds no decodable JPEG")
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


Frame = FaceMotion | VideoFrame  # what an AvatarChunk carries per video frame


@dataclass(frozen=True, slots=True)
class AvatarChunk(Message):
    """A slice of the reply as it will be played: audio plus the video frames that go with it.

    Audio and frames travel together so they leave from one clock: frame ``first_frame + i`` is shown
    at ``(first_frame + i) / fps`` seconds on the reply's timeline, which falls inside this chunk's
    ``[audio.start, audio.end)``.
    """

    audio: AudioChunk
    frames: tuple[Frame, ...]  # FaceMotion from motion avatars, VideoFrame from frame-drawing ones
    first_frame: int
    fps: int
    text: str = ""
    sentence: int = 0
    dropped_on_interrupt: ClassVar[bool] = True


@dataclass(frozen=True, slots=True)
class AnimateRequest:
    """Ask the avatar stage to animate ``speech``.

    ``speech.audio.start`` is the position of this audio on the reply's timeline (all sentences of
    the reply back to back). Frame ``k`` of the reply is shown at ``k / fps`` seconds, so this
    request yields exactly the frames whose time falls in ``[audio.start, audio.end)``. Replicas are
    stateless: ``previous`` (the last frame already produced) carries motion across sentences.
    ``emotion`` (avatarchat/avatar/expression.py names) is the expression to show while saying it.
    """

    speech: SpeechChunk
    previous: FaceMotion | None = None
    seed: int = 0
    emotion: str | None = None


@dataclass(slots=True)
class TurnTimings:
    """Where the time of one turn went, in seconds. ``None`` where a stage did not run. Filled in
    as the turn runs, so not a (frozen) Message, but interrupted alike: kept."""

    dropped_on_interrupt: ClassVar[bool] = False

    speech_end_in_input: float | None = None  # VAD: where the user's speech ended in the upload
    asr: float | None = None
    llm_first_token: float | None = None
    llm_total: float | None = None
    tts_first_audio: float | None = None
    avatar_first_frame: float | None = None
    input_to_first_frame: float | None = None
    reply_audio: float = 0.0
    tokens: int = 0
    sentences: int = 0
    extra: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict:
        out = {k: getattr(self, k) for k in self.__slots__ if k != "extra"}
        out.update(self.extra)
        return out
