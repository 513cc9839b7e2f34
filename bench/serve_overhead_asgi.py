"""The request path's own cost of API keys and the audit trail, without the network: in-process ASGI calls.

Usage: python bench/serve_overhead_asgi.py [--requests 1500] [--rounds 2]   (writes bench/results/security-asgi.md)
Each configuration (plain; keys; audit trail in SQLite; both) runs in its own process, one after another,
``rounds`` times: the app with its lifespan, sequential 1-row /v1 predicts through httpx's ASGI transport (the
first 200 are a warm-up). The difference to plain is what the middleware and the writer thread add in the
server's own process; bench/serve_soak.py measures it end to end over HTTP, where two servers and the client
share the cores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._server import ROW  # noqa: E402

CONFIGS = ("plain", "keys", "audit", "keys+audit")
WARMUP = 200


async def _measure(config: str, requests: int) -> list[float]:
    import httpx

    from app.serve.app import create_app
    from app.serve.auth import KeyScope, keys_json, new_key
    from app.serve.settings import Settings

    work = Path(tempfile.mkdtemp(prefix="sbnn-overhead-"))
    token, entry = new_key("bench", [KeyScope.INFER])
    (work / "keys.json").write_text(keys_json([entry]))
    extra: dict[str, object] = {}
    if "keys" in config:
        extra["api_keys_file"] = work / "keys.json"
    if "audit" in config:
        extra["audit_dir"] = work / "audit"
    app = create_app(Settings(models=ROOT / "models", grpc_port=0, **extra))  # type: ignore[arg-type]
    latencies = []
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        headers = {"authorization": f"Bearer {token}"}
        async with httpx.AsyncClient(transport=transport, base_url="http://sbnn.bench", headers=headers) as client:
            while (await client.get("/v2/health/ready")).status_code != 200:
                await asyncio.sleep(0.1)
            for i in range(WARMUP + requests):
                start = time.perf_counter()
                answer = await client.post("/v1/models/flchain-mortality/predict", json={"instances": [ROW]})
                elapsed = (time.perf_counter() - start) * 1000
                if answer.status_code != 200:
                    raise RuntimeError(f"{config}: {answer.status_code} {answer.text[:200]}")
                if i >= WARMUP:
                    latencies.append(elapsed)
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1500)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--one", choices=CONFIGS, help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args()
    if args.one:
        print(json.dumps(asyncio.run(_measure(args.one, args.requests))))
        return
    runs: dict[str, list[dict[str, float]]] = {config: [] for config in CONFIGS}
    for _ in range(args.rounds):
        for config in CONFIGS:
            command = [sys.executable, __file__, "--one", config, "--requests", str(args.requests)]
            out = subprocess.run(command, capture_output=True, text=True, check=True, timeout=900).stdout
            latencies = sorted(json.loads(out.strip().splitlines()[-1]))
            runs[config].append({"p50_ms": latencies[len(latencies) // 2], "mean_ms": statistics.fmean(latencies)})
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    median = {c: statistics.median(r["p50_ms"] for r in rs) for c, rs in runs.items()}
    lines = [
        "# Keys and audit trail in the server's own process (in-process ASGI)",
        "",
        f"Command: `python bench/serve_overhead_asgi.py --requests {args.requests} --rounds {args.rounds}` "
        f"(commit {commit.stdout.strip()}); sequential 1-row /v1 predicts, each configuration in its own process.",
        "",
        "| configuration | p50 per round (ms) | mean per round (ms) | median p50 − plain (ms) |",
        "|---|---|---|---|",
    ]
    for config, rs in runs.items():
        p50s = ", ".join(f"{r['p50_ms']:.3f}" for r in rs)
        means = ", ".join(f"{r['mean_ms']:.3f}" for r in rs)
        lines.append(f"| {config} | {p50s} | {means} | {median[config] - median['plain']:+.3f} |")
    lines.append("")
    out = ROOT / "bench" / "results"
    (out / "security-asgi.md").write_text("\n".join(lines))
    (out / "security-asgi.json").write_text(json.dumps({"runs": runs, "commit": commit.stdout.strip()}, indent=2))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
