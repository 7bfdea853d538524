"""A token bucket: at most ``rate`` events a second on average, ``burst`` at once."""

from __future__ import annotations

from avatarchat.pacing import Clock, monotonic


class TokenBucket:
    def __init__(self, rate: float, burst: int, clock: Clock = monotonic):
        self.rate, self.burst, self.clock = rate, burst, clock
        self._tokens = float(burst)
        self._at = clock()

    def allow(self) -> bool:
        """Take one token if there is one."""
        now = self.clock()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False
