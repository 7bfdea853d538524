"""The session registry's limit and timeouts, with a fake clock and fake sessions (no WebRTC)."""

from dataclasses import dataclass

import pytest

from avatarchat.config import Sessions
from avatarchat.webrtc.sessions import Full, SessionRegistry


class FakeClock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


@dataclass
class FakeSession:
    id: str
    created_at: float
    last_input_at: float
    connected_at: float | None = None
    last_media_at: float | None = None
    closed: bool = False
    close_reason: str | None = None

    async def close(self, reason: str) -> None:
        self.closed, self.close_reason = True, reason


def registry(**options):
    clock = FakeClock()
    return SessionRegistry(Sessions(**options), clock), clock


def add(reg, clock, sid, connected=True):
    reg.reserve()
    s = FakeSession(sid, clock(), clock(), connected_at=clock() if connected else None)
    reg.add(s)
    return s


def test_the_limit_counts_sessions_and_reservations():
    reg, clock = registry(max_sessions=2)
    add(reg, clock, "a")
    reg.reserve()  # an offer being answered holds a place
    with pytest.raises(Full, match="maximum of 2"):
        reg.reserve()
    reg.release()  # that offer failed
    add(reg, clock, "b")
    assert len(reg) == 2 and "a" in reg
    with pytest.raises(Full):
        reg.reserve()


async def test_ending_frees_the_place_and_unknown_ids_are_false():
    reg, clock = registry(max_sessions=1)
    s = add(reg, clock, "a")
    assert await reg.end("a", "hung up") and s.closed and s.close_reason == "hung up"
    assert not await reg.end("a", "again")
    reg.reserve()  # room again


@pytest.mark.parametrize("advance,setup,reason", [
    (6.0, lambda s: None, "no media"),                                   # vanished client
    (16.0, lambda s: setattr(s, "connected_at", None), "not connected"),
    (301.0, lambda s: setattr(s, "last_media_at", 100.0 + 301.0), "idle"),
    (1801.0, lambda s: (setattr(s, "last_media_at", 1901.0), setattr(s, "last_input_at", 1900.0)),
     "max_duration"),
    (0.0, lambda s: setattr(s, "closed", True), "closed"),
])
async def test_each_timeout_ends_a_session(advance, setup, reason):
    reg, clock = registry()
    s = add(reg, clock, "a")
    keep = add(reg, clock, "b")
    clock.t += advance
    keep.last_media_at = keep.last_input_at = clock.t
    keep.created_at = clock.t
    setup(s)
    assert [sid for sid, _ in reg.expired()] == ["a"]
    assert reason in reg.expired()[0][1]
    assert await reg.reap() == ["a"]
    assert len(reg) == 1 and "b" in reg


def test_media_keeps_a_connected_session_alive():
    reg, clock = registry(media_timeout_s=5)
    s = add(reg, clock, "a")
    for _ in range(10):
        clock.t += 1.0
        s.last_media_at = clock.t
        assert reg.expired() == []
