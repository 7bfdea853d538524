"""Per-turn and per-interruption measures as Prometheus metrics, through Ray's metrics.

Ray exports them on each node's metrics export port (``ray start --metrics-export-port``), where
the Ray dashboard's Prometheus and Grafana pick them up beside Serve's own. Names:

    avatar_chat_turn_seconds{measure=...}          histogram, one observation per turn and measure
    avatar_chat_interruption_seconds                histogram: user's speech onset -> avatar silent
    avatar_chat_active_sessions                     gauge: live WebRTC sessions in this process
    avatar_chat_video_frames_skipped_total          counter: frames never sent because a sender ran
                                                    late (added as each session ends)
    avatar_chat_turn_failures_total{stage,code}     counter: turns ended by a stage's failure; code is
                                                    a remote service's failure kind (unreachable,
                                                    unauthorised, quota, timeout, ...) or "none"

Outside a Ray worker (unit tests, Serve's local testing mode) there is nowhere to export to, and the
same calls do nothing.
"""

from __future__ import annotations

# The per-turn measures sent to the client in its ``timings`` event that are also histograms.
TURN_MEASURES = ("end_of_turn_decision", "asr", "llm_first_token", "tts_first_audio",
                 "avatar_first_frame", "input_to_first_frame", "voice_to_voice", "text_to_voice")
BOUNDARIES = [0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0, 1.2, 1.5, 2.0, 3.0,
              5.0, 10.0]


class SessionMetrics:
    def __init__(self):
        from ray.util.metrics import Counter, Gauge, Histogram

        self._turn = Histogram("avatar_chat_turn_seconds", boundaries=BOUNDARIES, tag_keys=("measure",),
                               description="per-turn latency of each stage and voice to voice, seconds")
        self._interruption = Histogram("avatar_chat_interruption_seconds", boundaries=BOUNDARIES,
                                       description="user's speech onset over the avatar -> avatar silent")
        self._sessions = Gauge("avatar_chat_active_sessions", description="live WebRTC sessions")
        self._skipped = Counter("avatar_chat_video_frames_skipped_total",
                                description="video frames not sent because the sender ran late")
        self._failures = Counter("avatar_chat_turn_failures_total", tag_keys=("stage", "code"),
                                 description="turns ended by a stage's failure, by stage and failure kind")

    def turn(self, timings: dict) -> None:
        for measure in TURN_MEASURES:
            value = timings.get(measure)
            if isinstance(value, (int, float)) and value >= 0:
                self._turn.observe(float(value), tags={"measure": measure})

    def interruption(self, seconds: float) -> None:
        self._interruption.observe(seconds)

    def active_sessions(self, n: int) -> None:
        self._sessions.set(n)

    def frames_skipped(self, n: int) -> None:
        if n > 0:
            self._skipped.inc(n)

    def turn_failed(self, stage: str, code: str | None) -> None:
        self._failures.inc(tags={"stage": stage, "code": code or "none"})


class NoMetrics:
    def turn(self, timings: dict) -> None: ...
    def interruption(self, seconds: float) -> None: ...
    def active_sessions(self, n: int) -> None: ...
    def frames_skipped(self, n: int) -> None: ...
    def turn_failed(self, stage: str, code: str | None) -> None: ...


def session_metrics() -> SessionMetrics | NoMetrics:
    import ray

    return SessionMetrics() if ray.is_initialized() else NoMetrics()
