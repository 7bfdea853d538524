"""A scripted speech-to-speech model for tests (text and a tone, streamed in small pieces).

It "hears" the user (a fixed transcript, or the typed text), then streams a fixed reply as interleaved text pieces and small pieces of a tone whose length
follows the text, the way Qwen-Omni's stream arrives. It keeps the last requests it was sent."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator

import numpy as np
from pydantic import Field

from avatarchat.backends.speech_to_speech.base import SpeechToSpeechBackend, SpeechToSpeechOptions
from avatarchat.messages import AudioChunk, SpeechRequest, TextDelta, Transcript


class ScriptedSpeechToSpeech(SpeechToSpeechBackend):
    class Options(SpeechToSpeechOptions):
        heard: str | None = Field("What is your name?", description="the transcript of any spoken input "
                                  "(null: the model gives none, like Qwen-Omni's chat completions)")
        reply: str = Field("Hello there. I am a scripted model. How can I help?",
                           description="the reply; '{user}' is replaced by what the user said")
        first_delay_s: float = Field(0.05, ge=0, description="simulated time to the first piece")
        piece_delay_s: float = Field(0.02, ge=0, description="simulated time per further piece")
        seconds_per_char: float = Field(0.06, gt=0, description="audio length per character of reply")

    def __init__(self, options):
        super().__init__(options)
        self.requests: deque[SpeechRequest] = deque(maxlen=16)
        self.streams_stopped_early = 0

    async def converse(self, request: SpeechRequest) -> AsyncIterator[Transcript | TextDelta | AudioChunk]:
        self.requests.append(request)
        o = self.options
        user = request.text if request.text is not None else (o.heard or "")
        finished = False
        try:
            await asyncio.sleep(o.first_delay_s)
            if request.audio is not None and o.heard is not None:
                yield Transcript(text=o.heard, language="en")
            reply = o.reply.replace("{user}", user)
            words = reply.split(" ")
            rate = self.sample_rate
            for i, word in enumerate(words):
                if i:
                    await asyncio.sleep(o.piece_delay_s)
                piece = word if i == 0 else " " + word
                yield TextDelta(piece)
                n = int(len(piece) * o.seconds_per_char * rate)
                t = np.arange(n, dtype=np.float32) / rate
                # 220 Hz under a 4 Hz syllable-like envelope, so the avatar's mouth has work
                yield AudioChunk((0.3 * np.sin(2 * np.pi * 220 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 4 * t)))
                                 .astype(np.float32), rate)
            finished = True
        finally:
            if not finished:
                self.streams_stopped_early += 1


BACKEND = ScriptedSpeechToSpeech
