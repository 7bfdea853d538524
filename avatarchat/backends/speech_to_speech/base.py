"""Speech to speech: one model hears the user and answers with text and speech, in place of the
ASR, LLM and TTS stages (Qwen-Omni, MiniCPM-o). VAD/end-of-turn, barge-in, history and the avatar
work as in the cascade; the graph builds this stage instead of those three (graph.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Literal

from pydantic import Field

from avatarchat.backends.base import Backend
from avatarchat.backends.llm.base import DEFAULT_SYSTEM_PROMPT
from avatarchat.config import Options
from avatarchat.messages import AudioChunk, SpeechRequest, TextDelta, Transcript


class SpeechToSpeechOptions(Options):
    """Options every speech-to-speech backend has (each backend's Options extends these)."""

    captions: Literal["model", "asr"] = Field(
        "model", description="where the user's words shown as captions (and kept in the history) come "
        "from: \"model\", the model's own transcript of what it heard, where it gives one; \"asr\", the "
        "asr stage (configure stages.asr) run beside the model, which adds no delay to the reply")
    system_prompt: str = Field(DEFAULT_SYSTEM_PROMPT, min_length=1,
                               description="fixed system prompt sent first in every request")


class SpeechToSpeechBackend(Backend):
    stage = "speech_to_speech"
    Options = SpeechToSpeechOptions
    sample_rate: int = 24000

    def converse(self, request: SpeechRequest) -> AsyncIterator[Transcript | TextDelta | AudioChunk]:
        """Yield the reply as it is generated: ``TextDelta`` pieces of its text and ``AudioChunk``
        pieces of its speech (each starting at 0.0; the turn places them one after another), in the
        order the model produces them, plus at most one ``Transcript`` of the user's speech if the
        model transcribes it. Stopping iteration early must stop generation and close the
        connection. Remote failures raise avatarchat.remote.RemoteServiceError."""
        raise NotImplementedError
