#!/usr/bin/env bash
# A two-node Ray cluster on loopback, then COMMAND..., then both nodes stopped by PID (tests/serve/test_ray.py).
# Run it ONLY inside a network namespace that has loopback alone: Ray resolves and binds the machine's own
# address otherwise. As root:   unshare -n bash deploy/ray/loopback-cluster.sh LOGDIR python driver.py
# Every port is pinned (head 26379-26449, worker 26390-26499); each node has one CPU, so a deployment of two
# one-CPU replicas puts one on each node.
set -u
logs="$1"; shift
ray="${SBNN_RAY:-ray}"
ip link set lo up
# Ray Serve's proxy otherwise sends every request to a replica on its own node.
export RAY_SERVE_PROXY_PREFER_LOCAL_NODE_ROUTING=0 RAY_USAGE_STATS_ENABLED=0
# A proxy that starts slowly on two busy cores is not killed: 5 s (the default) is too short there.
export RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S=60 RAY_SERVE_PROXY_HEALTH_CHECK_TIMEOUT_S=30
common=(--node-ip-address 127.0.0.1 --num-cpus 1 --disable-usage-stats --block)
"$ray" start --head --port 26379 --node-manager-port 26380 --object-manager-port 26381 --ray-client-server-port 26382 \
  --include-dashboard false --dashboard-agent-listen-port 26383 --dashboard-agent-grpc-port 26384 \
  --runtime-env-agent-port 26385 --metrics-export-port 26386 --min-worker-port 26400 --max-worker-port 26449 \
  "${common[@]}" > "$logs/head.log" 2>&1 &
head=$!
started() { for _ in $(seq 240); do grep -q "Ray runtime started" "$1" && return 0; sleep 0.5; done; return 1; }
stop() {
  kill -TERM "$@" 2>/dev/null
  for _ in $(seq 60); do
    alive=0; for pid in "$@"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && return 0; sleep 0.5
  done
  kill -KILL "$@" 2>/dev/null; return 0
}
started "$logs/head.log" || { echo "the head node did not start" >&2; stop "$head"; exit 1; }
"$ray" start --address 127.0.0.1:26379 --node-manager-port 26390 --object-manager-port 26391 \
  --dashboard-agent-listen-port 26393 --dashboard-agent-grpc-port 26394 --runtime-env-agent-port 26395 \
  --metrics-export-port 26396 --min-worker-port 26450 --max-worker-port 26499 \
  "${common[@]}" > "$logs/worker.log" 2>&1 &
worker=$!
started "$logs/worker.log" || { echo "the worker node did not start" >&2; stop "$worker" "$head"; exit 1; }
"$@"
status=$?
stop "$worker" "$head"
exit "$status"
