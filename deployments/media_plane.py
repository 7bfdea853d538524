"""The Gateway's view of the Media replicas: the session routes' ``SessionPlane`` over a handle.

A new session goes to the replica with the most room and every later call names its session id,
which the Media deployment's request router turns into the replica that holds it
(deployments/session_routing.py). Counting sessions asks every running replica in turn (their names
from Serve's controller, each call routed by name).

No call waits for good: with no Media replica running (all lost, replacements starting) an offer
is refused with 503 after ``MEDIA_WAIT_S``, never held open.
"""

from __future__ import annotations

import asyncio
import logging

from ray.exceptions import RayError
from ray.serve.exceptions import RayServeException

from avatarchat.config import Sessions as SessionOptions
from avatarchat.errors import NoBrowserAvatar
from avatarchat.webrtc.offers import BadOffer
from avatarchat.webrtc.sessions import Full, TooManyPending, owner_of

log = logging.getLogger("ray.serve")

# How long an offer waits for a Media replica to take it (Serve queues the call while none runs).
MEDIA_WAIT_S = 10.0
# Full from a replica whose routing stats were stale: try again, the router now counts it fuller.
FULL_RETRIES = 2


class MediaPlane:
    def __init__(self, media, options: SessionOptions):
        self.media, self.options = media, options
        self._browser_pack: bytes | None = None

    async def create(self, offer_sdp: str, render: str | None = None,
                     client: str | None = None) -> tuple[str, str, str]:
        for attempt in range(FULL_RETRIES + 1):
            try:
                result = await asyncio.wait_for(
                    self.media.create_session.remote(offer_sdp=offer_sdp, render=render, client=client),
                    MEDIA_WAIT_S)
            except TimeoutError:
                raise Full(f"no media replica took the session within {MEDIA_WAIT_S:g} s; try again "
                           f"later") from None
            except (RayError, RayServeException) as err:
                log.warning("offer: the media replica failed: %r", err)
                raise Full("the media replica answering this offer stopped; try again in a few seconds") from None
            refused = result.get("refused")
            if refused is None:
                return result["session_id"], result["answer"], result["render"]
            if refused == "bad_offer":
                raise BadOffer(result["reason"])
            if refused == "pending":
                raise TooManyPending(result["reason"], int(result["retry_after_s"]))
            if attempt == FULL_RETRIES:
                raise Full(result["reason"])
        raise AssertionError("unreachable")

    async def end(self, session_id: str, reason: str = "hung up") -> bool:
        if owner_of(session_id) is None:
            return False
        try:
            return await asyncio.wait_for(self.media.end_session.remote(session_id=session_id, reason=reason),
                                          MEDIA_WAIT_S)
        except (TimeoutError, RayError, RayServeException) as err:
            log.warning("hang-up: the media replica did not answer: %r", err)
            return False  # its replica is gone, and the session with it

    async def replicas(self) -> list[str | None]:
        """Names of the running Media replicas ([None]: local testing mode, one in-process instance)."""
        import ray

        if not ray.is_initialized():
            return [None]
        from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE

        controller = ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
        details = await asyncio.wait_for(controller.get_serve_instance_details.remote(), MEDIA_WAIT_S)
        deployment = details["applications"][self.media.app_name]["deployments"][self.media.deployment_name]
        return [r["replica_id"] for r in deployment["replicas"] if r["state"] == "RUNNING"]

    async def each_replica(self, method: str) -> list[dict]:
        """``method`` called on every running Media replica (those that answer in time), once each.

        One after another, never gathered: calls made while serving one HTTP request share its
        internal request id, by which Serve's router hands a chosen replica to a waiting call, so
        sibling calls in flight together can swap replicas, or one waits for good (Ray 2.60)."""
        seen, out = set(), []
        for name in await self.replicas():
            try:
                answer = await asyncio.wait_for(getattr(self.media, method).remote(replica=name), MEDIA_WAIT_S)
            except (TimeoutError, RayError, RayServeException) as err:
                log.warning("%s: a media replica did not answer: %r", method, err)
                continue
            # a replica just started may not be in the caller's router yet: another answered for it
            if answer["replica"] not in seen:
                seen.add(answer["replica"])
                out.append(answer)
        return sorted(out, key=lambda a: (a["node_ip"], a["replica"]))

    async def describe_sessions(self) -> dict:
        replicas = await self.each_replica("describe")
        sessions = [{**s, "replica": r["replica"]} for r in replicas for s in r["sessions"]]
        return {"active_sessions": sum(r["active_sessions"] for r in replicas),
                "max_sessions": sum(r["max_sessions"] for r in replicas),
                # what the replicas offer (less browser when the avatar draws its own frames)
                "render": replicas[0]["render"] if replicas else list(self.options.render),
                "sessions": sessions,
                "replicas": [{k: r[k] for k in ("replica", "node_id", "node_ip", "active_sessions", "max_sessions")}
                             for r in replicas]}

    async def summary(self) -> dict:
        """What GET /v1/info says of sessions: held, room, modes, replicas."""
        described = await self.describe_sessions()
        return {k: described[k] for k in ("active_sessions", "max_sessions", "render")} | {
            "media_replicas": len(described["replicas"])}

    async def browser_pack(self) -> bytes:
        if self._browser_pack is None:  # the same pack on every replica: fetched once
            pack = await self.media.browser_pack.remote()
            if pack is None:
                raise NoBrowserAvatar("the avatar draws its own frames: there is no face for the "
                                      "page to draw (render=server sessions show them)")
            self._browser_pack = pack
        return self._browser_pack
