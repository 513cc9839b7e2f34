"""1-row predict throughput at concurrency 32: one sbnn process, one Ray Serve replica, two replicas on two
Ray nodes (issue 19's target: two replicas >= 1.6x one on a machine with enough cores), with where the CPU went.

    python bench/ray_throughput.py [--requests 2000] [--rounds 3]

Runs as root: the two-node cluster (deploy/ray/loopback-cluster.sh) runs inside a network namespace that has
loopback alone, every port pinned, both nodes stopped by PID. Inside it this script (``--inside``) measures,
each with `hey` (keep-alive, a fixed request count, a 20 s per-request timeout) and a warm-up first:

- ``sbnn serve`` alone on 127.0.0.1:28500 (no Ray: the floor Ray's proxy adds to);
- Ray Serve with 1 replica, then with 2 (one per node), through the head's proxy on 127.0.0.1:28000.

CPU seconds per round come from /proc (the replicas, Ray's proxy, the server alone) and getrusage (hey).
Writes bench/results/ray-throughput.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._load_parts import hey, over_rounds  # noqa: E402
from bench._server import ROW, machine_facts, running_server  # noqa: E402

MODEL = "flchain-mortality"
PROXY = "http://127.0.0.1:28000"
ALONE_PORT = 28500
CONCURRENCY = 32
RESULTS = ROOT / "bench" / "results"


def cpu_seconds(pid: int) -> float:
    """utime + stime of a live process, from /proc (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measured(url: str, body: Path, requests: int, rounds: int, pids: dict[str, list[int]]) -> dict[str, Any]:
    """A warm-up, then ``rounds`` hey runs: medians of requests/s and latency, and CPU seconds per second of
    each watched process group and of hey."""
    hey(url, 200, CONCURRENCY, body, 120)
    runs = []
    for _ in range(rounds):
        before = {name: sum(cpu_seconds(p) for p in group) for name, group in pids.items()}
        hey_before, started = children_cpu(), time.monotonic()
        run = hey(url, requests, CONCURRENCY, body, 300)
        seconds = time.monotonic() - started
        run["cpu_per_s"] = {
            name: round((sum(cpu_seconds(p) for p in group) - before[name]) / seconds, 2)
            for name, group in pids.items()
        }
        run["cpu_per_s"]["hey"] = round((children_cpu() - hey_before) / seconds, 2)
        runs.append(run)
    return {
        **over_rounds(runs),
        "rps": statistics.median(r["rps"] for r in runs),
        "cpu_per_s": {k: statistics.median(r["cpu_per_s"][k] for r in runs) for k in runs[0]["cpu_per_s"]},
    }


def ray_actors(kind: str) -> list[dict[str, Any]]:
    from ray._private.state import actors

    return [
        {"pid": a["Pid"], "node": a["Address"]["NodeID"]}
        for a in actors(actor_state_name="ALIVE").values()
        if kind in (a.get("ActorClassName") or "") and a.get("Pid")
    ]


def inside(models: str, out: Path, requests: int, rounds: int) -> None:
    body = out.with_name("body.json")
    body.write_text(json.dumps({"instances": [ROW]}))
    load_average = os.getloadavg()
    result: dict[str, Any] = {}
    with running_server(port=ALONE_PORT, models=models, device="cpu") as server:
        result["alone"] = measured(
            f"{server.base}/v1/models/{MODEL}/predict", body, requests, rounds, {"server": [server.pid]}
        )
    print(f"alone: {result['alone']['rps']:.0f} requests/s", file=sys.stderr, flush=True)

    import ray
    from ray import serve

    from app.serve.ray_serve import SbnnReplica

    ray.init(address="127.0.0.1:26379", namespace="sbnn-bench", log_to_driver=False)
    serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": 28000})
    env = {"SBNN_MODELS": models, "SBNN_DEVICE": "cpu", "SBNN_LOG_LEVEL": "warning"}
    options = {"num_cpus": 1, "runtime_env": {"env_vars": env}}
    for replicas in (1, 2):
        # max_ongoing_requests as deploy/ray/serve.yaml: at Ray's default (5) a replica's router holds the rest
        # of 32 concurrent requests in backoff (a first try of this benchmark: ~9 requests/s).
        deployment = SbnnReplica.options(num_replicas=replicas, ray_actor_options=options, max_ongoing_requests=32)
        serve.run(deployment.bind(), name="sbnn", route_prefix="/")
        placed = ray_actors("ServeReplica")
        watched = {"replicas": [a["pid"] for a in placed], "proxy": [a["pid"] for a in ray_actors("ProxyActor")]}
        entry = measured(f"{PROXY}/v1/models/{MODEL}/predict", body, requests, rounds, watched)
        entry["nodes"] = len({a["node"] for a in placed})
        result[f"ray_{replicas}"] = entry
        print(f"ray, {replicas} replica(s): {entry['rps']:.0f} requests/s", file=sys.stderr, flush=True)
    serve.shutdown()
    result["machine"] = machine_facts(load_average)
    out.write_text(json.dumps(result))


def report(result: dict[str, Any], command: str) -> str:
    one, two, alone = result["ray_1"], result["ray_2"], result["alone"]
    ratio = two["rps"] / one["rps"]
    lines = [
        "# Ray Serve: 1-row predict throughput at concurrency 32",
        "",
        f"`{command}` (two Ray nodes on loopback in a network namespace, {result['machine']['cpus']} cores;"
        f" load average at start {result['machine']['load_average_at_start'][0]}).",
        "",
        "| setup | requests/s | p50 ms | p99 ms | answered 200 | CPU s per s |",
        "|---|---|---|---|---|---|",
    ]
    for name, entry in (("`sbnn serve`, one process", alone), ("Ray, 1 replica", one), ("Ray, 2 replicas", two)):
        cpu = ", ".join(f"{k} {v}" for k, v in entry["cpu_per_s"].items())
        lines.append(
            f"| {name} | {entry['rps']:.0f} | {entry['p50_ms']:.1f} | {entry['p99_ms']:.1f} | "
            f"{entry['ok']} / {entry['sent']} | {cpu} |"
        )
    verdict = "met" if ratio >= 1.6 else "missed"
    lines += [
        "",
        f"Two replicas / one: **{ratio:.2f}x** (target >= 1.6x on a machine with enough cores: {verdict} here)."
        f" Ray, 1 replica / `sbnn serve` alone: {one['rps'] / alone['rps']:.2f}x. The replicas of the 2-replica"
        f" run were on {two['nodes']} nodes. 'CPU s per s' is each process group's CPU time over the round's"
        " wall time (1.0 = one core busy); hey is the load generator, on the same cores.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--inside", nargs=2, metavar=("MODELS", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inside:
        inside(args.inside[0], Path(args.inside[1]), args.requests, args.rounds)
        return
    with tempfile.TemporaryDirectory() as work:
        models = Path(work) / "models"
        shutil.copytree(ROOT / "models" / MODEL, models / MODEL)
        out = Path(work) / "result.json"
        command = [
            "unshare", "-n", "bash", str(ROOT / "deploy" / "ray" / "loopback-cluster.sh"), work, sys.executable,
            __file__, "--inside", str(models), str(out), "--requests", str(args.requests), "--rounds",
            str(args.rounds),
        ]  # fmt: skip
        env = {**os.environ, "SBNN_RAY": str(Path(sys.executable).parent / "ray"), "PYTHONPATH": str(ROOT)}
        subprocess.run(command, env=env, check=True, timeout=1800)
        result = json.loads(out.read_text())
    shown = f"python bench/ray_throughput.py --requests {args.requests} --rounds {args.rounds}"
    (RESULTS / "ray-throughput.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "ray-throughput.md").write_text(report(result, shown))
    print(report(result, shown))


if __name__ == "__main__":
    main()
