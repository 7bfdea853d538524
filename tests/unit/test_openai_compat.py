"""The OpenAI-compatible client against a real HTTP SSE server (FastAPI + uvicorn on 127.0.0.1)
answered by the scripted LLM; tests/integration has the same against the real llama.cpp model."""

import asyncio

import pytest

from avatarchat.backends.base import create_backend
from avatarchat.backends.llm.openai_compat import OpenAICompatError
from avatarchat.config import parse_stage
from avatarchat.messages import ChatMessage, LLMRequest
from tests.helpers import OpenAIServer

pytest.importorskip("uvicorn")
pytest.importorskip("fastapi")

REPLY = "one two three four five six seven eight nine ten eleven twelve"


@pytest.fixture(scope="module")
def scripted_llm():
    return create_backend(parse_stage("test", "llm", {
        "backend": "scripted", "reply": REPLY, "first_token_delay_s": 0.0, "token_delay_s": 0.02}))


@pytest.fixture(scope="module")
def server(scripted_llm):
    with OpenAIServer(scripted_llm, api_key="test-key-123") as srv:
        yield srv


def client(server, monkeypatch, **options):
    monkeypatch.setenv("AVATARCHAT_TEST_KEY", "test-key-123")
    return create_backend(parse_stage("test", "llm", {
        "backend": "openai_compat", "base_url": server.base_url, "model": "smollm2",
        "api_key_env": "AVATARCHAT_TEST_KEY", "check_on_load": True, **options}))


def request(text="Hello?"):
    return LLMRequest((ChatMessage("user", "Hi."), ChatMessage("assistant", "Hello."),
                       ChatMessage("user", text)))


async def test_streams_the_reply_and_sends_an_openai_request(server, monkeypatch):
    llm = client(server, monkeypatch, max_tokens=20, system_prompt="Be brief.")
    deltas = [d.text async for d in llm.stream(request("Count."))]
    assert len(deltas) == len(REPLY.split())
    assert "".join(deltas) == REPLY
    body = server.requests[-1]
    assert body["stream"] is True and body["model"] == "smollm2" and body["max_tokens"] == 20
    assert body["messages"][0] == {"role": "system", "content": "Be brief."}
    assert [m["role"] for m in body["messages"][1:]] == ["user", "assistant", "user"]
    assert body["messages"][-1]["content"] == "Count."
    llm.close()


async def test_early_exit_closes_the_stream_and_the_server_stops(server, scripted_llm, monkeypatch):
    llm = client(server, monkeypatch)
    before_disconnects = server.disconnects
    before_stopped = scripted_llm.streams_stopped_early
    n = 0
    async for _ in llm.stream(request()):
        n += 1
        if n == 3:
            break
    for _ in range(100):  # the server notices the closed connection
        if server.disconnects > before_disconnects:
            break
        await asyncio.sleep(0.02)
    assert server.disconnects == before_disconnects + 1
    assert scripted_llm.streams_stopped_early == before_stopped + 1
    assert llm.streams_stopped_early == 1


async def test_http_errors_are_reported_with_the_status(server, monkeypatch):
    llm = client(server, monkeypatch, check_on_load=False)
    monkeypatch.setenv("AVATARCHAT_TEST_KEY", "wrong")
    llm.load()  # re-reads the (now wrong) key
    with pytest.raises(OpenAICompatError, match="401"):
        async for _ in llm.stream(request()):
            pass


def test_check_on_load_fails_when_the_key_is_wrong_or_the_server_unreachable(server, monkeypatch):
    from avatarchat.errors import StageLoadError

    monkeypatch.setenv("AVATARCHAT_TEST_KEY", "wrong")
    with pytest.raises(StageLoadError, match="401"):
        create_backend(parse_stage("test", "llm", {
            "backend": "openai_compat", "base_url": server.base_url,
            "api_key_env": "AVATARCHAT_TEST_KEY", "check_on_load": True}))
    with pytest.raises(StageLoadError, match="stage 'llm'"):
        create_backend(parse_stage("test", "llm", {
            "backend": "openai_compat", "base_url": "http://127.0.0.1:9/v1",
            "check_on_load": True, "timeout_s": 2}))
