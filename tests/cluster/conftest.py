"""One shared start of the real service for all cluster tests (start-up is the slow part)."""

import pytest
import yaml

from avatarchat.local_cluster import ROOT, ServeCluster

# WebRTC sessions in tests stay on loopback: host candidates 127.0.0.1 only (aioice skips loopback
# by default) and no STUN. A small session limit lets the tests reach it.
SESSIONS = {"host_addresses": ["127.0.0.1"], "max_sessions": 3, "media_timeout_s": 4.0}


def cluster_serve_config() -> dict:
    doc = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    doc["applications"][0]["args"].setdefault("sessions", {}).update(SESSIONS)
    return doc




@pytest.fixture(scope="session")
def service():
    cluster = ServeCluster(cluster_serve_config()).start()
    yield cluster
    cluster.stop()
