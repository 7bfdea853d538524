"""Routing sessions to Media replicas (deployments/session_routing.py) and autoscaling on them
(deployments/session_autoscaling.py): the decisions, without Ray. tests/cluster/test_media_replicas.py
runs them inside Serve."""

from types import SimpleNamespace

import pytest

from deployments.session_autoscaling import SessionAutoscaling, replicas_for, total_sessions
from deployments.session_routing import ReplicaLoad, rank_for_new_session, target_replica
from avatarchat.webrtc.sessions import new_session_id, owner_of


def test_a_session_id_names_its_owner_and_is_unguessable():
    ids = {new_session_id("r1abc") for _ in range(100)}
    assert len(ids) == 100 and all(owner_of(i) == "r1abc" for i in ids)
    assert all(len(i.partition(".")[2]) == 16 for i in ids)  # 96 random bits, base64url
    for bad in ("", "abc", ".abc", "abc.", "nodot"):
        assert owner_of(bad) is None


def test_calls_about_a_session_go_to_its_owner():
    sid = new_session_id("r2")
    assert target_replica("end_session", {"session_id": sid}) == "r2"
    assert target_replica("describe", {"replica": "r7"}) == "r7"
    assert target_replica("create_session", {"offer_sdp": "v=0"}) is None
    assert target_replica("end_session", {"session_id": "not-an-id"}) is None


def test_new_sessions_go_to_the_replica_with_most_room_then_full_ones_last():
    loads = [ReplicaLoad("a", sessions=2, capacity=3), ReplicaLoad("b", sessions=0, capacity=3),
             ReplicaLoad("c", sessions=3, capacity=3), ReplicaLoad("d", sessions=1, capacity=3, recent=1)]
    assert rank_for_new_session(loads) == ["b", "a", "d", "c"]  # a and d tie: by name
    # what this router placed since the last stats counts: "b" just took two
    loads[1] = ReplicaLoad("b", sessions=0, capacity=3, recent=2)
    assert rank_for_new_session(loads)[0] == "a"


def test_a_replica_without_stats_yet_counts_as_empty():
    fresh = ReplicaLoad.from_stats("new", {})
    assert fresh.sessions == 0 and fresh.free >= 1
    assert ReplicaLoad.from_stats("x", {"sessions": 4, "capacity": 4}).free == 0


@pytest.mark.parametrize("sessions,target,want", [(0, 2, 1), (1, 2, 1), (2, 2, 1), (3, 2, 2), (9, 2, 5),
                                                  (6, 3, 2), (7, 3, 3)])
def test_replicas_for_sessions(sessions, target, want):
    assert replicas_for(sessions, target) == want


def test_the_policy_reads_every_replicas_sessions():
    ctx = SimpleNamespace(aggregated_metrics={"sessions": {"r1": 2.0, "r2": 3.0}})
    assert total_sessions(ctx.aggregated_metrics) == 5 and total_sessions(None) == 0
    assert SessionAutoscaling(target_sessions_per_replica=2)(ctx) == (3, {})
    assert SessionAutoscaling(target_sessions_per_replica=5)(ctx) == (1, {})
    with pytest.raises(ValueError):
        SessionAutoscaling(target_sessions_per_replica=0)
