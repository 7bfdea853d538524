"""Autoscaling the Media deployment on live sessions, not on requests.

A live session is not a request in flight (its offer/answer takes a few hundred milliseconds, then
it lives for minutes in the replica's memory), so Serve's default policy, which counts ongoing
requests, would see an idle deployment. Each Media replica reports its sessions through
``record_autoscaling_stats`` (``{"sessions": n}``); this policy asks for enough replicas that each
holds about ``target_sessions_per_replica``. Serve wraps it with the deployment's min/max replicas
and its upscale/downscale delays. A replica chosen for scale-down takes no new session and ends
only when its sessions have (``sessions.drain_timeout_s`` at most; deployments/media.py).

Serve config (deployments: Media: autoscaling_config):

    policy:
      policy_function: deployments.session_autoscaling:SessionAutoscaling
      policy_kwargs: {target_sessions_per_replica: 2}
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

METRIC = "sessions"


def replicas_for(sessions: float, target_per_replica: float) -> int:
    """Replicas that hold ``sessions`` at about ``target_per_replica`` each (at least one)."""
    return max(1, math.ceil(sessions / target_per_replica - 1e-9))


def total_sessions(aggregated: Mapping[str, Mapping[Any, float]] | None) -> float:
    """Sessions over every running replica, from the context's aggregated custom metrics."""
    return float(sum((aggregated or {}).get(METRIC, {}).values()))


class SessionAutoscaling:
    def __init__(self, target_sessions_per_replica: float = 2.0):
        if target_sessions_per_replica <= 0:
            raise ValueError(f"target_sessions_per_replica must be > 0, got {target_sessions_per_replica}")
        self.target = float(target_sessions_per_replica)

    def __call__(self, ctx) -> tuple[int, dict]:
        return replicas_for(total_sessions(ctx.aggregated_metrics), self.target), {}
