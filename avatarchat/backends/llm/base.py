"""Language model: a conversation in, the reply streamed as text deltas."""

from __future__ import annotations

from collections.abc import AsyncIterator

from avatarchat.backends.base import Backend
from avatarchat.languages import system_prompt_for
from avatarchat.messages import LLMRequest, TextDelta

DEFAULT_SYSTEM_PROMPT = (
    "You are a friendly talking avatar in a voice conversation. Answer in one or two short, "
    "simple spoken sentences. Do not use lists, markdown or emojis."
)


class LLMBackend(Backend):
    stage = "llm"

    def chat_messages(self, request: LLMRequest, history=None) -> list[dict]:
        """The request as chat-completions messages: the backend's ``system_prompt`` option (plus a
        line asking for the user's language when it is not English, see avatarchat/languages.py),
        then ``history`` (the request's by default)."""
        system = system_prompt_for(self.options.system_prompt, request.language)
        turns = request.history if history is None else history
        return [{"role": "system", "content": system}, *({"role": m.role, "content": m.content} for m in turns)]

    def stream(self, request: LLMRequest) -> AsyncIterator[TextDelta]:
        """Yield the reply as it is generated. Stopping iteration early must stop generation."""
        raise NotImplementedError
