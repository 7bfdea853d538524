"""The soak (load_tests/soak.py) in a reduced form on the shared real service: after 3 warm-up
sessions, 8 sessions one after another, then 3 at a time for 25 s, each with a spoken reply;
afterwards no peer connection is left, the Media replica's asyncio tasks are back where they were
and its memory is within 50 MB of the baseline."""

import asyncio

import pytest

from load_tests.soak import soak

pytestmark = [pytest.mark.cluster, pytest.mark.models, pytest.mark.timeout(600)]


def test_eight_sessions_then_three_at_a_time_leave_nothing_behind(service):
    report = asyncio.run(soak(service.url, n_sequential=8, users=3, seconds=25, max_growth_mb=50, warmup=3))
    for phase in ("sequential", "concurrent"):
        p = report[phase]
        assert not p["errors"], (phase, p["errors"])
        check = p["check"]
        assert check["peer_connections_left"] == 0, (phase, check)
        assert check["asyncio_tasks"][1] <= check["asyncio_tasks"][0], (phase, check)
        # The Media replica holds the sessions: a per-session leak shows there. The model stages' memory
        # grows to a high-water mark with the longest inputs they have seen (docs/performance.md,
        # "Soak"), which a few sessions do not reach; it is reported, not asserted, here.
        assert check["media_memory_growth_mb"] <= 50, (phase, check, report["samples"])
    assert report["concurrent"]["sessions"] >= 3
