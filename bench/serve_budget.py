"""A large request beside small ones: the server's peak memory for 1,024 rows × 4,096 samples with each sampler,
and one-row latency while such a request runs (issue 14's targets: ≤ 1 GB added; 1-row p99 ≤ 50 ms).

Usage: python bench/serve_budget.py [--max-seconds 120] [--rounds 3]   (writes bench/results/budget.md and budget.json)
Starts `sbnn serve` (torch, then onnx) on a free loopback port with a deadline and compute budget that let the
large requests run. Memory: the process's peak RSS (VmHWM, reset through /proc/<pid>/clear_refs before each
request) minus its RSS just before. Fairness: one client sends sequential one-row predicts (the default bank
sampler) while curl, in its own process, sends one large request; the one-row latencies measured while it ran
are reported.
Client and server share this machine's cores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
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

from bench._server import ROW, running_server  # noqa: E402

MODEL = "flchain-mortality"
PREDICT = f"/v1/models/{MODEL}/predict"
ROWS, SAMPLES = 1024, 4096
SETTINGS = {"request_timeout_s": "600", "max_request_compute_s": "600", "device": "cpu"}


def _status(pid: int, key: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _large_body(sampler: str) -> dict[str, Any]:
    rows = [{**ROW, "age": 50 + i % 20, "kappa": 0.5 + (i % 37) / 10} for i in range(ROWS)]
    body: dict[str, Any] = {"instances": rows, "sampler": sampler}
    if sampler != "bank":  # the bank holds the model's 512 samples, drawn from the server's bank seed
        body |= {"samples": SAMPLES, "seed": 7}
    return body


def memory(base: str, pid: int, sampler: str, max_seconds: float) -> dict[str, Any]:
    """Peak RSS added by one large request (VmHWM reset just before it)."""
    before = _status(pid, "VmRSS")
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    start = time.perf_counter()
    answer = httpx.post(base + PREDICT, json=_large_body(sampler), timeout=max_seconds)
    seconds = time.perf_counter() - start
    if answer.status_code != 200:
        raise RuntimeError(f"{sampler}: {answer.status_code} {answer.text[:500]}")
    peak = _status(pid, "VmHWM")
    body = answer.json()
    return {
        "sampler": sampler,
        "rows": ROWS,
        "samples": body["samples"],
        "rss_before_mb": round(before, 1),
        "peak_added_mb": round(peak - before, 1),
        "seconds": round(seconds, 2),
    }


def fairness(base: str, sampler: str, max_seconds: float, rounds: int) -> dict[str, Any]:
    """One-row latencies while a large request runs beside them, ``rounds`` large requests one after another
    (the latencies pooled). The large request goes from another process (curl), so that its client's JSON work
    does not hold this process's GIL."""
    latencies: list[float] = []
    errors, seconds, statuses = 0, [], []
    for _ in range(rounds):
        measured, failed, status, took = _beside_one(base, sampler, max_seconds)
        latencies += measured
        errors += failed
        statuses.append(status)
        seconds.append(round(took, 2))
    latencies.sort()
    pick = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))] if latencies else float("nan")  # noqa: E731
    return {
        "sampler": sampler,
        "large_statuses": statuses,
        "large_seconds": seconds,
        "one_row_requests": len(latencies),
        "errors": errors,
        "p50_ms": round(pick(0.5), 2),
        "p99_ms": round(pick(0.99), 2),
        "max_ms": round(latencies[-1], 2) if latencies else float("nan"),
        "mean_ms": round(statistics.fmean(latencies), 2) if latencies else float("nan"),
    }


def _beside_one(base: str, sampler: str, max_seconds: float) -> tuple[list[float], int, int | str, float]:
    """(one-row latencies in ms, their errors, the large request's status, its seconds) for one large request."""
    with tempfile.NamedTemporaryFile("w", suffix=".json") as body:
        json.dump(_large_body(sampler), body)
        body.flush()
        command = ["curl", "-s", "-o", os.devnull, "-w", "%{http_code}", "-H", "content-type: application/json"]
        command += ["--max-time", str(max_seconds), "--data-binary", f"@{body.name}", base + PREDICT]
        latencies: list[float] = []
        errors = 0
        with httpx.Client(base_url=base, timeout=max_seconds) as client:
            for _ in range(20):  # warm the connection and the one-row path
                client.post(PREDICT, json={"instances": [ROW]}).raise_for_status()
            start = time.perf_counter()
            large = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
            time.sleep(0.2)  # the large request is on its way
            deadline = start + max_seconds
            while large.poll() is None and time.perf_counter() < deadline and len(latencies) < 100_000:
                sent = time.perf_counter()
                answer = client.post(PREDICT, json={"instances": [ROW]})
                if large.poll() is not None:
                    break  # measured only while the large request ran
                latencies.append((time.perf_counter() - sent) * 1000)
                errors += answer.status_code != 200
            status, _ = large.communicate(timeout=max_seconds)
            seconds = time.perf_counter() - start
    return latencies, errors, int(status) if status.isdigit() else status, seconds


def onnx_models() -> Path:
    """The bundled model exported to ONNX, in a temporary repository."""
    folder = Path(tempfile.mkdtemp(prefix="sbnn-budget-")) / MODEL
    shutil.copytree(ROOT / "models" / MODEL, folder)
    subprocess.run([sys.executable, "-m", "app.cli", "export-onnx", str(folder)], cwd=ROOT, check=True)
    return folder.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-seconds", type=float, default=120.0, help="Longest wait for one large request.")
    parser.add_argument("--rounds", type=int, default=3, help="Large requests per sampler, one after another.")
    args = parser.parse_args()
    results: dict[str, Any] = {"memory": [], "fairness": []}
    single = ROOT / "models"
    with running_server(models=str(single), backend="torch", **SETTINGS) as server:
        for sampler in ("bank", "fresh", "local"):
            results["memory"].append({"backend": "torch", **memory(server.base, server.pid, sampler, args.max_seconds)})
        for sampler in ("fresh", "local"):
            results["fairness"].append(
                {"backend": "torch", **fairness(server.base, sampler, args.max_seconds, args.rounds)}
            )
    onnx = onnx_models()
    try:
        with running_server(models=str(onnx), backend="onnx", **SETTINGS) as server:
            for sampler in ("bank", "fresh"):
                record = memory(server.base, server.pid, sampler, args.max_seconds)
                results["memory"].append({"backend": "onnx", **record})
            results["fairness"].append(
                {"backend": "onnx", **fairness(server.base, "fresh", args.max_seconds, args.rounds)}
            )
    finally:
        shutil.rmtree(onnx.parent, ignore_errors=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "app"], cwd=ROOT, capture_output=True, text=True)
    results["machine"] = {"cores": os.cpu_count(), "platform": platform.platform()}
    results["commit"] = commit.stdout.strip() + (" (app/ modified)" if dirty.stdout.strip() else "")
    out = ROOT / "bench" / "results"
    (out / "budget.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "budget.md").write_text(report(results))
    print(report(results))


def report(results: dict[str, Any]) -> str:
    worst_memory = max(r["peak_added_mb"] for r in results["memory"])
    worst_p99 = max(r["p99_ms"] for r in results["fairness"])
    lines = [
        "# A large request beside small ones",
        "",
        f"Command: `python bench/serve_budget.py` (commit {results['commit']}; {results['machine']['cores']} cores, "
        f"{results['machine']['platform']}; client and server on the same cores).",
        "",
        "## Peak memory added by one 1,024-row request",
        "",
        "| backend | sampler | samples | RSS before (MB) | peak added (MB) | seconds |",
        "|---|---|---|---|---|---|",
    ]
    for r in results["memory"]:
        lines.append(
            f"| {r['backend']} | {r['sampler']} | {r['samples']} | {r['rss_before_mb']} | {r['peak_added_mb']} | "
            f"{r['seconds']} |"
        )
    lines += [
        "",
        "## One-row latency while a 1,024 × 4,096 request runs",
        "",
        "| backend | large sampler | their seconds | one-row requests | errors | p50 (ms) | p99 (ms) | max (ms) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results["fairness"]:
        took = ", ".join(map(str, r["large_seconds"]))
        lines.append(
            f"| {r['backend']} | {r['sampler']} | {took} | {r['one_row_requests']} | {r['errors']} | "
            f"{r['p50_ms']} | {r['p99_ms']} | {r['max_ms']} |"
        )
    lines += [
        "",
        f"- 1,024 × 4,096 with any sampler adds ≤ 1 GB: {'met' if worst_memory <= 1024 else 'missed'} "
        f"(largest {worst_memory} MB).",
        f"- One-row p99 ≤ 50 ms beside it: {'met' if worst_p99 <= 50 else 'missed'} (worst {worst_p99} ms).",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
