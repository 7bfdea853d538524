"""A scripted LLM for tests: streams a fixed reply word by word (character by character where the
reply is Chinese, Japanese or Korean, which have no spaces) with scripted timing, counts how many
pieces it produced and whether it was stopped early, and keeps the last few requests (the system
prompt it would send included) so tests can see what reached the LLM."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator

from pydantic import Field

from avatarchat.backends.llm.base import DEFAULT_SYSTEM_PROMPT, LLMBackend
from avatarchat.config import Options
from avatarchat.languages import guess_from_script
from avatarchat.messages import LLMRequest, TextDelta


class ScriptedLLM(LLMBackend):
    class Options(Options):
        reply: str = Field("Hello there. It is nice to meet you. How can I help?",
                           description="the reply; '{user}' is replaced by the user's last message")
        first_token_delay_s: float = Field(0.05, ge=0, description="simulated time to first token")
        token_delay_s: float = Field(0.01, ge=0, description="simulated time per further token")
        system_prompt: str = Field(DEFAULT_SYSTEM_PROMPT, min_length=1,
                                   description="the system prompt (only recorded: nothing reads it)")

    def __init__(self, options):
        super().__init__(options)
        self.tokens_generated = 0
        self.streams_stopped_early = 0
        self.requests: deque[list[dict]] = deque(maxlen=16)  # chat messages, newest last

    async def stream(self, request: LLMRequest) -> AsyncIterator[TextDelta]:
        self.requests.append(self.chat_messages(request))
        user = request.history[-1].content if request.history else ""
        reply = self.options.reply.replace("{user}", user)
        by_char = guess_from_script(reply) is not None  # CJK: no spaces to split at
        words = list(reply) if by_char else reply.split(" ")
        finished = False
        try:
            await asyncio.sleep(self.options.first_token_delay_s)
            for i, word in enumerate(words):
                if i:
                    await asyncio.sleep(self.options.token_delay_s)
                self.tokens_generated += 1
                yield TextDelta(word if i == 0 or by_char else " " + word)
            finished = True
        finally:
            if not finished:
                self.streams_stopped_early += 1


BACKEND = ScriptedLLM
