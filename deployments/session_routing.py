"""Which Media replica a request about a live session goes to: a Ray Serve request router.

A live session is a peer connection in one process's memory, so every request about it (DELETE,
its counters) must reach that process, from any ingress replica; a new session should go where
there is most room. Ray Serve 2.60 offers three ways (../shared/notes/serving.md):

- the consistent-hash router keyed on a session id: sticky, but it places new sessions by hash,
  not by load, and moves keys when replicas come and go (a moved key is a lost session here);
- model multiplexing: soft affinity only;
- a custom ``RequestRouter`` (this module): the session id names the replica that made it
  (``<replica>.<random>``), so a later request goes exactly there, and a new session goes to the
  replica with the fewest sessions per its routing stats (``MediaDeployment.record_routing_stats``)
  plus the sessions this router has sent it since. No shared table, nothing to keep in sync: any
  ingress replica routes any session id the same way.

A session whose replica is gone (killed, or drained away) is not found on whichever replica the
request lands: 404, as for an unknown id. The router runs in each caller's process (the ingress);
the replica itself is the authority on room (it answers Full when its stats were stale).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from avatarchat.webrtc.sessions import owner_of

# How long a session this router placed is counted against its replica before the replica's own
# routing stats (sent every request_routing_stats_period_s) are trusted to include it.
RECENT_S = 3.0


@dataclass(frozen=True, slots=True)
class ReplicaLoad:
    """What a Media replica reports in its routing stats, plus what this router sent it since."""

    replica: str
    sessions: int        # live and being set up
    capacity: int        # sessions.max_sessions
    recent: int = 0      # sessions this router placed there in the last RECENT_S

    @property
    def free(self) -> int:
        return self.capacity - self.sessions - self.recent

    @classmethod
    def from_stats(cls, replica: str, stats: Mapping, recent: int = 0) -> "ReplicaLoad":
        # a replica that has not reported yet (just started) counts as empty with room for one
        return cls(replica, int(stats.get("sessions", 0)), int(stats.get("capacity", 1)), recent)


def rank_for_new_session(loads: Sequence[ReplicaLoad]) -> list[str]:
    """Replicas in the order a new session should try them: those with room, the most free first
    (ties: fewest sessions counted, then name, so ranking is stable); then the full ones, whose
    answer is Full (never a wait)."""
    with_room = sorted((l for l in loads if l.free > 0),
                       key=lambda l: (-l.free, l.sessions + l.recent, l.replica))
    full = sorted((l for l in loads if l.free <= 0), key=lambda l: (l.sessions + l.recent, l.replica))
    return [l.replica for l in with_room + full]


def target_replica(method: str, kwargs: Mapping) -> str | None:
    """The replica a call must reach: the one its ``session_id`` names, or the one named by
    ``replica`` (a call meant for every replica in turn, e.g. counting sessions)."""
    session_id = kwargs.get("session_id")
    if isinstance(session_id, str):
        return owner_of(session_id)
    replica = kwargs.get("replica")
    return replica if isinstance(replica, str) else None


try:  # the router class needs Ray Serve; the functions above are tested without it
    from ray.serve.request_router import PendingRequest, RequestRouter, RunningReplica
except ImportError:  # pragma: no cover
    RequestRouter = None


if RequestRouter is not None:

    class SessionRouter(RequestRouter):
        """Set on the Media deployment: ``request_router_config: {request_router_class:
        deployments.session_routing:SessionRouter}``. No FIFOMixin: it hands a chosen replica to
        the oldest waiting request, which may be about another session; the base class gives
        it to the request it was chosen for."""

        def initialize_state(self, **kwargs) -> None:
            self._placed: dict[str, deque[float]] = {}

        def _recent(self, replica: str) -> int:
            times = self._placed.get(replica)
            if not times:
                return 0
            cutoff = time.monotonic() - RECENT_S
            while times and times[0] < cutoff:
                times.popleft()
            return len(times)

        async def choose_replicas(self, candidate_replicas: list[RunningReplica],
                                  pending_request: PendingRequest | None = None) -> list[list[RunningReplica]]:
            if not candidate_replicas:
                return []
            if pending_request is None:
                return [candidate_replicas]
            # Without backoff the base class spins on choose_replicas while every replica is busy.
            pending_request.routing_context.should_backoff = True
            by_id = {r.replica_id.unique_id: r for r in candidate_replicas}
            target = target_replica(pending_request.metadata.call_method, pending_request.kwargs)
            if target is not None:
                # Gone (or never was): any replica answers "no such session".
                return [[by_id[target]]] if target in by_id else [candidate_replicas]
            if pending_request.metadata.call_method == "create_session":
                loads = [ReplicaLoad.from_stats(rid, r.routing_stats or {}, self._recent(rid))
                         for rid, r in by_id.items()]
                return [[by_id[rid]] for rid in rank_for_new_session(loads)]
            return [candidate_replicas]

        def on_request_routed(self, pending_request: PendingRequest, replica_id, result) -> None:
            if pending_request.metadata.call_method == "create_session":
                self._placed.setdefault(replica_id.unique_id, deque(maxlen=1024)).append(time.monotonic())
