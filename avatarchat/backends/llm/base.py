"""Language model: a conversation in, the reply streamed as text deltas."""

from __future__ import annotations

from collections.abc import AsyncIterator

from avatarchat.backends.base import Backend
from avatarchat.messages import LLMRequest, TextDelta

DEFAULT_SYSTEM_PROMPT = (
    "You are a friendly talking avatar in a voice conversation. Answer in one or two short, "
    "simple spoken sentences. Do not use lists, markdown or emojis."
)


class LLMBackend(Backend):
    stage = "llm"

    def stream(self, request: LLMRequest) -> AsyncIterator[TextDelta]:
        """Yield the reply as it is generated. Stopping iteration early must stop generation."""
        raise NotImplementedError
