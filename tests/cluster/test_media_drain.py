"""Media autoscales on live sessions and drains on scale-down, on a real `serve run` cluster.

serve_config.yaml with Media allowed 1-2 replicas and SessionAutoscaling aiming at one session per
replica (short delays): a second session brings a second replica, where the next session lands; when
sessions end Serve stops the newer replica (its rule on one node), which still holds a session. That
replica leaves routing at once (GET /v1/sessions no longer lists it, a new session goes to the
other) but its process stays and its session keeps answering until the client hangs up; then it
goes. Nothing is cut.
"""

import asyncio
import time

import httpx
import pytest

from avatarchat.client.avatar_client import AvatarClient
from avatarchat.local_cluster import ServeCluster, descendants
from avatarchat.webrtc.sessions import owner_of
from load_tests.capacity import deployment_of, processes
from tests.cluster.conftest import cluster_serve_config

pytestmark = [pytest.mark.cluster, pytest.mark.models, pytest.mark.timeout(480)]

LOOPBACK = ["127.0.0.1"]


def autoscaling_media() -> dict:
    doc = cluster_serve_config()
    app = doc["applications"][0]
    app["args"]["sessions"].update(max_sessions=2, drain_timeout_s=120)
    for d in app["deployments"]:
        if d["name"] == "Media":
            d["graceful_shutdown_timeout_s"] = 150
            d["autoscaling_config"].update(
                min_replicas=1, max_replicas=2, upscale_delay_s=0, downscale_delay_s=3,
                metrics_interval_s=0.5, look_back_period_s=2)
            d["autoscaling_config"]["policy"]["policy_kwargs"] = {"target_sessions_per_replica": 1}
    return doc


@pytest.fixture(scope="module")
def scaling():
    cluster = ServeCluster(autoscaling_media(), num_cpus=4).start()  # logical: room to schedule a replica
    yield cluster
    cluster.stop()


def media_processes(cluster: ServeCluster) -> int:
    """Media replica processes of this cluster (the suite's shared one may be running too)."""
    ours = descendants([cluster.ray_proc.pid])
    return sum(1 for pid, cmd, _ in processes() if pid in ours and deployment_of(cmd) == "Media")


async def listed(url: str) -> list[str]:
    async with httpx.AsyncClient(timeout=30) as http:
        return [r["replica"] for r in (await http.get(f"{url}/v1/sessions")).json()["replicas"]]


async def wait_listed(url: str, n: int, timeout_s: float) -> list[str]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        names = await listed(url)
        if len(names) == n:
            return names
        await asyncio.sleep(0.5)
    raise AssertionError(f"{await listed(url)} after {timeout_s} s, wanted {n} replicas")


def answered(e):
    return (e["type"] == "transcript" and e["role"] == "avatar" and e["final"]) or e["type"] == "error"


async def ask(client, text="Say hello.") -> dict:
    start = len(client.received.events)
    client.send_text(text)
    return await client.wait_for_event(answered, 120, start)


async def test_sessions_bring_a_replica_and_its_removal_waits_for_its_session(scaling):
    url, open_ = scaling.url, []

    async def session() -> AvatarClient:
        c = await AvatarClient(url, host_addresses=LOOPBACK, render="browser").connect()
        open_.append(c)
        return c

    try:
        [first] = await wait_listed(url, 1, 60)
        a, b = await session(), await session()
        assert owner_of(a.session_id) == owner_of(b.session_id) == first
        # two sessions, one per replica wanted: a second replica starts, and takes the next session
        second = next(r for r in await wait_listed(url, 2, 120) if r != first)
        await asyncio.sleep(1.5)  # a routing-stats period
        c = await session()
        assert owner_of(c.session_id) == second

        # back to one session: the newer replica, holding it, is chosen for scale-down and drains
        assert await a.close() == 204 and await b.close() == 204
        assert await wait_listed(url, 1, 90) == [first]
        assert media_processes(scaling) == 2, "the draining replica must wait for its session"
        reply = await ask(c)
        assert reply["type"] == "transcript", reply  # served by the replica out of routing
        d = await session()
        assert owner_of(d.session_id) == first
        await asyncio.sleep(3)
        assert media_processes(scaling) == 2 and c.events_of("closed") == []

        # its session hangs up (the DELETE cannot reach it: out of routing; the peer connection closes)
        assert await c.close() == 404
        deadline = time.monotonic() + 60
        while media_processes(scaling) > 1 and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
        assert media_processes(scaling) == 1, "the drained replica did not go once its session ended"
        assert (await ask(d))["type"] == "transcript"
    finally:
        for client in open_:
            await client.close()
