"""The sessions of one gateway: answers offers with new sessions, ends them, counts them.

ICE: the server offers host candidates only, unless ``sessions.ice_servers`` lists STUN/TURN servers
(nothing is asked of outside servers by default). ``sessions.host_addresses`` replaces aioice's
choice of host addresses in this process; aioice leaves loopback out, so loopback-only tests set it
to ``["127.0.0.1"]``.
"""

from __future__ import annotations

import gc
import logging
import os
import weakref

import aioice.ice
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription

from avatarchat.avatar.painter import FramePainter
from avatarchat.config import ServiceConfig, Sessions as SessionOptions
from avatarchat.errors import ConfigError, NoBrowserAvatar
from avatarchat.metrics import session_metrics
from avatarchat.ports import StagePorts
from avatarchat.webrtc import sctp_guard
from avatarchat.webrtc.offers import UNANSWERABLE, BadOffer, check_offer
from avatarchat.webrtc.session import Session, SessionDeps
from avatarchat.webrtc.sessions import Full, SessionRegistry, TooManyPending, new_session_id
from avatarchat.webrtc.turn_credentials import time_limited_credential

log = logging.getLogger("ray.serve")


def use_host_addresses(addresses: list[str]) -> list[str]:
    """Offer exactly ``addresses`` as ICE host candidates from this process; empty: every
    non-loopback address of this machine (aioice's own choice), or 127.0.0.1 where it has none,
    so a node without a network still answers clients on the same machine. Returns the addresses
    offered."""
    fixed = list(addresses) or aioice.ice.get_host_addresses(use_ipv4=True, use_ipv6=True) or ["127.0.0.1"]
    aioice.ice.get_host_addresses = lambda use_ipv4=True, use_ipv6=True: list(fixed)
    return fixed


def ice_servers(options: SessionOptions, now: float | None = None) -> list[dict]:
    """``sessions.ice_servers`` in the shape of the browser's RTCIceServer (``urls``, ``username``,
    ``credential``): a fixed TURN password read from its environment variable, or, with
    ``secret_env``, a fresh time-limited user name and password at each call
    (avatarchat/webrtc/turn_credentials.py). Only resolved values leave this function: never the names of
    environment variables, never the shared secret."""
    servers = []
    for s in options.ice_servers:
        server: dict = {"urls": list(s.urls)}
        if s.secret_env is not None:
            secret = os.environ.get(s.secret_env, "")
            if secret:  # checked at start-up (check_ice_secrets); unset since: no credential
                made = time_limited_credential(secret, s.credential_ttl_s, now)
                server.update(username=made.username, credential=made.password)
            servers.append(server)
            continue
        credential = os.environ.get(s.credential_env) if s.credential_env else None
        if s.credential_env and credential is None:
            log.warning("ICE server %s: environment variable %s is not set", s.urls, s.credential_env)
        if s.username is not None:
            server["username"] = s.username
        if credential is not None:
            server["credential"] = credential
        servers.append(server)
    return servers


def check_ice_secrets(options: SessionOptions, source: str = "config") -> None:
    """Fail at start-up, naming the key, when a TURN shared secret's variable is not set."""
    for i, s in enumerate(options.ice_servers):
        if s.secret_env is not None and not os.environ.get(s.secret_env, ""):
            raise ConfigError(source, f"sessions.ice_servers.{i}.secret_env",
                              f"environment variable {s.secret_env} (the secret shared with the TURN "
                              f"server) is not set or empty")


def ice_configuration(options: SessionOptions) -> RTCConfiguration:
    return RTCConfiguration(iceServers=[
        RTCIceServer(urls=s["urls"], username=s.get("username"), credential=s.get("credential"))
        for s in ice_servers(options)])


def session_deps(config: ServiceConfig, ports: StagePorts, vad, painter: FramePainter,
                 turn=None) -> SessionDeps:
    """What the sessions of one process share: stage ports, the loaded VAD and end-of-turn models,
    and the avatar's painter (avatarchat/avatar/media_avatar.py makes it)."""
    return SessionDeps(ports=ports, vad=vad, painter=painter,
                       limits=config.limits, pacing=config.pacing, sessions=config.sessions,
                       interruption=config.interruption, metrics=session_metrics(), turn=turn)


def render_modes(options: SessionOptions, painter: FramePainter) -> tuple[str, ...]:
    """The render modes offered: ``sessions.render`` less ``browser`` when the avatar draws its
    own frames (the page can draw only face motion). None left is a configuration error."""
    modes = tuple(m for m in options.render if m != "browser" or painter.draws_in_browser)
    if not modes:
        raise ConfigError("config", "sessions.render",
                          f"{list(options.render)} leaves no mode for an avatar that draws its own "
                          "frames: add server (the page can draw only face motion)")
    return modes


class SessionService:
    """The sessions one process holds. ``owner`` names the process in every session id it makes
    (a Media replica's name; deployments/session_routing.py routes by it)."""

    def __init__(self, options: SessionOptions, deps: SessionDeps, owner: str = "local"):
        check_ice_secrets(options)
        self.options, self.deps, self.owner = options, deps, owner
        self.render_modes = render_modes(options, deps.painter)
        self.registry = SessionRegistry(options, deps.clock, on_count=deps.metrics.active_sessions)
        self._seed = 0
        self._browser_pack: bytes | None = None
        # every peer connection ever made, held weakly: what is left in it is what is still alive
        self._peer_connections: weakref.WeakSet = weakref.WeakSet()
        self.host_addresses = use_host_addresses(options.host_addresses)
        sctp_guard.install()  # aiortc 1.16 ends a transport on a string message that is not UTF-8

    def __len__(self) -> int:
        return len(self.registry)

    def render_mode(self, requested: str | None) -> str:
        """The render mode for a new session: ``requested`` if this deployment offers it, else
        the configured default (the first of ``sessions.render``). Raises BadOffer."""
        modes = self.render_modes
        if requested is None or requested == "":
            return modes[0]
        if requested not in modes:
            if requested == "browser" and "browser" in self.options.render:
                raise BadOffer("render='browser' is not offered here: the avatar draws its own "
                               f"frames, which the page cannot; this service offers {', '.join(modes)}")
            raise BadOffer(f"render={requested!r} is not offered here; sessions.render allows "
                           f"{', '.join(modes)}")
        return requested

    async def create(self, offer_sdp: str, render: str | None = None,
                     client: str | None = None) -> tuple[str, str, str]:
        """Answer an offer from ``client`` (its address; None: not counted against
        ``max_pending_per_client``): (session id, answer SDP with every candidate, render mode).
        Raises BadOffer, TooManyPending or Full."""
        render = self.render_mode(render)
        check_offer(offer_sdp)
        self.registry.reserve(client)  # raises TooManyPending or Full
        self.registry.start_reaper()
        pc = RTCPeerConnection(ice_configuration(self.options))
        self._peer_connections.add(pc)
        session_id = new_session_id(self.owner)
        self._seed += 1
        session = Session(session_id, pc, self.deps, seed=self._seed, render=render)
        try:
            try:
                await pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
                # check_offer made sure of an m=audio section, so there is an audio transceiver
                kinds = {t.kind for t in pc.getTransceivers()}
                pc.addTrack(session.audio_out)
                if "video" in kinds and render == "server":
                    pc.addTrack(session.video_out)
                # aiortc gathers every candidate here: the answer is complete (no trickle ICE).
                await pc.setLocalDescription(await pc.createAnswer())
            except Exception as err:  # noqa: BLE001 - what check_offer did not foresee
                # aiortc's own words ("coroutine raised StopIteration", an AttributeError) mean
                # nothing to the sender: they go to the log, a sentence naming what to check to it.
                log.warning("offer refused: aiortc could not answer it: %r", err, exc_info=err)
                raise BadOffer(UNANSWERABLE) from None
        except BaseException:
            self.registry.release(client)
            await session.close("offer refused")
            raise
        self.registry.add(session, client)
        log.info("session %s created (%d/%d)", session.tag, len(self.registry), self.options.max_sessions)
        return session_id, pc.localDescription.sdp, render

    async def end(self, session_id: str, reason: str = "hung up") -> bool:
        return await self.registry.end(session_id, reason)

    def describe(self) -> dict:
        return {"active_sessions": len(self.registry), "max_sessions": self.options.max_sessions,
                "render": list(self.render_modes)}

    async def describe_sessions(self) -> dict:
        """GET /v1/sessions from this one process."""
        return {**self.describe(), "sessions": self.stats()}

    async def browser_pack(self) -> bytes:
        """The avatar pack as the page draws it in render=browser sessions (JSON bytes, built once)."""
        if not self.deps.painter.draws_in_browser:
            raise NoBrowserAvatar("the avatar draws its own frames: there is no face for the page "
                                  "to draw (render=server sessions show them)")
        if self._browser_pack is None:
            import json

            from avatarchat.avatar.browser_pack import browser_pack

            self._browser_pack = json.dumps(browser_pack(self.deps.painter.renderer),
                                            separators=(",", ":")).encode()
        return self._browser_pack

    def stats(self) -> list[dict]:
        """Per-session media counters, oldest session first (for tests and diagnosis). No user
        content and no session ids: an id is what DELETE needs, so only its holder knows it."""
        out = []
        for sid in self.registry.ids():
            s = self.registry.get(sid)
            age = s.deps.clock() - (s.connected_at or s.created_at)
            out.append({"state": s.state, "turns": s.turns, "age_s": round(age, 1), "render": s.render,
                        "video_frames_sent": s.frames_out.frames_sent,
                        "video_frames_skipped": s.frames_out.frames_skipped,
                        "tasks": s.active_tasks})
        return out

    def live_peer_connections(self) -> int:
        """Peer connections still in memory, after a garbage collection: a leak check, should match
        the live sessions once closed ones are gone."""
        gc.collect()
        return len(self._peer_connections)

    @property
    def occupied(self) -> int:
        """Sessions held and offers being answered: what room is left is counted against."""
        return self.registry.occupied

    async def drained(self, timeout_s: float) -> bool:
        """Wait until every session has ended (at most ``timeout_s``); whether they all did."""
        return await self.registry.wait_empty(timeout_s)

    async def close_all(self, reason: str = "server shutting down") -> None:
        await self.registry.close_all(reason)


__all__ = ["BadOffer", "Full", "SessionService", "TooManyPending", "ice_configuration", "ice_servers", "session_deps",
           "use_host_addresses"]
