"""The parts of bench/serve_soak.py: API keys for the run, request bodies and `hey`, the server's RSS, audit
rows counted through app.audit, and the request-duration histogram read from /metrics."""

import re
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._server import ROW  # noqa: E402

MODEL = "flchain-mortality"
ROUTE = "/v1/models/{name}/predict"  # the route template in metrics and the audit trail
KEY_1ROW, KEY_256ROW, KEY_METRICS = "soak-1row", "soak-256row", "soak-metrics"


# ---------------------------------------------------------------------------------------------------- setup


def make_keys(folder: Path) -> tuple[Path, dict[str, str]]:
    """A keys file made by the CLI (as an operator would): two infer keys and a metrics key; their tokens."""
    path = folder / "keys.json"
    tokens = {}
    for key_id, scope in ((KEY_1ROW, "infer"), (KEY_256ROW, "infer"), (KEY_METRICS, "metrics")):
        out = subprocess.run(
            [sys.executable, "-m", "app.cli", "keys", "new", "--id", key_id, "--scope", scope, "--file", str(path)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        tokens[key_id] = out.stdout.strip().splitlines()[-1]
    return path, tokens


def rows_256() -> list[dict[str, Any]]:
    """256 plausible rows: ROW with age, kappa, lambda and creatinine varied (deterministic)."""
    return [
        {
            **ROW,
            "age": 50 + i % 30,
            "sex": "F" if i % 2 else "M",
            "kappa": round(0.8 + 0.01 * (i % 50), 3),
            "lambda": round(1.1 + 0.01 * (i % 40), 3),
            "creatinine": round(0.8 + 0.005 * (i % 60), 3),
        }
        for i in range(256)
    ]


# ---------------------------------------------------------------------------------------------------- hey


def hey_cmd(url: str, token: str, body: Path, clients: int, *, seconds: float | None = None, n: int = 0) -> list[str]:
    # -t 60: hey's default client timeout (20 s) could turn a slow answer into an error line of its own.
    how = ["-z", f"{seconds:g}s"] if seconds is not None else ["-n", str(n)]
    auth = ["-H", f"Authorization: Bearer {token}"]
    return [
        "hey",
        *how,
        "-c",
        str(clients),
        "-t",
        "60",
        *auth,
        "-m",
        "POST",
        "-T",
        "application/json",
        "-D",
        str(body),
        url,
    ]


def parse_hey(out: str) -> dict[str, Any]:
    """Statuses, error lines (hey's "Error distribution"), requests/s and latency percentiles (ms)."""
    statuses = {code: int(n) for code, n in re.findall(r"\[(\d{3})\]\s+(\d+) responses", out)}
    errors: list[tuple[int, str]] = []
    if "Error distribution:" in out:
        tail = out.split("Error distribution:", 1)[1]
        errors = [(int(n), text.strip()) for n, text in re.findall(r"^\s*\[(\d+)\]\s+(.*)$", tail, re.M)]
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    pct = {p: float(v) * 1000 for p, v in re.findall(r"\s(\d+)% in ([\d.]+) secs", out)}
    answered = sum(statuses.values())
    return {
        "statuses": statuses,
        "answered": answered,
        "ok": statuses.get("200", 0),
        "non_200": answered - statuses.get("200", 0),
        "error_lines": sum(n for n, _ in errors),
        "error_kinds": [f"[{n}] {text}" for n, text in errors][:10],
        "rps": float(rps.group(1)) if rps else float("nan"),
        "p50_ms": pct.get("50", float("nan")),
        "p90_ms": pct.get("90", float("nan")),
        "p99_ms": pct.get("99", float("nan")),
    }


# ---------------------------------------------------------------------------------------------------- RSS


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024  # kB -> MiB
    raise RuntimeError(f"no VmRSS for pid {pid}")


class RssSampler(threading.Thread):
    """Samples a process's RSS every ``interval`` seconds until stopped or ``max_samples`` are taken."""

    def __init__(self, pid: int, interval: float, max_samples: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval, self.max_samples = pid, interval, max_samples
        self.samples: list[tuple[float, float]] = []  # (seconds since start, MiB)
        self.stop = threading.Event()

    def run(self) -> None:
        start = time.monotonic()
        while not self.stop.is_set() and len(self.samples) < self.max_samples:
            try:
                self.samples.append((time.monotonic() - start, rss_mb(self.pid)))
            except (OSError, RuntimeError):
                return  # the process is gone
            self.stop.wait(self.interval)


def rss_summary(samples: list[tuple[float, float]]) -> dict[str, Any]:
    if not samples:
        raise RuntimeError("no RSS sample was taken (the server process was gone)")
    t = np.array([s[0] for s in samples])
    mb = np.array([s[1] for s in samples])
    half = t >= t[-1] / 2
    slope = float(np.polyfit(t[half] / 60, mb[half], 1)[0]) if half.sum() >= 3 else float("nan")
    return {
        "samples": len(samples),
        "start_mb": float(mb[0]),
        "max_mb": float(mb.max()),
        "end_mb": float(mb[-1]),
        "second_half_slope_mb_per_min": slope,
        "series": [[round(a, 1), round(b, 2)] for a, b in samples],
    }


# ---------------------------------------------------------------------------------------------------- audit


def audit_counts(url: str) -> Counter[tuple[str, str, int]]:
    """Audit rows per (key id, status, rows), read with the package's store (schema untouched)."""
    import sqlalchemy as sa

    from app.audit import schema
    from app.audit.store import AuditStore, create_engine

    table = schema.records
    with AuditStore(create_engine(url)) as store, store.engine.connect() as conn:
        statement = sa.select(table.c.key_id, table.c.status, table.c.rows, sa.func.count()).group_by(
            table.c.key_id, table.c.status, table.c.rows
        )
        return Counter({(k or "-", s, r): int(n) for k, s, r, n in conn.execute(statement)})


def settled_counts(url: str, timeout: float = 60.0, still: int = 3) -> tuple[Counter[tuple[str, str, int]], float]:
    """Poll until the total has not changed for ``still`` polls (0.5 s apart) or ``timeout``; counts and wait."""
    start = time.monotonic()
    last, same = None, 0
    while True:
        counts = audit_counts(url)
        total = sum(counts.values())
        same = same + 1 if total == last else 0
        last = total
        if same >= still or time.monotonic() - start > timeout:
            return counts, time.monotonic() - start
        time.sleep(0.5)


def by_key(counts: Counter[tuple[str, str, int]]) -> dict[str, dict[str, int]]:
    found: dict[str, dict[str, int]] = {}
    for (key, status, rows), n in sorted(counts.items()):
        found.setdefault(key, {})[f"status {status}, {rows} rows"] = n
    return found


def minus(a: Counter[tuple[str, str, int]], b: Counter[tuple[str, str, int]]) -> Counter[tuple[str, str, int]]:
    return Counter({k: a[k] - b.get(k, 0) for k in a if a[k] - b.get(k, 0)})


# ---------------------------------------------------------------------------------------------------- metrics


def metric_samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    found = []
    # Greedy labels: a route label holds "{name}".
    for labels, value in re.findall(rf"^{name}\{{(.*)\}} ([\d.e+-]+|NaN|\+Inf)$", text, re.M):
        found.append((dict(re.findall(r'(\w+)="([^"]*)"', labels)), float(value)))
    return found


def duration_histogram(text: str) -> dict[str, Any]:
    """The /v1 predict request-duration histogram (status 200): cumulative buckets, sum, count."""
    want = {"model": MODEL, "route": ROUTE, "status": "200"}

    def mine(labels: dict[str, str]) -> bool:
        return all(labels.get(k) == v for k, v in want.items())

    buckets = {
        float(lab["le"]): v for lab, v in metric_samples(text, "sbnn_request_duration_seconds_bucket") if mine(lab)
    }
    total = sum(v for lab, v in metric_samples(text, "sbnn_request_duration_seconds_sum") if mine(lab))
    count = sum(v for lab, v in metric_samples(text, "sbnn_request_duration_seconds_count") if mine(lab))
    return {"buckets": buckets, "sum": total, "count": count}


def histogram_delta(after: dict[str, Any], before: dict[str, Any]) -> dict[str, Any]:
    return {
        "buckets": {le: n - before["buckets"].get(le, 0.0) for le, n in after["buckets"].items()},
        "sum": after["sum"] - before["sum"],
        "count": after["count"] - before["count"],
    }


def histogram_quantile(hist: dict[str, Any], q: float) -> float:
    """Prometheus' histogram_quantile: linear inside the bucket that holds the q-th observation (seconds)."""
    edges = sorted(hist["buckets"])
    if not edges or hist["count"] <= 0:
        return float("nan")
    rank, lower, below = q * hist["count"], 0.0, 0.0
    for le in edges:
        n = hist["buckets"][le]
        if n >= rank:
            if le == float("inf"):
                return lower
            return lower + (le - lower) * (rank - below) / max(n - below, 1e-12)
        lower, below = le, n
    return lower


# ---------------------------------------------------------------------------------------------------- phases
