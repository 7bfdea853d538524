"""Waits for the Serve application to come up, and fails loudly if a stage could not load.

`serve run CONFIG` submits the config and then only prints logs: a stage whose backend fails to
load leaves it running with a half-built graph. scripts/serve.sh runs this beside it; on failure it
prints which deployment (stage) failed and why, and exits non-zero so the service stops.

    python -m deployments.startup_check [--app avatar] [--timeout 600]
"""

from __future__ import annotations

import argparse
import sys
import time


def wait_for_app(app: str, timeout_s: float) -> tuple[bool, str]:
    import ray
    from ray import serve

    ray.init(address="auto", namespace="serve", logging_level="ERROR", log_to_driver=False)
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            status = serve.status().applications.get(app)
            if status is not None and status.status == "RUNNING":
                return True, f"application '{app}' is running"
            if status is not None and status.status in ("DEPLOY_FAILED", "UNHEALTHY"):
                bad = {n: d.message.strip() for n, d in status.deployments.items()
                       if d.status != "HEALTHY" and d.message}
                # The last line of a replica's traceback is our StageLoadError naming the stage.
                summary = [f"deployment {n}: {m.splitlines()[-1]}" for n, m in bad.items()]
                details = [f"--- {n} ---\n{m}" for n, m in bad.items()]
                return False, "\n".join(summary + details) or status.message
            time.sleep(1)  # a start-up supervisor, not a hot path
        return False, f"application '{app}' not running after {timeout_s:.0f} s"
    finally:
        ray.shutdown()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--app", default="avatar")
    parser.add_argument("--timeout", type=float, default=600)
    args = parser.parse_args(argv)
    ok, message = wait_for_app(args.app, args.timeout)
    if ok:
        print(f"[serve] ready: {message}", file=sys.stderr)
        return 0
    print(f"[serve] START-UP FAILED\n{message}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
