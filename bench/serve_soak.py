"""Soak and overhead of the security layer: API keys and the audit trail on the real server (issue 14).

Usage: python bench/serve_soak.py [--seconds 300] [--overhead-requests 2000] [--overhead-warmup 200]
                                  [--clients-1row 56] [--clients-256row 8] [--rss-interval 5] [--trial]

Soak: `sbnn serve` with a keys file (SBNN_API_KEYS_FILE, keys made by `sbnn keys new`) and the audit trail in
SQLite (SBNN_AUDIT_DIR, a temporary folder); two `hey` processes at once for ``--seconds`` (1-row and 256-row
/v1 predicts, each with its own key, so the audit rows can be matched per client group); the server's RSS
sampled from /proc; after the run the audit rows are counted through app.audit.store and compared with the
requests hey saw answered.
Overhead: two servers at once, one plain (no keys, no audit) and one with keys and audit; sequential 1-row
/v1 predicts, one keep-alive httpx.Client per server, alternating request by request (the order flips every
pair); client-side p50 / p90 / mean and their differences, with paired bootstrap intervals, and the servers'
own request-duration histograms from /metrics.
Writes bench/results/security.md and bench/results/security.json. Needs hey (Debian package `hey`) and
sbnn[audit]. Client and server share this machine's cores; ``--trial`` marks a short, noisy run as such.
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
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._server import ROW, running_server  # noqa: E402

START_TIMEOUT = 180.0  # a start with keys and the audit trail took 20-60 s on the shared 2-core machine
# Settings the plain server must not inherit from the caller's environment.
SECURITY_ENV = ("SBNN_API_KEYS", "SBNN_API_KEYS_FILE", "SBNN_AUDIT_DIR", "SBNN_AUDIT_URL")

from bench._soak_parts import (  # noqa: E402
    KEY_1ROW,
    KEY_256ROW,
    KEY_METRICS,
    MODEL,
    RssSampler,
    audit_counts,
    by_key,
    duration_histogram,
    hey_cmd,
    histogram_delta,
    histogram_quantile,
    make_keys,
    minus,
    parse_hey,
    rows_256,
    rss_summary,
    settled_counts,
)

PREDICT = f"/v1/models/{MODEL}/predict"


def soak(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    keys_file, tokens = make_keys(work)
    audit_dir = work / "audit"
    audit_url = f"sqlite:///{(audit_dir / 'audit.db').resolve()}"
    one, many = work / "one.json", work / "many.json"
    one.write_text(json.dumps({"instances": [ROW]}))
    many.write_text(json.dumps({"instances": rows_256()}))
    settings = {"models": str(ROOT / "models"), "api_keys_file": str(keys_file), "audit_dir": str(audit_dir)}
    metrics_auth = {"Authorization": f"Bearer {tokens[KEY_METRICS]}"}
    t0 = time.monotonic()
    with running_server(timeout=START_TIMEOUT, **settings) as server:
        start_s = time.monotonic() - t0
        url = server.base + PREDICT
        # The refusals work (the soak would otherwise prove nothing about auth): no key 401, metrics key 403.
        refusals = {
            "no key": httpx.post(url, json={"instances": [ROW]}, timeout=30).status_code,
            "metrics-scope key": httpx.post(
                url, json={"instances": [ROW]}, headers=metrics_auth, timeout=30
            ).status_code,
        }
        for token, body, n, c in ((tokens[KEY_1ROW], one, 200, 8), (tokens[KEY_256ROW], many, 32, 4)):  # warm-up
            subprocess.run(hey_cmd(url, token, body, c, n=n), capture_output=True, check=True, timeout=300)
        before, _ = settled_counts(audit_url)
        sampler = RssSampler(server.pid, args.rss_interval, max_samples=int(args.seconds / args.rss_interval) + 50)
        sampler.start()
        started = time.monotonic()
        procs = {
            KEY_1ROW: subprocess.Popen(
                hey_cmd(url, tokens[KEY_1ROW], one, args.clients_1row, seconds=args.seconds),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            ),
            KEY_256ROW: subprocess.Popen(
                hey_cmd(url, tokens[KEY_256ROW], many, args.clients_256row, seconds=args.seconds),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            ),
        }
        outputs = {}
        try:
            for key, proc in procs.items():
                outputs[key] = proc.communicate(timeout=args.seconds + 180)[0]
        finally:
            for proc in procs.values():
                if proc.poll() is None:
                    proc.kill()
                    proc.wait(timeout=10)
        elapsed = time.monotonic() - started
        sampler.stop.set()
        sampler.join(timeout=10)
        after_live, waited = settled_counts(audit_url)
        metrics_text = httpx.get(f"{server.base}/metrics", headers=metrics_auth, timeout=30).text
        server_alive = httpx.get(f"{server.base}/v2/health/live", timeout=10).status_code == 200
    after_stop = audit_counts(audit_url)  # the shutdown writes the queue out
    hey_results = {key: parse_hey(out) for key, out in outputs.items()}
    for key, out in outputs.items():
        if "Status code distribution" not in out:
            raise RuntimeError(f"hey ({key}) gave no status counts:\n{out[-2000:]}")
    live, final = minus(after_live, before), minus(after_stop, before)
    audit_per_key = {key: sum(n for (k, _, _), n in final.items() if k == key) for key in procs}
    audit_names = sorted({m for m in re.findall(r"^# TYPE (\S+)", metrics_text, re.M) if "audit" in m})
    return {
        "settings": {
            "clients": {KEY_1ROW: args.clients_1row, KEY_256ROW: args.clients_256row},
            "seconds": args.seconds,
            "rss_interval_s": args.rss_interval,
            "server": {"SBNN_API_KEYS_FILE": "<temp>/keys.json (3 keys)", "SBNN_AUDIT_DIR": "<temp>/audit (SQLite)"},
        },
        "refusals": refusals,
        "server_start_s": start_s,
        "elapsed_s": elapsed,
        "hey": hey_results,
        "rss": rss_summary(sampler.samples),
        "audit": {
            "rows_before_soak": sum(before.values()),
            "soak_rows_while_live": sum(live.values()),
            "soak_rows_after_stop": sum(final.values()),
            "settle_wait_s": waited,
            "per_key_after_stop": audit_per_key,
            "breakdown_after_stop": by_key(final),
        },
        "audit_metrics": audit_names,
        "server_alive_after_soak": server_alive,
    }


def bootstrap(a: np.ndarray, b: np.ndarray, stat: Any, reps: int = 2000) -> tuple[float, float]:
    """95% paired percentile interval of stat(b) - stat(a), resampling pairs."""
    rng = np.random.default_rng(0)
    idx = rng.integers(0, len(a), size=(reps, len(a)))
    diffs = stat(b[idx], axis=1) - stat(a[idx], axis=1)
    return float(np.percentile(diffs, 2.5)), float(np.percentile(diffs, 97.5))


def overhead(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    keys_file, tokens = make_keys(work / "overhead")
    secured = {"api_keys_file": str(keys_file), "audit_dir": str(work / "overhead" / "audit")}
    body = {"instances": [ROW]}
    with (
        running_server(timeout=START_TIMEOUT, models=str(ROOT / "models")) as plain,
        running_server(timeout=START_TIMEOUT, models=str(ROOT / "models"), **secured) as guarded,
        httpx.Client(base_url=plain.base, timeout=30) as ca,
        httpx.Client(base_url=guarded.base, timeout=30, headers={"Authorization": f"Bearer {tokens[KEY_1ROW]}"}) as cb,
    ):
        metrics_auth = {"Authorization": f"Bearer {tokens[KEY_METRICS]}"}
        times: dict[str, list[float]] = {"plain": [], "auth+audit": []}
        bad: Counter[str] = Counter()
        hist_before: dict[str, Any] = {}
        clients = {"plain": ca, "auth+audit": cb}
        for i in range(args.overhead_warmup + args.overhead_requests):
            if i == args.overhead_warmup:
                hist_before = {
                    "plain": duration_histogram(ca.get("/metrics").text),
                    "auth+audit": duration_histogram(cb.get("/metrics", headers=metrics_auth).text),
                }
                times = {"plain": [], "auth+audit": []}
            order = ("plain", "auth+audit") if i % 2 == 0 else ("auth+audit", "plain")
            for name in order:
                t0 = time.perf_counter()
                r = clients[name].post(PREDICT, json=body)
                times[name].append(time.perf_counter() - t0)
                if r.status_code != 200:
                    bad[f"{name} {r.status_code}"] += 1
        hist_after = {
            "plain": duration_histogram(ca.get("/metrics").text),
            "auth+audit": duration_histogram(cb.get("/metrics", headers=metrics_auth).text),
        }
    a, b = (np.array(times[k]) * 1000 for k in ("plain", "auth+audit"))
    q50, q90 = (
        (lambda x, axis=None: np.percentile(x, 50, axis=axis)),
        (lambda x, axis=None: np.percentile(x, 90, axis=axis)),
    )
    server = {}
    for name in ("plain", "auth+audit"):
        h = histogram_delta(hist_after[name], hist_before[name])
        server[name] = {
            "count": h["count"],
            "mean_ms": 1000 * h["sum"] / h["count"] if h["count"] else float("nan"),
            "p50_ms_interpolated": 1000 * histogram_quantile(h, 0.5),
            "buckets_s": {f"{le:g}": n for le, n in sorted(h["buckets"].items())},
        }
    return {
        "settings": {"requests_per_server": args.overhead_requests, "warmup_per_server": args.overhead_warmup},
        "errors": dict(bad),
        "client": {
            name: {
                "p50_ms": float(np.percentile(x, 50)),
                "p90_ms": float(np.percentile(x, 90)),
                "mean_ms": float(x.mean()),
            }
            for name, x in (("plain", a), ("auth+audit", b))
        },
        "diff_ms": {
            "p50": float(np.percentile(b, 50) - np.percentile(a, 50)),
            "p50_ci95": bootstrap(a, b, q50),
            "p90": float(np.percentile(b, 90) - np.percentile(a, 90)),
            "p90_ci95": bootstrap(a, b, q90),
            "mean": float(b.mean() - a.mean()),
            "mean_ci95": bootstrap(a, b, np.mean),
            "median_of_paired_differences": float(np.median(b - a)),
        },
        "server": server,
        "server_mean_diff_ms": server["auth+audit"]["mean_ms"] - server["plain"]["mean_ms"],
    }


# ---------------------------------------------------------------------------------------------------- report


def commit() -> str:
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True).stdout
    return head.strip() + (" (dirty)" if dirty.strip() else "")


def verdicts(s: dict[str, Any], o: dict[str, Any], flat: float) -> dict[str, dict[str, Any]]:
    answered = sum(h["answered"] for h in s["hey"].values())
    errors = sum(h["non_200"] + h["error_lines"] for h in s["hey"].values())
    slope = s["rss"]["second_half_slope_mb_per_min"]
    audit = s["audit"]["soak_rows_after_stop"]
    per_key_ok = all(s["audit"]["per_key_after_stop"][k] == h["answered"] for k, h in s["hey"].items())
    # Flat means not growing (a leak): RSS falling back after a burst is no failure.
    soak_met = errors == 0 and slope <= flat and audit == answered and per_key_ok
    p50 = o["diff_ms"]["p50"]
    return {
        "soak": {
            "met": soak_met,
            "text": f"{errors} errors in {answered} answered requests; RSS second-half slope {slope:+.2f} MB/min "
            f"(flat: no growth, slope <= +{flat:g}); audit rows {audit} vs requests {answered}"
            + ("" if per_key_ok else " (per-key counts differ)"),
        },
        "overhead": {
            "met": p50 <= 0.3,
            "text": f"p50 overhead {p50:+.3f} ms (95% CI {o['diff_ms']['p50_ci95'][0]:+.3f} to "
            f"{o['diff_ms']['p50_ci95'][1]:+.3f}); target <= 0.3 ms",
        },
    }


def markdown(result: dict[str, Any]) -> str:
    s, o, v = result["soak"], result["overhead"], result["verdicts"]
    rss = s["rss"]
    lines = [
        "# Security layer: soak and overhead (issue 14)",
        "",
    ]
    if result["trial"]:
        lines += [
            "**Trial run** (short duration, to check the benchmark end to end) on a shared 2-core machine with other "
            "work going on: the figures are noisy and are not the 5-minute result the target asks for.",
            "",
        ]
    lines += [
        f"Command: `{result['command']}`. Commit: {result['commit']}. Machine: {result['machine']}.",
        "",
        "## Verdicts",
        "",
        f"- 64 clients, mixed 1-row and 256-row, auth + audit on, {s['settings']['seconds']:g} s "
        f"(target: 5 min): **{'met' if v['soak']['met'] else 'missed'}**: {v['soak']['text']}.",
        f"- p50 overhead of auth + audit <= 0.3 ms: **{'met' if v['overhead']['met'] else 'missed'}**: "
        f"{v['overhead']['text']}.",
        "",
        "## Soak",
        "",
        f"`sbnn serve` with a keys file (3 keys from `sbnn keys new`) and SBNN_AUDIT_DIR (SQLite, WAL); two hey "
        f"processes at once for {s['settings']['seconds']:g} s (measured {s['elapsed_s']:.1f} s), each with its own "
        f"key (the server took {s['server_start_s']:.1f} s to get ready). Before the soak: a request without a "
        f"key answered {s['refusals']['no key']}, one with the metrics "
        f"key {s['refusals']['metrics-scope key']}.",
        "",
        "| clients | body | answered | 200 | other statuses | hey error lines | requests/s | p50 ms | p90 ms | "
        "p99 ms | audit rows |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key, body in ((KEY_1ROW, "1 row"), (KEY_256ROW, "256 rows")):
        h = s["hey"][key]
        others = ", ".join(f"{c}: {n}" for c, n in h["statuses"].items() if c != "200") or "none"
        lines.append(
            f"| {s['settings']['clients'][key]} | {body} | {h['answered']} | {h['ok']} | {others} | "
            f"{h['error_lines']} | {h['rps']:.1f} | {h['p50_ms']:.1f} | {h['p90_ms']:.1f} | {h['p99_ms']:.1f} | "
            f"{s['audit']['per_key_after_stop'][key]} |"
        )
    kinds = [k for h in s["hey"].values() for k in h["error_kinds"]]
    if kinds:
        lines += ["", "hey's error lines: " + "; ".join(kinds)]
    a = s["audit"]
    lines += [
        "",
        f"Server RSS ({rss['samples']} samples, every {s['settings']['rss_interval_s']:g} s, after a warm-up): "
        f"start {rss['start_mb']:.1f} MB, max {rss['max_mb']:.1f} MB, end {rss['end_mb']:.1f} MB; least-squares "
        f"slope over the second half {rss['second_half_slope_mb_per_min']:+.2f} MB/min. Criterion for flat: "
        f"no growth, second-half slope <= +{result['flat_mb_per_min']:g} MB/min (a falling RSS is no leak).",
        "",
        f"Audit rows written during the soak: {a['soak_rows_while_live']} once the count stopped changing "
        f"(waited {a['settle_wait_s']:.1f} s), {a['soak_rows_after_stop']} after the server stopped "
        f"({a['rows_before_soak']} rows from the warm-up and the refusal checks are not counted). By key, status and "
        f"rows: "
        + "; ".join(
            f"{k}: " + ", ".join(f"{d} = {n}" for d, n in ds.items()) for k, ds in a["breakdown_after_stop"].items()
        )
        + ".",
        "",
        "Audit metrics in /metrics: "
        + (", ".join(s["audit_metrics"]) if s["audit_metrics"] else "none (there is no audit-drop counter to check)")
        + ".",
        "",
        "## Overhead",
        "",
        f"Two servers at once on loopback, one plain (no keys, no audit) and one with keys and the audit trail; "
        f"{o['settings']['requests_per_server']} sequential 1-row /v1 predicts per server after "
        f"{o['settings']['warmup_per_server']} warm-up, alternating server by server (the order flips every pair), "
        f"one keep-alive httpx.Client each. Non-200 answers: {o['errors'] or 'none'}.",
        "",
        "| client-side, ms | plain | auth + audit | difference | 95% paired bootstrap |",
        "|---|---|---|---|---|",
    ]
    c, d = o["client"], o["diff_ms"]
    for stat in ("p50", "p90", "mean"):
        lines.append(
            f"| {stat} | {c['plain'][stat + '_ms']:.3f} | {c['auth+audit'][stat + '_ms']:.3f} | {d[stat]:+.3f} | "
            f"{d[stat + '_ci95'][0]:+.3f} to {d[stat + '_ci95'][1]:+.3f} |"
        )
    sp, sg = o["server"]["plain"], o["server"]["auth+audit"]
    lines += [
        "",
        f"Median of the paired differences: {d['median_of_paired_differences']:+.3f} ms.",
        "",
        f"Server side (sbnn_request_duration_seconds, status 200, measured requests only; it wraps the auth and "
        f"audit middleware): mean {sp['mean_ms']:.3f} ms plain vs {sg['mean_ms']:.3f} ms with auth + audit "
        f"(difference {o['server_mean_diff_ms']:+.3f} ms); p50 interpolated in the buckets "
        f"{sp['p50_ms_interpolated']:.2f} vs {sg['p50_ms_interpolated']:.2f} ms "
        "(buckets 1, 2.5, 5, 10 ms …: too coarse for a 0.3 ms difference).",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=300.0)
    parser.add_argument("--clients-1row", type=int, default=56)
    parser.add_argument("--clients-256row", type=int, default=8)
    parser.add_argument("--rss-interval", type=float, default=5.0)
    parser.add_argument("--flat-mb-per-min", type=float, default=1.0, help="Flat: RSS slope at most +this.")
    parser.add_argument("--overhead-requests", type=int, default=2000)
    parser.add_argument("--overhead-warmup", type=int, default=200)
    parser.add_argument("--trial", action="store_true", help="Mark the results as a short trial run.")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    if shutil.which("hey") is None:
        sys.exit("hey is not installed: apt-get install hey")
    for name in (n for n in SECURITY_ENV if n in os.environ):
        del os.environ[name]  # each server gets exactly the security settings given here
    if args.rss_interval * 6 > args.seconds:
        args.rss_interval = max(args.seconds / 20, 0.25)  # enough samples for a second-half slope
    with tempfile.TemporaryDirectory(prefix="sbnn-soak-") as tmp:
        work = Path(tmp)
        (work / "overhead").mkdir()
        soak_result = soak(args, work)
        overhead_result = overhead(args, work)
    import torch

    result = {
        "trial": args.trial,
        "command": "python bench/serve_soak.py " + " ".join(sys.argv[1:]),
        "commit": commit(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.platform()}, torch {torch.__version__}, "
        f"Python {platform.python_version()}",
        "flat_mb_per_min": args.flat_mb_per_min,
        "soak": soak_result,
        "overhead": overhead_result,
    }
    result["verdicts"] = verdicts(soak_result, overhead_result, args.flat_mb_per_min)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "security.json").write_text(json.dumps(result, indent=2) + "\n")
    text = markdown(result)
    (args.out / "security.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
