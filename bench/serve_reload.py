"""Reloading a model while clients send requests (issue 15's target: 20 reloads beside 32 clients, 0 failed
requests, no answer from a half-loaded model: each answer's sha256 is the old or the new version's).

Usage: python bench/serve_reload.py [--reloads 20] [--clients 32] [--max-seconds 180]
(writes bench/results/reload.md and reload.json)
Builds a temporary repository holding flchain-mortality and ``--reloads`` further versions of it (each with its
own weights: every weight mean moved by about 0.01 or 0.02, alternating, so consecutive versions differ and
every version's sha256 is its own), and starts `sbnn serve` on a free loopback port. ``--clients`` asyncio
clients send one-row v1 predicts (the default sampler) for the whole run; after a quiet baseline a controller
swaps the folder on disk for the next version (a copy into a hidden staging folder, then renames) and calls
POST /v2/repository/models/{name}/load, then checks the index, then pauses.
Each answer is checked against the versions that can have been serving while it was in flight: the one whose
load had last completed when it was sent, up to the one whose load had started when it arrived.
Client and server share this machine's cores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.checkpoint.files import sha256_bytes  # noqa: E402
from app.checkpoint.io import load_checkpoint, weights_bytes  # noqa: E402
from bench._server import ROW, machine_facts, running_server  # noqa: E402

MODEL = "flchain-mortality"
PREDICT = f"/v1/models/{MODEL}/predict"
LOAD = f"/v2/repository/models/{MODEL}/load"
WARMUP_S = 1.0  # the clients' first second (connections opening) is left out of the baseline
MAX_REQUESTS = 500_000  # a bound on the answers kept, whatever the clients' pace


@dataclass(frozen=True)
class Version:
    version: str
    sha256: str
    folder: Path  # the prepared copy, outside the repository


@dataclass
class Answer:
    sent: float  # perf_counter seconds
    answered: float
    status: int | None  # None: a transport error
    sha256: str | None
    version: str | None
    lo: int  # index of the version whose load had completed when it was sent
    hi: int  # index of the version whose load had started when it arrived
    error: str = ""


@dataclass
class State:
    current: int = 0  # the last version whose /load has answered
    pending: int = 0  # the last version swapped onto disk (its /load may be under way)
    started: float = 0.0  # when the clients started
    first_reload: float = float("inf")
    last_reload_end: float = float("inf")
    windows: list[tuple[float, float]] = field(default_factory=list)  # each /load call's (start, end)


def write_version(source: Path, target: Path, version: str, shift: float) -> str:
    """A copy of the checkpoint at ``source`` as ``version`` with every weight mean moved by ``shift``."""
    shutil.copytree(source, target)
    manifest = json.loads((target / "manifest.json").read_text())
    manifest["version"] = version
    model = load_checkpoint(source).model
    for name, parameter in model.named_parameters():
        if name.endswith(".mu"):
            parameter.data += shift
    data = weights_bytes(model)
    (target / manifest["weights"]["file"]).write_bytes(data)
    manifest["weights"] |= {"sha256": sha256_bytes(data), "bytes": len(data)}
    manifest["onnx"] = None  # the exported graph holds the old weights
    (target / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest["weights"]["sha256"]


def prepare(work: Path, reloads: int) -> tuple[Path, list[Version]]:
    """The repository (the original version in place) and every version, prepared beside it."""
    source = ROOT / "models" / MODEL
    first = json.loads((source / "manifest.json").read_text())
    versions = [Version(first["version"], first["weights"]["sha256"], source)]
    base = int(first["version"]) if first["version"].isdigit() else 1
    for k in range(1, reloads + 1):
        folder = work / "versions" / str(k)
        shift = (0.01 if k % 2 else 0.02) + k * 1e-4  # alternating, and each version's weights its own
        sha = write_version(source, folder, str(base + k), shift)
        versions.append(Version(str(base + k), sha, folder))
    if len({v.sha256 for v in versions}) != len(versions):
        raise RuntimeError("two prepared versions share a sha256")
    root = work / "models"
    shutil.copytree(source, root / MODEL)
    return root, versions


def swap(root: Path, folder: Path, k: int) -> None:
    """Put ``folder`` in place of the model's folder: a hidden staging copy, then two renames (the server
    ignores folders whose name starts with a dot and reads the folder only when /load is called)."""
    staging, old = root / f".staging-{k}", root / f".old-{k}"
    shutil.copytree(folder, staging)
    os.rename(root / MODEL, old)
    os.rename(staging, root / MODEL)
    shutil.rmtree(old)


async def client_loop(base: str, state: State, answers: list[Answer], stop: asyncio.Event, deadline: float) -> None:
    body = {"instances": [ROW]}
    async with httpx.AsyncClient(base_url=base, timeout=30.0) as client:
        while not stop.is_set() and time.perf_counter() < deadline and len(answers) < MAX_REQUESTS:
            lo, sent = state.current, time.perf_counter()
            status, sha, version, error = None, None, None, ""
            try:
                response = await client.post(PREDICT, json=body)
                status = response.status_code
                if status == 200:
                    model = response.json()["model"]
                    sha, version = model["sha256"], model["version"]
                else:
                    error = response.text[:500]
            except (httpx.HTTPError, ValueError, KeyError) as exc:
                error = f"{type(exc).__name__}: {exc}"
            answers.append(Answer(sent, time.perf_counter(), status, sha, version, lo, state.pending, error))


async def controller(
    base: str, root: Path, versions: list[Version], state: State, args: argparse.Namespace, deadline: float
) -> list[dict[str, Any]]:
    """The reloads, one after another after a quiet baseline; each one's seconds and outcome."""
    loop = asyncio.get_running_loop()
    reloads: list[dict[str, Any]] = []
    await asyncio.sleep(WARMUP_S + args.baseline_seconds)
    async with httpx.AsyncClient(base_url=base, timeout=60.0) as admin:
        for k in range(1, len(versions)):
            if time.perf_counter() > deadline - 5:
                break
            await loop.run_in_executor(None, swap, root, versions[k].folder, k)
            state.pending = k
            started = time.perf_counter()
            state.first_reload = min(state.first_reload, started)
            response = await admin.post(LOAD)
            seconds = time.perf_counter() - started
            state.windows.append((started, started + seconds))
            served = response.json().get("versions") if response.status_code == 200 else None
            ok = response.status_code == 200 and served == [versions[k].version]
            if ok:
                state.current = k
            index = (await admin.get("/v2/repository/index")).json()
            listed = [e for e in index if e["name"] == MODEL]
            ok = ok and [(e["version"], e["state"]) for e in listed] == [(versions[k].version, "READY")]
            reloads.append(
                {
                    "version": versions[k].version,
                    "status": response.status_code,
                    "served": served,
                    "index": listed,
                    "ok": ok,
                    "seconds": round(seconds, 3),
                    "error": "" if response.status_code == 200 else response.text[:500],
                }
            )
            state.last_reload_end = time.perf_counter()
            await asyncio.sleep(args.pause)
    return reloads


async def run(base: str, root: Path, versions: list[Version], args: argparse.Namespace) -> dict[str, Any]:
    state, answers, stop = State(), [], asyncio.Event()
    start = state.started = time.perf_counter()
    deadline = start + args.max_seconds
    clients = [asyncio.create_task(client_loop(base, state, answers, stop, deadline)) for _ in range(args.clients)]
    try:
        reloads = await asyncio.wait_for(controller(base, root, versions, state, args, deadline), args.max_seconds)
        await asyncio.sleep(args.pause)  # answers after the last reload
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*clients, return_exceptions=True), 60)
    return {"answers": answers, "reloads": reloads, "state": state, "seconds": time.perf_counter() - start}


def latency(answers: list[Answer]) -> dict[str, Any]:
    ms = sorted((a.answered - a.sent) * 1000 for a in answers if a.status == 200)
    if not ms:
        return {"requests": 0, "p50_ms": None, "p99_ms": None, "max_ms": None}
    pick = lambda q: round(ms[min(len(ms) - 1, int(q * len(ms)))], 1)  # noqa: E731
    return {"requests": len(ms), "p50_ms": pick(0.5), "p99_ms": pick(0.99), "max_ms": round(ms[-1], 1)}


def check(outcome: dict[str, Any], versions: list[Version]) -> dict[str, Any]:
    """Failures, answers from outside the versions that can have been serving, and old vs new across swaps."""
    answers: list[Answer] = outcome["answers"]
    state: State = outcome["state"]
    every = {v.sha256 for v in versions}
    by_sha = {v.sha256: i for i, v in enumerate(versions)}
    failed = [a for a in answers if a.status != 200]
    unknown = [a for a in answers if a.status == 200 and a.sha256 not in every]
    outside = [a for a in answers if a.status == 200 and a.sha256 in every and not a.lo <= by_sha[a.sha256] <= a.hi]
    mismatched = [
        a for a in answers if a.status == 200 and a.sha256 in every and versions[by_sha[a.sha256]].version != a.version
    ]
    spanning = [a for a in answers if a.status == 200 and a.lo < a.hi and a.sha256 in every]
    windows = state.windows
    baseline = [a for a in answers if a.sent >= state.started + WARMUP_S and a.answered < state.first_reload]
    during = [a for a in answers if a.sent >= state.first_reload and a.answered <= state.last_reload_end]
    in_load = [a for a in during if any(a.sent < end and a.answered > start for start, end in windows)]
    first = min(answers, key=lambda a: a.sent).sent if answers else 0.0
    return {
        "requests": len(answers),
        "failed": len(failed),
        "failed_statuses": sorted({str(a.status) for a in failed}),
        "failed_examples": [_example(a, first) for a in failed[:10]],
        "unknown_sha256": len(unknown),
        "outside_interval": len(outside),
        "unexpected_sha256": len(unknown) + len(outside),
        "unexpected_examples": [_example(a, first) for a in (unknown + outside)[:10]],
        "version_sha_mismatch": len(mismatched),
        "across_swap": {
            "answers": len(spanning),
            "old": sum(by_sha[a.sha256] == a.lo for a in spanning),
            "new": sum(by_sha[a.sha256] == a.hi for a in spanning),
        },
        "per_version": {v.version: sum(a.sha256 == v.sha256 for a in answers) for v in versions},
        "latency": {
            "baseline": latency(baseline),
            "during_reloads": latency(during),
            "overlapping_a_load_call": latency(in_load),
        },
    }


def _example(a: Answer, first: float) -> dict[str, Any]:
    return {**asdict(a), "sent": round(a.sent - first, 3), "answered": round(a.answered - first, 3)}


def server_log(pid: int) -> list[str]:
    """The server's log lines so far (its stderr, a temporary file that /proc still reaches)."""
    try:
        return Path(f"/proc/{pid}/fd/2").read_text(errors="replace").splitlines()
    except OSError as exc:
        return [f"(log not readable: {exc})"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reloads", type=int, default=20)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--pause", type=float, default=0.5, help="Seconds between one reload's end and the next.")
    parser.add_argument("--baseline-seconds", type=float, default=4.0, help="Quiet load measured first.")
    parser.add_argument("--max-seconds", type=float, default=180.0, help="Cap on the load phase.")
    parser.add_argument("--log-level", default="warning", help="The server's (info adds a line per request).")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results", help="Folder for the results.")
    args = parser.parse_args()
    load_average = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="sbnn-reload-"))
    try:
        root, versions = prepare(work, args.reloads)
        with running_server(models=str(root), device="cpu", log_level=args.log_level) as server:
            outcome = asyncio.run(run(server.base, root, versions, args))
            log = server_log(server.pid)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results = write(args, versions, outcome, outcome["reloads"], log, load_average)
    print(report(results))


def write(
    args: argparse.Namespace,
    versions: list[Version],
    outcome: dict[str, Any],
    reloads: list[dict[str, Any]],
    log: list[str],
    load_average: tuple[float, float, float],
) -> dict[str, Any]:
    checked = check(outcome, versions)
    seconds = [r["seconds"] for r in reloads]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "app"], cwd=ROOT, capture_output=True, text=True)
    command = f"python bench/serve_reload.py --reloads {args.reloads} --clients {args.clients} "
    command += f"--max-seconds {args.max_seconds:g}"
    results = {
        "command": command,
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "run_seconds": round(outcome["seconds"], 1),
        **checked,
        "reloads": {
            "done": len(reloads),
            "ok": sum(r["ok"] for r in reloads),
            "median_s": round(statistics.median(seconds), 3) if seconds else None,
            "max_s": max(seconds) if seconds else None,
            "each": reloads,
        },
        "versions": [{"version": v.version, "sha256": v.sha256} for v in versions],
        "server_log_lines": len(log),
        "server_log_warnings": [line for line in log if not line.startswith("INFO")][-40:],
        "server_log_loads": [line for line in log if f"model {MODEL} " in line][-60:],  # at --log-level info
        "machine": machine_facts(load_average),
        "commit": commit.stdout.strip() + (" (app/ modified)" if dirty.stdout.strip() else ""),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "reload.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "reload.md").write_text(report(results))
    return results


def report(r: dict[str, Any]) -> str:
    rl, lat, m = r["reloads"], r["latency"], r["machine"]
    load = ", ".join(map(str, m["load_average_at_start"])) + "; at end " + ", ".join(map(str, m["load_average_at_end"]))
    met = r["failed"] == 0 and r["unexpected_sha256"] == 0 and rl["ok"] == rl["done"] == r["settings"]["reloads"]
    lines = [
        "# Reloading a model while clients send requests",
        "",
        f"Command: `{r['command']}` ({r['date']}; commit {r['commit']}; {m['cpus']} cpus, {m['platform']}, "
        f"Python {m['python']}, torch {m['torch']}; load average at start {load}; "
        "client and server on the same cores; server on cpu).",
        "",
        f"- Target: {r['settings']['reloads']} reloads beside {r['settings']['clients']} clients, 0 failed requests, "
        f"every answer from the old or the new version: **{'met' if met else 'missed'}**.",
        f"- Requests: {r['requests']} in {r['run_seconds']} s; failed (non-200 or transport error): **{r['failed']}**"
        + (f" ({', '.join(r['failed_statuses'])})" if r["failed"] else "")
        + ".",
        f"- Answers with an unexpected sha256: **{r['unexpected_sha256']}** ({r['unknown_sha256']} not any "
        f"version's, {r['outside_interval']} from a version not serving while the request was in flight); "
        f"version and sha256 disagreeing: {r['version_sha_mismatch']}.",
        f"- Answers in flight across a swap: {r['across_swap']['answers']} — {r['across_swap']['old']} from the old "
        f"version, {r['across_swap']['new']} from the new.",
        f"- Reloads: {rl['done']} done, {rl['ok']} answered 200 with the new version serving and listed READY; "
        f"/load seconds median {rl['median_s']}, max {rl['max_s']}.",
        "",
        "| phase | requests | p50 (ms) | p99 (ms) | max (ms) |",
        "|---|---|---|---|---|",
    ]
    names = {
        "baseline": f"quiet baseline ({r['settings']['baseline_seconds']:g} s)",
        "during_reloads": "first reload to last",
        "overlapping_a_load_call": "in flight during a /load call",
    }
    for key, name in names.items():
        x = lat[key]
        lines.append(f"| {name} | {x['requests']} | {x['p50_ms']} | {x['p99_ms']} | {x['max_ms']} |")
    lines += ["", "| reload | version | status | /load s | ok |", "|---|---|---|---|---|"]
    for i, e in enumerate(rl["each"], 1):
        lines.append(f"| {i} | {e['version']} | {e['status']} | {e['seconds']} | {'yes' if e['ok'] else 'no'} |")
    if r["failed_examples"] or r["unexpected_examples"]:
        lines += ["", "## Examples (times in s from the first request)", "", "```"]
        lines += [json.dumps(e) for e in r["failed_examples"] + r["unexpected_examples"]]
        lines += ["```"]
    lines += [
        "",
        f"Server log (--log-level {r['settings']['log_level']}): {r['server_log_lines']} lines, "
        f"{len(r['server_log_warnings'])} of them warnings or errors.",
    ]
    if r["server_log_warnings"]:
        lines += ["", "## Server log (warnings and errors, last 40)", "", "```", *r["server_log_warnings"], "```"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
