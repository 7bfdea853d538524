"""A scripted LLM for tests: streams a fixed reply word by word with scripted timing, and counts
how many words it produced and whether it was stopped early."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from pydantic import Field

from avatarchat.backends.llm.base import LLMBackend
from avatarchat.config import Options
from avatarchat.messages import LLMRequest, TextDelta


class ScriptedLLM(LLMBackend):
    class Options(Options):
        reply: str = Field("Hello there. It is nice to meet you. How can I help?",
                           description="the reply; '{user}' is replaced by the user's last message")
        first_token_delay_s: float = Field(0.05, ge=0, description="simulated time to first token")
        token_delay_s: float = Field(0.01, ge=0, description="simulated time per further token")

    def __init__(self, options):
        super().__init__(options)
        self.tokens_generated = 0
        self.streams_stopped_early = 0

    async def stream(self, request: LLMRequest) -> AsyncIterator[TextDelta]:
        user = request.history[-1].content if request.history else ""
        words = self.options.reply.replace("{user}", user).split(" ")
        finished = False
        try:
            await asyncio.sleep(self.options.first_token_delay_s)
            for i, word in enumerate(words):
                if i:
                    await asyncio.sleep(self.options.token_delay_s)
                self.tokens_generated += 1
                yield TextDelta(word if i == 0 else " " + word)
            finished = True
        finally:
            if not finished:
                self.streams_stopped_early += 1


BACKEND = ScriptedLLM
