"""Binds each Serve replica's inter-deployment gRPC server to its node's address, not to `[::]`.

Ray Serve 2.60 starts, in every replica, a gRPC server for handle calls between deployments on a
hard-coded wildcard address (ray/serve/_private/replica.py, `Replica._on_initialized`:
`add_port_to_grpc_server(self._server, "[::]:0")`); no setting changes it. Callers dial it at the
replica's node address (`RunningReplicaInfo.node_ip`, which the replica reports with
`ray.util.get_node_ip_address()`), so binding it to that same address loses nothing: on a
loopback-only node (scripts/serve.sh) it then listens on 127.0.0.1, on a multi-node cluster on the
node's cluster address only. This graph does not even use that transport (handle calls go by Ray
actor calls unless `RAY_SERVE_USE_GRPC_BY_DEFAULT`/`RAY_SERVE_THROUGHPUT_OPTIMIZED` is set), but
the server is started regardless.

Ray runs it as a `worker_process_setup_hook` in every worker process of the `serve run` job (Serve
controller, proxy, replicas) before any actor exists there: scripts/serve.sh and
avatarchat/local_cluster.py pass SERVE_RUN_RUNTIME_ENV_JSON to `serve run --runtime-env-json`.
(Ray 2.60 honours the hook only in a job-level runtime_env: in an application's `runtime_env` in
the Serve config it is silently ignored.) It changes nothing but that one wildcard address; if Ray
changes how it binds, the hook binds nothing and tests/cluster/test_listening_ports.py fails
(docs/deployment.md, "What listens where").
"""

from __future__ import annotations

import json
import logging

WILDCARD = "[::]:0"  # the literal Ray Serve 2.60 passes

logger = logging.getLogger(__name__)


def bind_replica_grpc_to_node_ip() -> None:
    import ray
    from ray._common.network_utils import build_address
    from ray.serve._private import replica

    original = replica.add_port_to_grpc_server
    if getattr(original, "avatar_chat_node_bound", False):
        return
    node_ip = ray.util.get_node_ip_address()

    def add_port_to_grpc_server(server, address):
        if address == WILDCARD:
            address = build_address(node_ip, 0)
        return original(server, address)

    add_port_to_grpc_server.avatar_chat_node_bound = True
    replica.add_port_to_grpc_server = add_port_to_grpc_server
    logger.debug("Serve replica gRPC server will bind %s instead of %s", node_ip, WILDCARD)


# The hook as `serve run` takes it: a job-level runtime_env, which the Serve controller that
# `serve run` starts and every replica that controller starts inherit.
SERVE_RUN_RUNTIME_ENV = {"worker_process_setup_hook": f"{__name__}.bind_replica_grpc_to_node_ip"}
SERVE_RUN_RUNTIME_ENV_JSON = json.dumps(SERVE_RUN_RUNTIME_ENV)
