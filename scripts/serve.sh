#!/usr/bin/env bash
# The run command: installs on first use, checks the config, starts a local Ray head on 127.0.0.1
# (dashboard at http://127.0.0.1:8265) and runs `serve run CONFIG` on it. If a stage fails to load,
# it says which one and why, and stops. Ctrl-C stops the service and the Ray head it started.
# Usage: scripts/serve.sh [SERVE_CONFIG.yaml]   (default serve_config.yaml)
# With RAY_ADDRESS set, it deploys onto that existing cluster instead and leaves it running.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
VENV=${AVATAR_CHAT_VENV:-.venv}
export PATH="$PWD/$VENV/bin:$PATH" RAY_USAGE_STATS_ENABLED=0
config=${1:-serve_config.yaml}
python -m avatarchat.config "$config" >/dev/null   # a bad config or cert/key fails here, naming file and key

own_ray=0
if [ -z "${RAY_ADDRESS:-}" ]; then
  # Ray's token auth, explicitly: the ray/serve CLIs only present ~/.ray/auth_token in token mode.
  export RAY_AUTH_MODE=${RAY_AUTH_MODE:-token}
  if [ "$RAY_AUTH_MODE" = token ] && [ ! -s "$HOME/.ray/auth_token" ]; then
    ray get-auth-token --generate >/dev/null
  fi
  [ -f "$HOME/.ray/auth_token" ] && chmod 600 "$HOME/.ray/auth_token"   # Ray writes it world-readable
  # Workers at nice 0 instead of Ray's 15: the Gateway's live media then outranks everything
  # else on the box, and the model stages lower their own priority (avatarchat/priority.py).
  export RAY_worker_niceness=${RAY_worker_niceness:-0}
  # glibc gives each thread that allocates its own heap arena and keeps what it frees there: the
  # Gateway's media threads and the model stages' worker threads then grow in steps and never give
  # memory back. Two arenas per process keep memory flat (docs/performance.md, "Soak").
  export MALLOC_ARENA_MAX=${MALLOC_ARENA_MAX:-2}
  # A one-machine Ray that stays on loopback: on a machine with a network, Ray replaces
  # --node-ip-address=127.0.0.1 by the address of its default route and then binds the GCS, raylet,
  # workers and metrics ports to all interfaces. This Ray setting keeps the node address 127.0.0.1
  # (and refuses other nodes); docs/deployment.md, "What listens where".
  export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
  # Prometheus text (Serve's metrics and avatar_chat_*) on a fixed port (docs/deployment.md)
  ray start --head --node-ip-address=127.0.0.1 --dashboard-host=127.0.0.1 --disable-usage-stats \
    --metrics-export-port="${AVATAR_CHAT_METRICS_PORT:-8090}" >/dev/null
  export RAY_ADDRESS=127.0.0.1:6379
  own_ray=1
fi
# Every Serve replica's inter-deployment gRPC server on the node address, not on [::]
# (avatarchat/replica_bind.py: Ray Serve hard-codes [::]; a job-level setup hook rebinds it).
serve run --runtime-env-json \
  '{"worker_process_setup_hook": "avatarchat.replica_bind.bind_replica_grpc_to_node_ip"}' "$config" &
serve_pid=$!
stop() {
  kill -TERM "$serve_pid" 2>/dev/null || true   # serve run ignores SIGINT in the background
  wait "$serve_pid" 2>/dev/null || true
  if [ "$own_ray" = 1 ]; then ray stop >/dev/null 2>&1 || true; fi
}
trap 'stop; exit 130' INT TERM
if python -m deployments.startup_check --timeout "${AVATAR_CHAT_START_TIMEOUT:-900}"; then
  url=$(python -c "import yaml,sys; o=yaml.safe_load(open(sys.argv[1])).get('http_options') or {}; print(('https' if o.get('ssl_certfile') else 'http') + '://127.0.0.1:' + str(o.get('port', 8000)) + '/')" "$config")
  echo "[serve] open $url ; Ray dashboard: http://127.0.0.1:8265/" >&2
  [ "$own_ray" = 1 ] && echo "[serve] Prometheus metrics: http://127.0.0.1:${AVATAR_CHAT_METRICS_PORT:-8090}/metrics" >&2
  wait "$serve_pid"
else
  stop
  exit 1
fi
