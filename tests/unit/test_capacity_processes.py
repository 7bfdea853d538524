"""Which Serve deployment a process serves, from its title (the benchmarks and the drain test
count replicas by it)."""

import pytest

from load_tests.capacity import deployment_of


@pytest.mark.parametrize("cmd, name", [
    ("ray::ServeReplica:avatar:Media", "Media"),
    ("ray::ServeReplica:avatar:Media.perform_graceful_shutdown", "Media"),  # draining
    ("ray::ServeReplica:avatar:LLM.handle_request_streaming extra", "LLM"),
    ("ray::ServeController", None),
    ("/usr/bin/python -m pytest", None),
])
def test_a_replica_is_known_by_its_deployment_whatever_method_runs(cmd, name):
    assert deployment_of(cmd) == name
