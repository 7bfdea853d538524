"""Live sessions spread over Media replicas (deployments/media.py), on a real `serve run` cluster.

The same serve_config.yaml with two Media replicas of two sessions each, and two Gateway replicas
in front: more sessions than one replica holds land on both replicas (the one with room first),
each session is served by its replica (a question asked on each is answered), every DELETE
reaches the replica that holds the session, and with every replica full an offer is refused at
once with 503 + Retry-After.
"""

import asyncio

import httpx
import pytest

from avatarchat.local_cluster import ServeCluster
from avatarchat.client.avatar_client import AvatarClient, SessionRefused
from avatarchat.webrtc.sessions import owner_of
from tests.cluster.conftest import cluster_serve_config

pytestmark = [pytest.mark.cluster, pytest.mark.models, pytest.mark.timeout(420)]

LOOPBACK = ["127.0.0.1"]
PER_REPLICA = 2


def two_media_replicas() -> dict:
    doc = cluster_serve_config()
    app = doc["applications"][0]
    app["args"]["sessions"]["max_sessions"] = PER_REPLICA
    for d in app["deployments"]:
        if d["name"] == "Media":
            d["autoscaling_config"].update(min_replicas=2, max_replicas=2)
        if d["name"] == "Gateway":
            d["autoscaling_config"] = {"min_replicas": 2, "max_replicas": 2}
    return doc


@pytest.fixture(scope="module")
def two_replicas():
    # logical CPUs: the extra Media and Gateway replicas need scheduling room, not cores
    cluster = ServeCluster(two_media_replicas(), num_cpus=4).start()
    yield cluster
    cluster.stop()


async def sessions_view(url: str) -> dict:
    async with httpx.AsyncClient() as http:
        return (await http.get(f"{url}/v1/sessions", timeout=30)).json()


async def test_sessions_spread_over_replicas_and_each_delete_reaches_its_own(two_replicas):
    url = two_replicas.url
    view = await sessions_view(url)
    replicas = [r["replica"] for r in view["replicas"]]
    assert len(replicas) == 2 and view["max_sessions"] == 2 * PER_REPLICA, view

    clients = []
    try:
        # one more than a replica holds: the third goes to the other replica
        for _ in range(PER_REPLICA + 1):
            clients.append(await AvatarClient(url, host_addresses=LOOPBACK, render="browser").connect())
            await asyncio.sleep(1.5)  # a routing-stats period: the router sees the new count
        owners = [owner_of(c.session_id) for c in clients]
        assert set(owners) == set(replicas), owners
        view = await sessions_view(url)
        held = {r["replica"]: r["active_sessions"] for r in view["replicas"]}
        assert sorted(held.values()) == [1, 2] and view["active_sessions"] == 3, view
        assert all(held[o] >= 1 for o in owners)

        # every replica serves its sessions: a typed question on one session of each is answered
        asked = {}
        for c, o in zip(clients, owners):
            asked.setdefault(o, c)
        for c in asked.values():  # one at a time: the suite's shared service shares these two cores
            start = len(c.received.events)
            c.send_text("Say hello.")
            await c.wait_for_event(lambda e: e["type"] == "transcript" and e["role"] == "avatar"
                                   and e["final"], timeout_s=120, start=start)
            assert len(c.received.motions) > 50  # its face's motion arrives (render=browser)

        # fill the last place, then every replica is full: 503 at once, with Retry-After
        clients.append(await AvatarClient(url, host_addresses=LOOPBACK, render="browser").connect())
        with pytest.raises(SessionRefused) as refused:
            await asyncio.wait_for(AvatarClient(url, host_addresses=LOOPBACK, render="browser").connect(), 20)
        assert refused.value.status == 503 and refused.value.retry_after, refused.value

        # each DELETE reaches the replica holding the session (another would answer 404)
        for c in list(clients):
            owner = owner_of(c.session_id)
            before = {r["replica"]: r["active_sessions"] for r in (await sessions_view(url))["replicas"]}
            assert await c.close() == 204
            clients.remove(c)
            after = {r["replica"]: r["active_sessions"] for r in (await sessions_view(url))["replicas"]}
            assert after[owner] == before[owner] - 1, (owner, before, after)
        async with httpx.AsyncClient() as http:
            gone = await http.delete(f"{url}/v1/sessions/{owners[0]}.no-such-session", timeout=30)
            assert gone.status_code == 404
    finally:
        for c in clients:
            await c.close()
