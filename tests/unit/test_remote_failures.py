"""Remote services' failures (avatarchat/remote.py): kinds, the retry policy, secrets from the
environment, and the fallback backend (avatarchat/backends/fallback.py). Scripted streams stand in
for the services here; tests/integration/test_{edge_tts,cosyvoice_bailian,qwen_omni}.py run the real
SDKs against local stand-ins of each service."""

import asyncio
import pickle

import numpy as np
import pytest

from avatarchat.backends.base import create_backend
from avatarchat.backends.fallback import FallbackBackend
from avatarchat.config import parse_config
from avatarchat.errors import ConfigError, StageLoadError
from avatarchat.messages import AudioChunk
from avatarchat.remote import RemoteServiceError, RetryPolicy, kind_for_status, retrying, secret_from_env

pytestmark = pytest.mark.timeout(20)


class Service:
    """A scripted remote: each attempt fails with the next scripted kind, or streams 3 items."""

    def __init__(self, failures=(), fail_after=None, stall=False):
        self.failures, self.fail_after, self.stall = list(failures), fail_after, stall
        self.attempts = self.closed = 0

    async def stream(self):
        self.attempts += 1
        try:
            if self.failures:
                raise RemoteServiceError("svc", self.failures.pop(0))
            if self.stall:
                await asyncio.sleep(60)
            for i in range(3):
                if i == self.fail_after:
                    raise RemoteServiceError("svc", "server_error", "dropped")
                yield i
        finally:
            self.closed += 1


async def no_sleep(_s):
    pass


async def run(service, **policy):
    return [i async for i in retrying("svc", RetryPolicy(**policy), service.stream, sleep=no_sleep)]


async def test_transient_failures_before_any_output_are_retried():
    service = Service(["unreachable", "rate_limited"])
    assert await run(service, attempts=3) == [0, 1, 2]
    assert service.attempts == 3 and service.closed == 3


async def test_a_failure_a_retry_cannot_fix_is_not_retried():
    for kind in ("unauthorised", "quota", "bad_request", "protocol"):
        service = Service([kind])
        with pytest.raises(RemoteServiceError) as err:
            await run(service, attempts=3)
        assert err.value.kind == kind and service.attempts == 1


async def test_retries_stop_at_the_policys_attempts():
    service = Service(["timeout"] * 5)
    with pytest.raises(RemoteServiceError, match="did not answer in time"):
        await run(service, attempts=2)
    assert service.attempts == 2


async def test_a_failure_after_output_is_raised_not_retried():
    service = Service(fail_after=2)
    got = []
    with pytest.raises(RemoteServiceError):
        async for item in retrying("svc", RetryPolicy(), service.stream, sleep=no_sleep):
            got.append(item)
    assert got == [0, 1] and service.attempts == 1  # a retry would repeat what was heard


async def test_a_stalled_service_becomes_a_timeout():
    service = Service(stall=True)
    with pytest.raises(RemoteServiceError) as err:
        await run(service, attempts=2, timeout_s=0.1)
    assert err.value.kind == "timeout" and service.attempts == 2 and service.closed == 2


def test_kinds_from_http_status_and_the_reason_users_see():
    assert [kind_for_status(s) for s in (401, 403, 402, 429, 504, 500, 400)] == [
        "unauthorised", "unauthorised", "quota", "rate_limited", "timeout", "server_error", "bad_request"]
    err = RemoteServiceError("Edge TTS", "unauthorised", "HTTP 403", "check the token")
    assert err.reason == "Edge TTS refused the credentials (HTTP 403): check the token" and not err.transient
    copy = pickle.loads(pickle.dumps(err))  # crosses Ray's process boundary intact
    assert (copy.kind, copy.reason) == ("unauthorised", err.reason)
    with pytest.raises(ValueError, match="unknown failure kind"):
        RemoteServiceError("x", "gone")


def test_a_secret_comes_from_its_variable_and_a_missing_one_names_it(monkeypatch):
    monkeypatch.setenv("AVATAR_TEST_KEY", " sk-123 ")
    assert secret_from_env("AVATAR_TEST_KEY", "key") == "sk-123"
    monkeypatch.delenv("AVATAR_TEST_KEY")
    with pytest.raises(RuntimeError, match="AVATAR_TEST_KEY is not set") as err:
        secret_from_env("AVATAR_TEST_KEY", "key")
    assert "sk-123" not in str(err.value)


class BrokenTTS:
    """A loaded TTS backend whose service fails (before or after its first audio)."""

    stage, options, name, sample_rate = "tts", None, "remote", 24000

    def __init__(self, kind="unreachable", after_first=False):
        self.kind, self.after_first, self.calls = kind, after_first, 0

    async def synthesize(self, text, language=None):
        self.calls += 1
        if self.after_first:
            yield AudioChunk(np.zeros(240, np.float32), 24000)
        raise RemoteServiceError("Remote TTS", self.kind)

    def close(self):
        pass


def scripted_tts():
    return create_backend(parse_config({"stages": {"tts": {"backend": "scripted", "delay_s": 0}}}).stage("tts"))


async def audio_of(backend, text="Hello."):
    return [a async for a in backend.synthesize(text)]


async def test_the_fallback_answers_when_the_remote_fails_and_the_remote_rests():
    now = [0.0]
    primary = BrokenTTS("quota")
    tts = FallbackBackend(primary, scripted_tts(), clock=lambda: now[0], rest_s=30)
    assert (await audio_of(tts))[0].duration == pytest.approx(0.36, abs=0.01)
    assert primary.calls == 1 and tts.calls_to_fallback == 1
    now[0] = 10.0
    await audio_of(tts)
    assert primary.calls == 1  # resting: every sentence does not wait for the failing service again
    now[0] = 31.0
    await audio_of(tts)
    assert primary.calls == 2 and tts.calls_to_fallback == 3
    assert tts.sample_rate == 24000  # the primary's attributes show through


async def test_a_failure_after_audio_was_heard_is_not_hidden_by_the_fallback():
    tts = FallbackBackend(BrokenTTS(after_first=True), scripted_tts())
    with pytest.raises(RemoteServiceError):
        await audio_of(tts)
    assert tts.calls_to_fallback == 0


def test_a_fallback_is_configured_per_stage_and_checked():
    cfg = parse_config({"stages": {"tts": {"backend": "scripted", "fallback": {"backend": "hibari"}}}})
    assert cfg.stage("tts").fallback.backend == "hibari"
    with pytest.raises(ConfigError, match=r"stages\.tts\.fallback\.backend: unknown backend 'nope'"):
        parse_config({"stages": {"tts": {"fallback": {"backend": "nope"}}}})
    with pytest.raises(ConfigError, match=r"stages\.tts\.fallback\.speed: .*less than or equal"):
        parse_config({"stages": {"tts": {"fallback": {"backend": "hibari", "speed": 99}}}})
    with pytest.raises(ConfigError, match=r"stages\.avatar\.fallback: only the asr, llm, tts"):
        parse_config({"stages": {"avatar": {"fallback": {"backend": "scripted"}}}})
    with pytest.raises(ConfigError, match=r"stages\.tts\.fallback: must be a mapping with a 'backend' key"):
        parse_config({"stages": {"tts": {"fallback": "hibari"}}})


def test_a_fallback_that_cannot_load_stops_start_up_under_its_own_name():
    cfg = parse_config({"stages": {"asr": {"backend": "scripted",
                                           "fallback": {"backend": "faster_whisper", "model_path": "/nonexistent"}}}})
    with pytest.raises(StageLoadError, match=r"stage 'asr' \(backend 'faster_whisper'\)"):
        create_backend(cfg.stage("asr"))
