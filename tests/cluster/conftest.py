"""One shared start of the real service for all cluster tests (start-up is the slow part)."""

import pytest

from avatarchat.local_cluster import ROOT, ServeCluster


@pytest.fixture(scope="session")
def service():
    cluster = ServeCluster(ROOT / "serve_config.yaml")
    try:
        cluster.start()
    except Exception:
        cluster.stop()
        raise
    yield cluster
    cluster.stop()
