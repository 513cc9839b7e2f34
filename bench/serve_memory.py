"""Resident memory of the server with each backend: `sbnn serve --backend torch` against `--backend onnx`.

Usage: python bench/serve_memory.py   (writes bench/results/serve-memory.md)
Exports the bundled model to ONNX in a temporary copy, starts each server on a free loopback port, sends 200
one-row predicts, and reads the process's VmRSS from /proc.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._server import ROW, running_server  # noqa: E402


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def measure(models: Path, backend: str) -> dict[str, float]:
    with running_server(models=str(models), backend=backend, device="cpu") as server:
        ready = rss_mb(server.pid)
        latencies = []
        with httpx.Client(base_url=server.base) as client:
            for _ in range(200):
                start = time.perf_counter()
                client.post("/v1/models/flchain-mortality/predict", json={"instances": [ROW]}).raise_for_status()
                latencies.append((time.perf_counter() - start) * 1000)
        latencies.sort()
        return {"rss_ready_mb": ready, "rss_after_mb": rss_mb(server.pid), "p50_ms": latencies[100]}


def main() -> None:
    from app.checkpoint.io import load_checkpoint
    from app.checkpoint.onnx_export import export_onnx

    with tempfile.TemporaryDirectory() as tmp:
        models = Path(tmp)
        shutil.copytree(ROOT / "models" / "flchain-mortality", models / "flchain-mortality")
        export_onnx(load_checkpoint(models / "flchain-mortality"))
        rows = {backend: measure(models, backend) for backend in ("torch", "onnx")}
    lines = [
        "# Server memory by backend",
        "",
        "Command: `python bench/serve_memory.py` (bundled model, 200 one-row predicts at S = 512, CPU).",
        "",
        "| backend | RSS when ready (MB) | RSS after 200 predicts (MB) | p50 latency (ms) |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {b} | {r['rss_ready_mb']:.0f} | {r['rss_after_mb']:.0f} | {r['p50_ms']:.1f} |" for b, r in rows.items()
    ]
    out = ROOT / "bench" / "results" / "serve-memory.md"
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
