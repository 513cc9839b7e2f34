"""Load test of the real server with `hey`: 1-row predicts at the default S, and /v2/health/live as the floor.

Usage: python bench/serve_load.py [--requests 400] [--concurrency 1,4,16,64]
Starts `sbnn serve` on a free loopback port, runs hey (Debian package `hey`) against it, and writes
bench/results/serve.md and bench/results/serve.json. Client and server share this machine's cores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._server import ROW, running_server  # noqa: E402


def hey(url: str, requests: int, concurrency: int, body: Path | None) -> dict[str, float]:
    cmd = ["hey", "-n", str(requests), "-c", str(concurrency)]
    if body is not None:
        cmd += ["-m", "POST", "-T", "application/json", "-D", str(body)]
    out = subprocess.run([*cmd, url], capture_output=True, text=True, check=True, timeout=600).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    pct = {p: float(v) * 1000 for p, v in re.findall(r"\s(\d+)% in ([\d.]+) secs", out)}
    # hey sends n // c requests per worker, so the total can be below n; count what was answered.
    statuses = dict(re.findall(r"\[(\d{3})\]\s+(\d+) responses", out))
    nan = float("nan")  # hey leaves out percentiles it has too few requests for
    return {
        "rps": rps,
        "p50_ms": pct.get("50", nan),
        "p90_ms": pct.get("90", nan),
        "p99_ms": pct.get("99", nan),
        "ok": int(statuses.get("200", 0)),
        "requests": sum(int(v) for v in statuses.values()),
    }


def drift_gauges(base: str) -> dict[str, float]:
    """The drift gauges of flchain-mortality: ``psi_epistemic``, ``ks_density``, …, ``ood_rate``, ``window_rows``."""
    text = httpx.get(f"{base}/metrics").text
    pattern = r'^sbnn_drift_(psi|ks|ood_rate|window_rows)\{model="flchain-mortality"(?:,score="(\w+)")?\} ([\d.e+-]+)$'
    found = re.findall(pattern, text, re.M)
    return {f"{name}_{score}" if score else name: float(value) for name, score, value in found}


def drift_phase(base: str, url: str) -> list[tuple[str, dict[str, float]]]:
    """The flchain test split (in distribution), then the same rows with creatinine in mg/L (×10: still
    plausible, so scored; in umol/L most would be rejected, and rejected rows add no score to the windows)."""
    from app.data.flchain import load_flchain  # needs sbnn[data]

    frame = load_flchain(0).test.frame
    rows = [
        {k: (None if isinstance(v, float) and v != v else v) for k, v in r.items()}
        for r in frame.to_dict(orient="records")
    ]
    for start in range(0, len(rows), 100):
        httpx.post(url, json={"instances": rows[start : start + 100]}, timeout=60).raise_for_status()
    found = [(f"after the {len(rows)} test-split rows (in distribution)", drift_gauges(base))]
    shifted = [{**r, "creatinine": None if r["creatinine"] is None else r["creatinine"] * 10} for r in rows[:400]]
    for start in range(0, len(shifted), 100):
        httpx.post(url, json={"instances": shifted[start : start + 100]}, timeout=60).raise_for_status()
    found.append(("after 400 more rows with creatinine sent in mg/L", drift_gauges(base)))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--concurrency", default="1,4,16,64")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    if shutil.which("hey") is None:
        sys.exit("hey is not installed: apt-get install hey")
    with running_server(models=str(ROOT / "models")) as server:
        base = server.base
        body = Path(tempfile.mkstemp(suffix=".json")[1])
        body.write_text(json.dumps({"instances": [ROW]}))
        predict_url = f"{base}/v1/models/flchain-mortality/predict"
        drift = drift_phase(base, predict_url)
        hey(predict_url, 200, 4, body)  # warm-up
        rows = []
        for c in [int(v) for v in args.concurrency.split(",")]:
            rows.append(
                {"route": "predict (1 row, S=512)", "concurrency": c, **hey(predict_url, args.requests, c, body)}
            )
            rows.append(
                {
                    "route": "/v2/health/live (floor)",
                    "concurrency": c,
                    **hey(f"{base}/v2/health/live", args.requests, c, None),
                }
            )
        metrics = httpx.get(f"{base}/metrics").text
        batch = {
            m: float(v)
            for m, v in re.findall(
                r'^sbnn_batch_requests_(sum|count)\{model="flchain-mortality"\} ([\d.e+]+)$', metrics, re.M
            )
        }
        drift.append(("after the load test (one row repeated: a window unlike the reference)", drift_gauges(base)))
    machine = (
        f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, Python {platform.python_version()}"
    )
    mean_batch = batch.get("sum", 0) / max(batch.get("count", 1), 1)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "serve.json").write_text(
        json.dumps({"machine": machine, "rows": rows, "drift": drift, "mean_requests_per_batch": mean_batch}, indent=2)
        + "\n"
    )
    lines = [
        "# Service load test",
        "",
        f"Command: `python bench/serve_load.py --requests {args.requests} --concurrency {args.concurrency}` "
        f"(hey against `sbnn serve` on loopback; client and server share the machine). Machine: {machine}.",
        "",
        "| route | concurrency | requests/s | p50 ms | p90 ms | p99 ms | 200 / answered |",
        "|---|---|---|---|---|---|---|",
        *[
            f"| {r['route']} | {r['concurrency']} | {r['rps']:.0f} | {r['p50_ms']:.1f} | {r['p90_ms']:.1f} | "
            f"{r['p99_ms']:.1f} | {r['ok']}/{r['requests']} |"
            for r in rows
        ],
        "",
        f"Mean requests coalesced per batched pass over the whole run: {mean_batch:.2f}.",
        "",
        "Drift gauges of flchain-mortality (window of the last 1,000 rows), measured before the load test:",
        "",
        "| when | PSI epistemic | PSI density | KS epistemic | KS density | not accepted | rows in window |",
        "|---|---|---|---|---|---|---|",
        *[
            f"| {when} | "
            + " | ".join(
                f"{g.get(k, float('nan')):.3f}"
                for k in ("psi_epistemic", "psi_density", "ks_epistemic", "ks_density", "ood_rate")
            )
            + f" | {g.get('window_rows', 0):.0f} |"
            for when, g in drift
        ],
    ]
    (args.out / "serve.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
