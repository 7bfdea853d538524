"""The media plane: each replica holds up to ``sessions.max_sessions`` live WebRTC sessions.

A live session is a peer connection in this process's memory (its ICE sockets, its VAD stream,
the renderer drawing its frames, the turn in progress), so the requests about it must come here:
session ids name this replica, and the Gateway's handle routes by them
(deployments/session_routing.py). New sessions go to the replica with the most room, which knows
best and refuses with Full when it has none.

    Gateway (HTTP, stateless) --create_session / end_session / describe--> Media (this)
    Media --transcribe / generate / synthesize / animate--> the model stages

Scaling: the deployment autoscales on live sessions (record_autoscaling_stats,
deployments/session_autoscaling.py). A replica chosen for scale-down is taken out of routing by
Serve, so it gets no new session; here it waits for its sessions to end, at most
``sessions.drain_timeout_s``, then ends the rest ("server draining"). When the whole application is
being deleted there is nothing to drain to: it ends its sessions at once.

Pinning: ``ray_actor_options: {resources: {<name>: 0.001}}`` in the Serve config puts media replicas
only on nodes started with that resource (the nodes browsers can reach); each replica offers its
own node's addresses as ICE host candidates (avatarchat/webrtc/service.py).
"""

from __future__ import annotations

import asyncio
import logging

from ray import serve

from avatarchat.backends.base import create_backend
from avatarchat.config import ServiceConfig
from avatarchat.priority import ask_for_priority
from avatarchat.process_stats import process_stats
from deployments.handle_ports import HandlePorts
from avatarchat.webrtc.offers import BadOffer
from avatarchat.avatar.media_avatar import media_avatar
from avatarchat.errors import NoBrowserAvatar
from avatarchat.webrtc.service import SessionService, session_deps
from avatarchat.webrtc.sessions import Full, TooManyPending

log = logging.getLogger("ray.serve")


def replica_name() -> str:
    """This replica's unique id (Serve's), or "local" outside a replica (local testing mode)."""
    try:
        return serve.get_replica_context().replica_id.unique_id
    except Exception:  # noqa: BLE001 - RayServeException outside a replica
        return "local"


def node_of_this_process() -> dict:
    import ray

    if not ray.is_initialized():
        return {"node_id": "local", "node_ip": "127.0.0.1"}
    return {"node_id": ray.get_runtime_context().get_node_id(), "node_ip": ray.util.get_node_ip_address()}


async def application_is_deleted() -> bool:
    """Whether this replica stops because its whole application is going away (``serve shutdown``,
    the app removed from the config), not because of a scale-down or a rolling update."""
    import ray

    if not ray.is_initialized():
        return True

    def status() -> str:
        app = serve.get_replica_context().app_name
        return str(serve.status().applications[app].status)

    try:
        return "DELETING" in await asyncio.wait_for(asyncio.to_thread(status), 10)
    except Exception:  # noqa: BLE001 - no controller, or the app already gone: nothing to drain to
        return True


@serve.deployment(
    name="Media",
    ray_actor_options={"num_cpus": 0.25},
    # Calls here are short (an offer/answer, a hang-up, a count); a live session is not a call.
    max_ongoing_requests=64,
    # Autoscaled on live sessions; each replica holds sessions.max_sessions at most.
    autoscaling_config={"min_replicas": 1, "max_replicas": 1, "upscale_delay_s": 5, "downscale_delay_s": 60,
                        "policy": {"policy_function": "deployments.session_autoscaling:SessionAutoscaling",
                                   "policy_kwargs": {"target_sessions_per_replica": 2}}},
    # Requests about a session reach the replica holding it; new ones the one with the most room.
    request_router_config={"request_router_class": "deployments.session_routing:SessionRouter",
                           "request_routing_stats_period_s": 1.0},
    graceful_shutdown_timeout_s=660,  # > sessions.drain_timeout_s: a drain is never cut short
    max_constructor_retry_count=3,  # a missing model file does not fix itself
)
class MediaDeployment:
    async def __init__(self, config: ServiceConfig, asr, llm, tts, avatar, speech_to_speech=None):  # async: asks Avatar
        ask_for_priority(config.priority.media_niceness, "Media (live sessions)")
        self.config = config
        self.replica = replica_name()
        self.node = node_of_this_process()
        vad = create_backend(config.stage("vad"))
        end_of_turn = create_backend(config.stage("end_of_turn"))
        here = await media_avatar(config.stage("avatar"), avatar)  # in-process, or by the deployment
        ports = HandlePorts(asr, llm, tts, avatar, local_avatar=here.local, speech_to_speech=speech_to_speech)
        self.sessions = SessionService(config.sessions, session_deps(config, ports, vad, here.painter, end_of_turn),
                                       owner=self.replica)
        log.info("media replica %s on node %s: up to %d sessions, ICE host addresses %s", self.replica,
                 self.node["node_ip"], config.sessions.max_sessions, self.sessions.host_addresses)

    # -- what the Gateway asks ---------------------------------------------------------------
    async def create_session(self, offer_sdp: str, render: str | None = None, client: str | None = None) -> dict:
        """Answer an offer: {"session_id", "answer", "render"}, or {"refused": kind, "reason",
        "retry_after_s"} (kind: bad_offer, pending, full). Refusals are values, not exceptions:
        they cross Ray as they are."""
        try:
            session_id, answer, mode = await self.sessions.create(offer_sdp, render, client)
        except BadOffer as err:
            return {"refused": "bad_offer", "reason": str(err)}
        except TooManyPending as err:
            return {"refused": "pending", "reason": str(err), "retry_after_s": err.retry_after_s}
        except Full as err:
            return {"refused": "full", "reason": str(err), "retry_after_s": self.config.sessions.retry_after_s}
        return {"session_id": session_id, "answer": answer, "render": mode}

    async def end_session(self, session_id: str, reason: str = "hung up") -> bool:
        return await self.sessions.end(session_id, reason)

    def describe(self, replica: str | None = None) -> dict:
        """This replica's sessions (``replica``: the name the call was routed by, unused here)."""
        return {"replica": self.replica, **self.node, **self.sessions.describe(),
                "sessions": self.sessions.stats()}

    async def browser_pack(self) -> bytes | None:
        """The pack for render=browser; None when the avatar draws its own frames."""
        try:
            return await self.sessions.browser_pack()
        except NoBrowserAvatar:
            return None

    async def diagnostics(self, replica: str | None = None) -> dict:
        # async: on the replica's event loop, where its asyncio tasks can be counted (a sync method
        # runs in a worker thread, where process_stats finds no loop and reports None)
        peer_connections = self.sessions.live_peer_connections()  # collects garbage: before trimming
        return {"replica": self.replica, **self.node, **process_stats(trim=True),  # its pid included
                "sessions": len(self.sessions), "peer_connections": peer_connections}

    # -- what Serve asks -----------------------------------------------------------------------
    def record_routing_stats(self) -> dict:
        """Read by deployments/session_routing.py in every caller's process."""
        return {"sessions": self.sessions.occupied, "capacity": self.config.sessions.max_sessions}

    def record_autoscaling_stats(self) -> dict:
        """Read by deployments/session_autoscaling.py in the controller."""
        return {"sessions": float(self.sessions.occupied)}

    async def __del__(self):
        # Serve calls this once the replica is out of routing (scale-down, redeploy or shutdown).
        sessions = getattr(self, "sessions", None)
        if sessions is None:
            return
        if len(sessions) and not await application_is_deleted():
            limit = self.config.sessions.drain_timeout_s
            log.info("media replica %s draining: %d session(s), up to %g s", self.replica, len(sessions), limit)
            if not await sessions.drained(limit):
                await sessions.close_all(f"server draining: sessions.drain_timeout_s={limit:g} reached")
        await sessions.close_all()
