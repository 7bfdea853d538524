"""Text to speech: one sentence in, its audio streamed out."""

from __future__ import annotations

from collections.abc import AsyncIterator

from avatarchat.backends.base import Backend
from avatarchat.messages import AudioChunk


class TTSBackend(Backend):
    stage = "tts"
    sample_rate: int = 24000

    def synthesize(self, text: str, language: str | None = None) -> AsyncIterator[AudioChunk]:
        """Yield the audio of ``text`` (chunks start at 0.0 on the sentence's own timeline).
        ``language`` is the reply's language code (None: unknown); a backend with a voice per
        language picks by it, one with a single voice ignores it."""
        raise NotImplementedError
