"""Where a request's time goes in the real server: timing stamps on every stage of the request path (issue 16).

Usage: python bench/serve_profile.py [--requests 1000] [--bulk-requests 30] [--max-seconds 240]
(writes bench/results/profile.md and profile.json). The parent starts a child process that wraps the functions
on the request path with timers, then builds the app and runs uvicorn as `sbnn serve` does (flchain-mortality
only, loopback, gRPC off). A timer counts *running* time exclusive of the timed functions it calls: an async
function's steps are timed one by one (a per-thread stack), so a coroutine's waits count nowhere. Queueing
(submit -> the compute thread starts) and the thread hand-off (compute ends -> the awaiting coroutine resumes)
are wall intervals; requests are sequential, so one pass at a time. "other" is the server's time (first byte
received -> the request's task ends) minus all of these: the event loop, unwrapped code and idle waits.
SIGUSR1 makes the child write its stamps (and reset them). Client and server share this machine's cores.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import functools
import importlib
import importlib.metadata
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._profile_child import GAPS, HANDOFF, MODEL, PREDICT, QUEUE, ROWS, SAMPLES, TARGETS, child, wrap  # noqa: E402
from bench._server import ROW, free_port, wait_ready  # noqa: E402


# -- the parent ------------------------------------------------------------------------------------------
def _pct(values: list[float]) -> dict[str, float]:
    cuts = statistics.quantiles(values, n=100, method="inclusive") if len(values) > 1 else values * 99
    return {"n": len(values), "p50_ms": round(statistics.median(values), 3), "p99_ms": round(cuts[98], 3)}


def _records(rows: int) -> list[dict[str, Any]]:
    return [ROW] if rows == 1 else [{**ROW, "age": 50 + i % 30, "kappa": 0.5 + i % 37 / 10} for i in range(rows)]


def _timed_us(fn: Callable[[], object], gap_s: float = 0.0, warm: bool = False) -> float:
    """One call's µs, after ``gap_s`` idle or (``warm``) right after an untimed call."""
    time.sleep(gap_s)
    if warm:
        fn()
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1e6


ENGINE_RUNS = {
    "engine_warm": "MonteCarloEngine.steps, right after another run",
    "engine_after_3ms": "MonteCarloEngine.steps, after 3 ms idle",
    "engine_worker_thread": "MonteCarloEngine.steps, on a worker thread after 3 ms idle (as the server runs it)",
    "with_summaries_warm": "TorchBackend.steps (engine + summaries), right after another run",
}


def engine_time() -> dict[str, Any]:
    """The same work outside the server (the bank plan, the server's bank): each of ENGINE_RUNS in turn, repeated,
    median and min."""
    import torch

    from app.bnn.engine import MonteCarloEngine
    from app.bnn.plan import run_to_end
    from app.bnn.spec import Sampler
    from app.checkpoint.io import load_checkpoint
    from app.serve.backend_torch import TorchBackend

    checkpoint = load_checkpoint(ROOT / "models" / MODEL, device="cpu")
    manifest = checkpoint.manifest
    engine = MonteCarloEngine(checkpoint.model, bank_size=manifest.default_samples)  # the server's bank
    backend = TorchBackend(manifest, engine, torch.device("cpu"))
    out: dict[str, Any] = {"bank_size": engine.bank_size, "torch_threads": torch.get_num_threads()}
    with ThreadPoolExecutor(1) as worker:
        for rows, repeats in ((1, 300), (ROWS, 20)):
            records = _records(rows)
            x = manifest.preprocessing.transform({name: [r[name] for r in records] for name in ROW})
            plan = engine.plan(Sampler.BANK, rows, SAMPLES)
            engine_run = functools.partial(lambda x, p: run_to_end(engine.steps(torch.from_numpy(x), p)), x, plan)
            backend_run = functools.partial(lambda x, p: run_to_end(backend.steps(x, p)), x, plan)
            runs = {  # one after another (interleaved, each thread's OpenMP team would spin beside the other's)
                "engine_warm": lambda f=engine_run: _timed_us(f, 0.0, warm=True),  # right after another run
                "engine_after_3ms": lambda f=engine_run: _timed_us(f, 0.003),
                "with_summaries_warm": lambda f=backend_run: _timed_us(f, 0.0, warm=True),
                "engine_worker_thread": lambda f=engine_run: worker.submit(_timed_us, f, 0.003).result(),
            }
            times = {name: [run() for _ in range(repeats + 1)][1:] for name, run in runs.items()}  # the first warms up
            out[str(rows)] = {
                f"{k}_{f.__name__}_us": round(f(v), 1) for k, v in times.items() for f in (statistics.median, min)
            }
    return out


def wrapper_overhead(calls: int = 100_000) -> dict[str, float]:
    """µs a timer adds per call: a wrapped no-op minus the bare one (best of 3), sync and async."""

    async def anoop() -> None:
        pass

    async def awaits(fn: Callable) -> float:
        start = time.perf_counter()
        for _ in range(calls):
            await fn()
        return time.perf_counter() - start

    def sync(fn: Callable) -> float:
        return min(timeit.repeat(fn, number=calls, repeat=3))

    plain = sync(wrap(type(None), "noop")) - sync(type(None))
    in_async = min(asyncio.run(awaits(wrap(anoop, "noop"))) - asyncio.run(awaits(anoop)) for _ in range(3))
    return {"sync_us": round(plain / calls * 1e6, 3), "async_us": round(in_async / calls * 1e6, 3)}


def fetch_stats(pid: int, path: Path) -> dict[str, Any]:
    time.sleep(0.3)  # the last request's task may end just after the client has its answer
    path.unlink(missing_ok=True)
    os.kill(pid, signal.SIGUSR1)
    deadline = time.monotonic() + 10
    while not path.exists():
        if time.monotonic() > deadline:
            raise RuntimeError("the child wrote no stats within 10 s")
        time.sleep(0.05)
    return json.loads(path.read_text())


def timed_requests(send: Callable[[], Any], count: int, deadline: float) -> list[float]:
    latencies = []
    for _ in range(count):
        if time.monotonic() > deadline:
            break
        start = time.perf_counter()
        response = send()
        latencies.append((time.perf_counter() - start) * 1000)
        if response.status_code != 200:
            raise RuntimeError(f"{response.status_code}: {response.text[:300]}")
    return latencies


def breakdown(stats: dict[str, Any], overhead: dict[str, float]) -> dict[str, Any]:
    """Mean µs per request per category and per group, in the request path's order, and their shares."""
    n, server = len(stats["server_s"]), statistics.fmean(stats["server_s"]) * 1e6
    order = [c for _, _, c in TARGETS for c in ([QUEUE, GAPS, HANDOFF] if c == QUEUE else [c])]
    categories = {c: stats["totals"].get(c, 0.0) * 1e6 / n for c in dict.fromkeys(order)}
    categories["other: event loop, unwrapped code, idle waits"] = server - sum(categories.values())
    groups: dict[str, float] = collections.defaultdict(float)
    for category, us in categories.items():
        groups[category.split(":")[0]] += us
    entries = {c: e / n for c, e in stats["entries"].items()}
    cost = sum(e * overhead["async_us" if stats["kinds"].get(c) == "async" else "sync_us"] for c, e in entries.items())

    def shares(values: dict[str, float]) -> dict[str, dict[str, float]]:
        return {k: {"us": round(v, 1), "share_pct": round(100 * v / server, 1)} for k, v in values.items()}

    return {
        "requests": n,
        "server_us": round(server, 1),
        "server_p50_us": round(statistics.median(stats["server_s"]) * 1e6, 1),
        "groups": shares(groups),
        "categories": shares(categories),
        "timed_entries_per_request": round(sum(entries.values()), 1),
        "timer_overhead_us_per_request": round(cost, 1),
        "entries_per_request": {c: round(e, 2) for c, e in entries.items()},
    }


IDLE = ("_worker (", "Condition.wait (", "Runner.run (", "select (", "poll (")  # waits, and uvloop's own C loop


def pyspy(pid: int, send: Callable[[], Any], seconds: int, deadline: float) -> dict[str, Any]:
    """py-spy's samples of the child (all threads, idle included) during 1-row requests: the top leaves."""
    exe = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if exe is None:
        return {"note": "py-spy not installed"}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "raw.txt"
        cmd = [exe, "record", "--format", "raw", "--idle", "-d", str(seconds), "--pid", str(pid), "-o", str(out)]
        spy = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            time.sleep(1.0)
            while spy.poll() is None and time.monotonic() < deadline:
                timed_requests(send, 20, deadline)
            err = spy.communicate(timeout=seconds + 30)[1]
        finally:
            if spy.poll() is None:
                spy.kill()
                spy.wait()
        if not out.exists():
            return {"note": f"py-spy failed: {err.strip()[-300:]}"}
        leaves: collections.Counter[str] = collections.Counter()
        for line in out.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            leaves[re.sub(r":\d+\)$", ")", stack.split(";")[-1])] += int(count)
    total = sum(leaves.values())
    busy = total - sum(c for f, c in leaves.items() if f.startswith(IDLE))
    top = [
        {
            "function": f,
            "share_pct": round(100 * c / total, 1),
            "busy_share_pct": None if f.startswith(IDLE) else round(100 * c / busy, 1),
        }
        for f, c in leaves.most_common(15)
    ]
    return {"seconds": seconds, "samples": total, "busy_samples": busy, "top": top}


def profile(args: argparse.Namespace, pid: int, base: str, stats: Path, deadline: float) -> dict[str, Any]:
    import httpx

    bodies = {"1": {"instances": _records(1)}, str(ROWS): {"instances": _records(ROWS), "samples": SAMPLES}}
    headers = {"content-type": "application/json"}
    out: dict[str, Any] = {}
    with httpx.Client(base_url=base, timeout=120) as client:
        live = functools.partial(client.get, "/v2/health/live")
        timed_requests(live, 50, deadline)
        out["floor_live"] = _pct(timed_requests(live, args.requests, deadline))
        for key, count, warm in (("1", args.requests, 100), (str(ROWS), args.bulk_requests, 2)):
            send = functools.partial(client.post, PREDICT, content=json.dumps(bodies[key]).encode(), headers=headers)
            timed_requests(send, warm, deadline)
            fetch_stats(pid, stats)  # the warm-up's stamps dropped
            latencies = timed_requests(send, max(count - warm, 2), deadline)
            out[key] = {"end_to_end": _pct(latencies), "stats": fetch_stats(pid, stats)}
        send = functools.partial(client.post, PREDICT, content=json.dumps(bodies["1"]).encode(), headers=headers)
        out["py_spy"] = pyspy(pid, send, min(15, max(2, int(deadline - time.monotonic()) - 5)), deadline)
    return out


def serve_and_profile(args: argparse.Namespace, deadline: float) -> dict[str, Any]:

    port = free_port()
    with tempfile.TemporaryDirectory() as tmp, open(Path(tmp) / "child.log", "w+") as log:
        stats, base = Path(tmp) / "stats.json", f"http://127.0.0.1:{port}"
        command = [sys.executable, __file__, "--child", "--port", str(port), "--stats", str(stats)]
        server = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=log)
        try:
            wait_ready(server, base, deadline, log)
            return profile(args, server.pid, base, stats, deadline)
        finally:
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()


def machine() -> dict[str, Any]:
    import torch

    def git(*cmd: str) -> str:
        return subprocess.run(["git", *cmd], capture_output=True, text=True, cwd=ROOT).stdout.strip()

    versions = {}
    for name in ("uvicorn", "fastapi", "starlette", "pydantic", "httptools", "uvloop", "orjson"):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    dirty = " (+ uncommitted changes under app/)" if git("status", "--porcelain", "app") else ""
    return {
        "cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
        "torch": torch.__version__, **versions, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "commit": git("rev-parse", "--short", "HEAD") + dirty,
    }  # fmt: skip


def write_markdown(result: dict[str, Any], path: Path) -> None:
    m, floor, engine, t = result["machine"], result["floor_live"], result["engine_alone"], result["timer_overhead"]
    lines = [
        "# Where a request's time goes (issue 16, step 1)",
        "",
        f"Command: `{result['command']}`. Machine: {m['cpus']} CPUs, {m['platform']}, Python {m['python']}, torch "
        f"{m['torch']}; uvicorn {m['uvicorn']} ({result['protocol']}), uvloop {m['uvloop']}, httptools "
        f"{m['httptools']}, fastapi {m['fastapi']}, starlette {m['starlette']}, pydantic {m['pydantic']}, orjson "
        f"{m['orjson']}. {m['date']}, commit {m['commit']}. Load average (1 min) before {m['load_before'][0]:.2f}, "
        f"after {m['load_after'][0]:.2f}: client, server and whatever else runs here share the cores.",
        "",
        "Each category is the running time of its functions, exclusive of the timed functions they call (an async "
        "function's steps are timed one by one, so its waits count nowhere); queueing and hand-off are wall "
        "intervals; server time is first byte received -> the request's task ends; other = server time minus every "
        "category. Sequential requests on one keep-alive connection (httpx). Timer overhead: "
        f"{t['sync_us']:.2f} µs per sync call, {t['async_us']:.2f} µs per async call (a wrapped no-op × 100,000 "
        "minus the bare one); it is inside the numbers. Targets not found: "
        + (", ".join(result["skipped_targets"]) or "none")
        + ".",
        "",
        f"HTTP floor, GET /v2/health/live: p50 {floor['p50_ms']:.2f} ms, p99 {floor['p99_ms']:.2f} ms "
        f"({floor['n']} requests).",
    ]
    for key, case in result["cases"].items():
        e2e, alone = case["end_to_end_ms"], engine[key]
        lines += [
            "",
            f"## {int(key):,} row{'s' if key != '1' else ''} × {SAMPLES} samples (bank)",
            "",
            f"End to end (client): p50 {e2e['p50_ms']:.2f} ms, p99 {e2e['p99_ms']:.2f} ms ({e2e['n']} requests). "
            f"Server time: mean {case['server_us'] / 1000:.2f} ms, p50 {case['server_p50_us'] / 1000:.2f} ms. "
            "End-to-end p50 / engine alone right after another run: "
            f"{case['end_to_end_over_engine']:.1f}×. {case['timed_entries_per_request']:.0f} timed calls "
            f"or steps per request: about {case['timer_overhead_us_per_request']:.0f} µs of timer overhead.",
        ]
        lines += ["", "| the same work alone, outside the server (ms) | median | min |", "|---|---:|---:|"]
        for name, label in ENGINE_RUNS.items():
            lines.append(
                f"| {label} | {alone[name + '_median_us'] / 1000:.3f} | {alone[name + '_min_us'] / 1000:.3f} |"
            )
        for key in ("groups", "categories"):
            lines += ["", f"| {key} | µs / request | share of server time |", "|---|---:|---:|"]
            lines += [f"| {k} | {v['us']:,.1f} | {v['share_pct']:.1f}% |" for k, v in case[key].items()]
    spy = result["py_spy"]
    lines += ["", "## py-spy cross-check (1-row requests, every thread, idle included)", ""]
    if "top" in spy:
        lines += [
            f"{spy['samples']} samples over {spy['seconds']} s, {spy['busy_samples']} of them not idle (leaves other "
            "than the thread pool's and uvloop's waits). The 15 most frequent leaf functions:",
            "",
            "| leaf function | share of samples | share of the non-idle |",
            "|---|---:|---:|",
        ]
        busy = [("idle" if r["busy_share_pct"] is None else f"{r['busy_share_pct']:.1f}%") for r in spy["top"]]
        lines += [f"| `{r['function']}` | {r['share_pct']:.1f}% | {b} |" for r, b in zip(spy["top"], busy, strict=True)]
    else:
        lines.append(spy["note"])
    path.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000, help="1-row predicts (the first 100 warm up)")
    parser.add_argument("--bulk-requests", type=int, default=30, help="1,024-row predicts (the first 2 warm up)")
    parser.add_argument("--max-seconds", type=float, default=240.0, help="bound on the whole run's load loops")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--stats", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.port, args.stats)
    load_before = os.getloadavg()
    overhead, engine = wrapper_overhead(), engine_time()
    deadline = time.monotonic() + args.max_seconds  # bounds the server's start and the load loops
    run = serve_and_profile(args, deadline)
    cases = {}
    for key in ("1", str(ROWS)):
        end_to_end = run[key]["end_to_end"]
        ratio = round(end_to_end["p50_ms"] * 1000 / engine[key]["engine_warm_median_us"], 1)
        cases[key] = {
            "end_to_end_ms": end_to_end,
            **breakdown(run[key]["stats"], overhead),
            "end_to_end_over_engine": ratio,
        }
    result = {
        "command": f"python bench/serve_profile.py --requests {args.requests} --bulk-requests {args.bulk_requests} "
        f"--max-seconds {args.max_seconds:g}",
        "machine": machine() | {"load_before": load_before, "load_after": os.getloadavg()},
        "protocol": run["1"]["stats"]["protocol"],
        "skipped_targets": run["1"]["stats"]["skipped"],
        "timer_overhead": overhead,
        "floor_live": run["floor_live"],
        "engine_alone": engine,
        "cases": cases,
        "py_spy": run["py_spy"],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "profile.json").write_text(json.dumps(result, indent=2) + "\n")
    write_markdown(result, args.out / "profile.md")


if __name__ == "__main__":
    main()
