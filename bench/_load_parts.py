"""The parts of bench/serve_load.py: `hey` runs sized to a duration, the batching histograms read from /metrics,
the 1,024-row bodies (/v1 JSON and /v2 with binary tensor data) and the engine timed in this process."""

from __future__ import annotations

import json
import re
import statistics
import struct
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._server import ROW  # noqa: E402

MODEL = "flchain-mortality"
NUMERIC = ("age", "kappa", "lambda", "flc_grp", "creatinine", "mgus")  # FP64 on /v2; `sex` is BYTES


# ---------------------------------------------------------------------------------------------------- hey


def hey(url: str, requests: int, concurrency: int, body: Path | None, timeout_s: float) -> dict[str, Any]:
    """One hey run (keep-alive, 20 s per-request timeout): requests/s, percentiles in ms (hey prints seconds with
    4 decimals: 0.1 ms resolution), how many were answered 200, and hey's error lines."""
    requests = max(concurrency, requests - requests % concurrency)  # hey sends n // c per worker
    cmd = ["hey", "-n", str(requests), "-c", str(concurrency), "-t", "20"]
    if body is not None:
        cmd += ["-m", "POST", "-T", "application/json", "-D", str(body)]
    out = subprocess.run([*cmd, url], capture_output=True, text=True, check=True, timeout=timeout_s).stdout
    found = re.search(r"Requests/sec:\s+([\d.]+)", out)
    pct = {p: float(v) * 1000 for p, v in re.findall(r"\s(\d+)%+ in ([\d.]+) secs", out)}
    average = re.search(r"Average:\s+([\d.]+) secs", out)
    statuses = dict(re.findall(r"\[(\d{3})\]\s+(\d+) responses", out))
    errors = re.findall(r"^\s+\[(\d+)\]\s+(.+)$", out.split("Error distribution:")[1], re.M) if "Error" in out else []
    nan = float("nan")  # hey leaves out percentiles it has too few requests for
    return {
        "requests_sent": requests,
        "rps": float(found.group(1)) if found else nan,
        "mean_ms": float(average.group(1)) * 1000 if average else nan,
        "p50_ms": pct.get("50", nan),
        "p90_ms": pct.get("90", nan),
        "p99_ms": pct.get("99", nan),
        "ok": int(statuses.get("200", 0)),
        "answered": sum(int(v) for v in statuses.values()),
        "statuses": {k: int(v) for k, v in statuses.items()},
        "errors": [f"{count}× {text.strip()}" for count, text in errors],
    }


def over_rounds(rounds: list[dict[str, Any]]) -> dict[str, float]:
    """Several hey runs of one body: the medians of their p50, p99 and mean, and the requests answered 200 and
    sent in all."""
    return {
        "p50_ms": statistics.median(r["p50_ms"] for r in rounds),
        "p99_ms": statistics.median(r["p99_ms"] for r in rounds),
        "mean_ms": statistics.median(r["mean_ms"] for r in rounds),
        "ok": sum(r["ok"] for r in rounds),
        "sent": sum(r["requests_sent"] for r in rounds),
    }


def sized(pilot: dict[str, Any], concurrency: int, seconds: float, cap: int) -> int:
    """Requests for a run of about ``seconds`` at the pilot's requests/s: at least 10c, at most ``cap``."""
    rps = pilot["rps"] if pilot["rps"] == pilot["rps"] else 100.0
    return int(min(cap, max(10 * concurrency, rps * seconds)))


# ---------------------------------------------------------------------------------------------------- metrics


def batch_histograms(base: str) -> dict[str, float]:
    """``sbnn_batch_requests`` and ``sbnn_batch_rows`` ``_sum``/``_count`` for the model, and the compute stage's
    ``sbnn_inference_stage_duration_seconds`` ``_sum``/``_count`` (as ``compute_sum``, ``compute_count``)."""
    text = httpx.get(f"{base}/metrics", timeout=30).text
    pattern = rf'^sbnn_batch_(requests|rows)_(sum|count)\{{model="{MODEL}"\}} ([\d.e+-]+)$'
    found = {f"{name}_{part}": float(value) for name, part, value in re.findall(pattern, text, re.M)}
    pattern = rf'^sbnn_inference_stage_duration_seconds_(sum|count)\{{model="{MODEL}",stage="compute"\}} ([\d.e+-]+)$'
    found.update({f"compute_{part}": float(value) for part, value in re.findall(pattern, text, re.M)})
    return found


def batch_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Passes, requests and rows between two reads, and the means per batched pass."""
    d = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
    passes = d.get("requests_count", 0.0)
    return {
        "passes": passes,
        "requests": d.get("requests_sum", 0.0),
        "rows": d.get("rows_sum", 0.0),
        "requests_per_pass": d.get("requests_sum", 0.0) / passes if passes else float("nan"),
        "rows_per_pass": d.get("rows_sum", 0.0) / passes if passes else float("nan"),
    }


# ---------------------------------------------------------------------------------------------------- bodies


def bulk_rows(rows: int) -> list[dict[str, Any]]:
    """``rows`` plausible rows near bench._server.ROW, varying slightly (age, kappa, lambda, creatinine, sex)."""
    return [
        {
            **ROW,
            "age": 50 + i % 30,
            "sex": "F" if i % 2 else "M",
            "kappa": round(1.0 + (i % 10) * 0.05, 3),
            "lambda": round(1.3 + (i % 7) * 0.05, 3),
            "creatinine": round(0.9 + (i % 5) * 0.05, 3),
        }
        for i in range(rows)
    ]


def v1_body(rows: list[dict[str, Any]], samples: int) -> bytes:
    return json.dumps({"instances": rows, "samples": samples}).encode()


def v2_binary_body(rows: list[dict[str, Any]], samples: int) -> tuple[bytes, dict[str, str]]:
    """The /v2 infer body with every input as binary tensor data (FP64 little-endian numbers; BYTES: a 4-byte
    little-endian length then the UTF-8), every output asked as binary; (body, headers)."""
    inputs, chunks = [], []
    for name in NUMERIC:
        chunk = np.array([r[name] for r in rows], dtype="<f8").tobytes()
        chunks.append(chunk)
        inputs.append(
            {"name": name, "shape": [len(rows)], "datatype": "FP64", "parameters": {"binary_data_size": len(chunk)}}
        )
    chunk = b"".join(struct.pack("<I", len(v)) + v for v in (r["sex"].encode() for r in rows))
    chunks.append(chunk)
    inputs.append(
        {"name": "sex", "shape": [len(rows)], "datatype": "BYTES", "parameters": {"binary_data_size": len(chunk)}}
    )
    header = json.dumps({"inputs": inputs, "parameters": {"samples": samples, "binary_data_output": True}}).encode()
    return header + b"".join(chunks), {"Inference-Header-Content-Length": str(len(header))}


def check_v1(answer: httpx.Response, rows: int) -> str:
    """'' when the /v1 answer is 200 with ``rows`` predictions, else what is wrong; counts the decisions."""
    if answer.status_code != 200:
        return f"status {answer.status_code}: {answer.text[:200]}"
    predictions = answer.json()["predictions"]
    if len(predictions) != rows:
        return f"{len(predictions)} predictions for {rows} rows"
    rejected = Counter(p["decision"] for p in predictions)["reject"]
    return f"{rejected} rows rejected" if rejected else ""


def check_v2_binary(answer: httpx.Response, rows: int) -> str:
    """'' when the /v2 answer is 200, binary (header, octet-stream) and its outputs' sizes add up, else why."""
    if answer.status_code != 200:
        return f"status {answer.status_code}: {answer.text[:200]}"
    if "Inference-Header-Content-Length" not in answer.headers:
        return f"no Inference-Header-Content-Length (Content-Type {answer.headers.get('content-type')})"
    length = int(answer.headers["Inference-Header-Content-Length"])
    outputs = json.loads(answer.content[:length])["outputs"]
    sizes = [o.get("parameters", {}).get("binary_data_size") for o in outputs]
    if None in sizes or sum(sizes) != len(answer.content) - length:
        return f"binary sizes {sizes} against {len(answer.content) - length} bytes"
    probabilities = next(o for o in outputs if o["name"] == "probabilities")
    return "" if probabilities["shape"][0] == rows else f"probabilities shape {probabilities['shape']}"


def timed_post(client: httpx.Client, url: str, body: bytes, headers: dict[str, str]) -> tuple[float, httpx.Response]:
    """Seconds from sending a prebuilt body to having read the whole answer (decoding it is not counted)."""
    start = time.perf_counter()
    answer = client.post(url, content=body, headers=headers)
    answer.read()
    return time.perf_counter() - start, answer


# ---------------------------------------------------------------------------------------------------- engine


class EngineTimer:
    """The served model's backend loaded in this process (as the server loads it): one call of
    ``backend.compute`` (the engine and the score summary) and of ``backend.engine.execute`` (the Monte Carlo
    pass alone) on the typical input repeated ``rows`` times, bank sampler, as the server's auto picks here."""

    def __init__(self, folder: Path) -> None:
        import torch

        from app.bnn.spec import Sampler
        from app.serve.backend_torch import TorchBackend

        self.torch, self.sampler = torch, Sampler.BANK
        self.backend = TorchBackend.load(folder, torch.device("cpu"), None, 0)
        self.has_execute = hasattr(self.backend.engine, "execute")

    def inputs(self, rows: int, samples: int) -> tuple[np.ndarray, Any]:
        x = np.repeat(self.backend.manifest.preprocessing.typical_input(), rows, axis=0)
        return x, self.backend.plan(self.sampler, rows, samples, None, None)

    def compute(self, x: np.ndarray, plan: Any) -> float:
        start = time.perf_counter()
        self.backend.compute([(x, plan)], 0)
        return time.perf_counter() - start

    def execute(self, x: np.ndarray, plan: Any) -> float:
        tensor = self.torch.from_numpy(x)
        start = time.perf_counter()
        with self.torch.no_grad():
            self.backend.engine.execute(tensor, plan)
        return time.perf_counter() - start
