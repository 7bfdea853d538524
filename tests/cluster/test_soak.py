"""The soak (load_tests/soak.py) in a reduced form on the shared real service: sessions one after
another, then a few at a time, each with a spoken reply; afterwards no peer connection is left, the
Gateway's asyncio tasks are back where they were and the service's memory is within 50 MB."""

import asyncio

import pytest

from load_tests.soak import soak

pytestmark = [pytest.mark.cluster, pytest.mark.models, pytest.mark.timeout(600)]


def test_twelve_sessions_then_three_at_a_time_leave_nothing_behind(service):
    report = asyncio.run(soak(service.url, n_sequential=12, users=3, seconds=25, max_growth_mb=50))
    for phase in ("sequential", "concurrent"):
        p = report[phase]
        assert not p["errors"], (phase, p["errors"])
        check = p["check"]
        assert check["peer_connections_left"] == 0, (phase, check)
        assert check["asyncio_tasks"][1] <= check["asyncio_tasks"][0], (phase, check)
        assert check["memory_growth_mb"] <= 50, (phase, check, report["samples"])
        assert check["ok"], (phase, check)
    assert report["concurrent"]["sessions"] >= 3
