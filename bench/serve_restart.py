"""kill -9 and restart to ready: seconds, measured, for one model and for every bundled model (issue 15).

Usage: python bench/serve_restart.py [--rounds 5] [--max-seconds 120]   (writes bench/results/restart.md and .json)
For a repository holding only flchain-mortality, then the whole models/ folder: starts `sbnn serve` (cold: the
first start of this run), waits until ready, sends one predict, then `kill -9`s it; then, ``--rounds`` times,
starts it again on a fresh free loopback port and measures the seconds from Popen to the first
/v2/health/ready 200 (polled every 20 ms) and to the first successful predict, sends the predict, `kill -9`s it.
The machine's page cache is warm after the cold start; nothing here drops it. Every server is killed in a
finally block.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._server import ROW, free_port, machine_facts  # noqa: E402

MODEL = "flchain-mortality"
POLL_S = 0.02


def start_once(models: Path, max_seconds: float) -> dict[str, Any]:
    """One start: seconds from Popen to ready and to the first answered predict, then kill -9 (always)."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "SBNN_MODELS": str(models),
        "SBNN_PORT": str(port),
        "SBNN_HOST": "127.0.0.1",
        "SBNN_GRPC_PORT": "0",
        "SBNN_DEVICE": "cpu",
        "SBNN_LOG_LEVEL": "warning",
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    log = tempfile.TemporaryFile(mode="w+")
    started = time.perf_counter()
    server = subprocess.Popen([sys.executable, "-m", "app.cli", "serve"], env=env, cwd=ROOT, stdout=log, stderr=log)
    try:
        deadline = started + max_seconds
        with httpx.Client(base_url=base, timeout=5.0) as client:
            ready = _until(lambda: client.get("/v2/health/ready").status_code == 200, server, deadline, log)
            ready_s = time.perf_counter() - started
            predict = client.post(f"/v1/models/{MODEL}/predict", json={"instances": [ROW]})
            predict_s = time.perf_counter() - started
            if not ready or predict.status_code != 200:
                log.seek(0)
                raise RuntimeError(f"predict {predict.status_code}: {predict.text[:300]}; log: {log.read()[-2000:]}")
            models_ready = len([m for m in client.get("/v2/repository/index").json() if m["state"] == "READY"])
        load = round(os.getloadavg()[0], 2)
        return {
            "ready_s": round(ready_s, 3),
            "predict_s": round(predict_s, 3),
            "models_ready": models_ready,
            "load": load,
        }
    finally:
        if server.poll() is None:
            os.kill(server.pid, signal.SIGKILL)
        server.wait(timeout=30)
        log.close()


def _until(check: Any, server: subprocess.Popen[Any], deadline: float, log: Any) -> bool:
    while True:
        try:
            if check():
                return True
        except httpx.HTTPError:
            pass
        if server.poll() is not None or time.perf_counter() > deadline:
            log.seek(0)
            raise RuntimeError(f"server not ready (exit {server.poll()}): {log.read()[-3000:]}")
        time.sleep(POLL_S)


def measure(name: str, models: Path, rounds: int, max_seconds: float) -> dict[str, Any]:
    cold = start_once(models, max_seconds)
    runs = [start_once(models, max_seconds) for _ in range(rounds)]
    ready = [r["ready_s"] for r in runs]
    predict = [r["predict_s"] for r in runs]
    return {
        "repository": name,
        "models": len([p for p in models.iterdir() if p.is_dir() and not p.name.startswith(".")]),
        "models_ready": min(r["models_ready"] for r in [cold, *runs]),
        "cold": cold,
        "rounds": len(runs),
        "ready_median_s": round(statistics.median(ready), 3),
        "ready_max_s": max(ready),
        "predict_median_s": round(statistics.median(predict), 3),
        "predict_max_s": max(predict),
        "each": runs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="Restarts after the cold start, per repository.")
    parser.add_argument("--max-seconds", type=float, default=120.0, help="Longest wait for one start to be ready.")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results", help="Folder for the results.")
    args = parser.parse_args()
    load_average = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="sbnn-restart-"))
    try:
        single = work / "models"
        shutil.copytree(ROOT / "models" / MODEL, single / MODEL)
        results: dict[str, Any] = {
            "command": f"python bench/serve_restart.py --rounds {args.rounds}",
            "repositories": [
                measure(f"{MODEL} only", single, args.rounds, args.max_seconds),
                measure("models/ (all bundled)", ROOT / "models", args.rounds, args.max_seconds),
            ],
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "app"], cwd=ROOT, capture_output=True, text=True)
    results["machine"] = machine_facts(load_average)
    results["commit"] = commit.stdout.strip() + (" (app/ modified)" if dirty.stdout.strip() else "")
    results["date"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "restart.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "restart.md").write_text(report(results))
    print(report(results))


def report(results: dict[str, Any]) -> str:
    m = results["machine"]
    load = ", ".join(map(str, m["load_average_at_start"]))
    end = ", ".join(map(str, m["load_average_at_end"]))
    lines = [
        "# kill -9 and restart to ready",
        "",
        f"Command: `{results['command']}` ({results['date']}; commit {results['commit']}; {m['cpus']} cpus, "
        f"{m['platform']}, Python {m['python']}, torch {m['torch']}; load average at start {load}, at end {end}; "
        "server on cpu, "
        f"ready polled every {POLL_S * 1000:g} ms).",
        "",
        "Seconds from Popen of `sbnn serve` to the first /v2/health/ready 200, and to the first answered one-row "
        "predict. Cold: the run's first start of that repository (no server killed just before it); restart: "
        "a start right after the previous server was killed with SIGKILL. Both find Python, torch and the "
        "checkpoints in the page cache (nothing here drops it), so cold is not a first boot of a machine.",
        "",
        "| repository | models ready | cold: ready s | cold: predict s | restart: ready median s | max s | "
        "restart: predict median s | max s | rounds |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results["repositories"]:
        lines.append(
            f"| {r['repository']} | {r['models_ready']}/{r['models']} | {r['cold']['ready_s']} | "
            f"{r['cold']['predict_s']} | {r['ready_median_s']} | {r['ready_max_s']} | {r['predict_median_s']} | "
            f"{r['predict_max_s']} | {r['rounds']} |"
        )
    lines += ["", "Each restart (ready s / predict s, 1-minute load average just after):", ""]
    for r in results["repositories"]:
        each = ", ".join(f"{e['ready_s']} / {e['predict_s']} (load {e['load']})" for e in r["each"])
        lines.append(f"- {r['repository']}: {each}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
