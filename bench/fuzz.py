"""Issue 14's fuzzing target: generated requests against a real `sbnn serve`, 0 × 5xx.

Usage: python bench/fuzz.py [--cases 10000] [--seed 0] [--max-seconds 1800]

Every POST surface (/v1 predict, the KServe V1 ``:predict`` alias, /v2 infer as JSON and as the binary tensor
data extension) and the metadata GETs get hypothesis-generated cases of two kinds:

- mutated: a structurally valid request (the model's own features, rows and parameters) with up to three
  mutations anywhere in its JSON tree (a value replaced by a wrong type, a huge or negative number, NaN or
  Infinity, a very long string or one with a lone surrogate; a key deleted, renamed or added), serialised
  with surrogates as ``\\ud800`` escapes or as their raw (invalid UTF-8) bytes; binary bodies also get a lying
  ``Inference-Header-Content-Length`` or ``binary_data_size`` and cut or padded tensor bytes;
- raw: bytes that are not a well-formed request: invalid UTF-8, truncated JSON, deep nesting, duplicated keys,
  integers past Python's 4,300-digit limit, a BOM, UTF-16, random bytes, the wrong Content-Type, gzip and
  deflate bodies (valid, corrupt, cut, small bombs) and unknown Content-Encodings.

A case fails when the server answers >= 500 or no answer comes (the connection dies); the run fails on any
failure and on a traceback in the server's log. The case generator and the runner are used by
tests/serve/test_serve_fuzz.py at CI size against the test session's uvicorn.

Writes bench/results/fuzz.md and bench/results/fuzz.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import warnings
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import hypothesis
from hypothesis import HealthCheck, Phase, Verbosity, example, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st
from hypothesis.errors import HypothesisWarning

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._server import running_server  # noqa: E402
from bench.fuzz_cases import Case, Target, binary, discover, metadata, mutated  # noqa: E402
from bench.fuzz_raw import corpus, raw  # noqa: E402


def cases(target: Target) -> st.SearchStrategy[Case]:
    """Every kind of case, roughly in the proportions mutated 45 %, raw 25 %, binary 20 %, metadata 10 %."""
    return st.one_of(
        *[mutated(target)] * 9,
        *[raw(target)] * 5,
        *[binary(target)] * 4,
        *[metadata(target)] * 2,
    )


@dataclass
class FuzzReport:
    sent: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    surfaces: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    failures: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    def record(self, case: Case, status: str, detail: str | None = None) -> None:
        self.sent += 1
        self.statuses[status] += 1
        self.surfaces[case.surface][status] += 1
        if not status.isdigit() or int(status) >= 500:
            self.failures.append({"surface": case.surface, "status": status, "detail": detail, **case.reproducer()})


class _Stop(Exception):
    """Raised inside the hypothesis run when the count or time budget is spent."""


def send(client: httpx.Client, case: Case) -> tuple[str, str | None]:
    """(status, detail): the HTTP status, or "no answer" with the transport error."""
    try:
        headers = [(k.encode(), v.encode()) for k, v in case.headers.items()]  # UTF-8 on the wire, not ASCII only
        request = client.build_request(case.method, case.path, headers=headers, content=case.body)
        response = client.send(request)
    except httpx.TransportError as exc:
        return "no answer", f"{type(exc).__name__}: {exc}"
    return str(response.status_code), response.text[:500] if response.status_code >= 500 else None


def _examples(cases: list[Case]) -> Any:
    """hypothesis' ``@example`` for each case."""

    def decorate(test: Any) -> Any:
        for case in reversed(cases):
            test = example(case)(test)
        return test

    return decorate


def run(base: str, target: Target, count: int, seed: int, max_seconds: float) -> FuzzReport:
    """Send ``count`` generated cases (fewer if ``max_seconds`` run out) to the server at ``base``, one at a
    time, each recorded by surface and status. Hypothesis generates them (seeded, no database, no shrinking:
    a failure is recorded with its reproducer, not raised); a round that ends early is followed by another
    with the next seed until ``count`` are sent."""
    report = FuzzReport()
    started = time.monotonic()
    deadline = started + max_seconds
    with httpx.Client(base_url=base, timeout=60.0) as client, warnings.catch_warnings():
        warnings.simplefilter("ignore", HypothesisWarning)  # "overly large repr" of a case with a long body
        for round_seed in range(seed, seed + 100):
            if report.sent >= count or time.monotonic() > deadline:
                break

            @hypothesis_seed(round_seed)
            @_examples(corpus(target) if round_seed == seed else [])
            @settings(
                max_examples=count - report.sent,
                database=None,
                deadline=None,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck),
                verbosity=Verbosity.quiet,
            )
            @given(cases(target))
            def fuzz_round(case: Case) -> None:
                if report.sent >= count or time.monotonic() > deadline:
                    raise _Stop
                report.record(case, *send(client, case))

            try:
                fuzz_round()
            except _Stop:
                break
    report.seconds = time.monotonic() - started
    return report


def tracebacks(log: str) -> list[str]:
    """Each traceback in a server log: the line before it, its frames and its exception line."""
    lines, found, at = log.splitlines(), [], 0
    while at < len(lines):
        if not lines[at].startswith("Traceback"):
            at += 1
            continue
        end = at + 1
        while end < len(lines) and (lines[end].startswith((" ", "\t")) or not lines[end].strip()):
            end += 1
        found.append("\n".join(lines[max(0, at - 1) : end + 1]))
        at = end + 1
    return found


def _server_log(pid: int) -> str:
    # running_server writes the server's output to an unlinked temporary file; on Linux the live process's
    # stderr is readable through /proc while it runs (bench/_server.py does not hand the file out).
    return Path(f"/proc/{pid}/fd/2").read_text(errors="replace")


def _markdown(result: dict[str, Any], failures: list[dict[str, Any]]) -> str:
    """The report; ``failures`` all of them (fuzz.json keeps the first 40 whole)."""
    statuses = ", ".join(f"{s}: {n:,}" for s, n in sorted(result["statuses"].items()))
    lines = [
        "# Fuzzing the real server (issue 14)",
        "",
        f"`{result['command']}` at commit `{result['commit']}` ({result['platform']}), hypothesis "
        f"{result['hypothesis']}, seed {result['seed']}.",
        "",
        f"- **{result['cases']:,} cases** in {result['seconds']:.0f} s ({result['cases'] / result['seconds']:.0f}/s), "
        f"one at a time over loopback to `sbnn serve` (gRPC off; {result['limits']}).",
        f"- Statuses: {statuses}.",
        f"- **{result['server_errors']} × 5xx**, {result['no_answer']} × no answer, "
        f"{result['tracebacks']} traceback(s) in the server log; afterwards a valid request answered "
        f"{result['valid_after']}.",
        f"- Verdict: **{'pass' if result['passed'] else 'FAIL'}** (target: 0 × 5xx, the connection never dies).",
        "",
        "## Cases per surface and status",
        "",
        "| surface | cases | statuses |",
        "|---|---:|---|",
    ]
    for surface, counts in sorted(result["surfaces"].items()):
        shown = ", ".join(f"{s}: {n}" for s, n in sorted(counts.items()))
        lines.append(f"| {surface} | {sum(counts.values()):,} | {shown} |")
    lines += ["", "## Failures", ""]
    if not failures and not result["traceback_text"]:
        lines.append("None.")
    kinds = Counter((f["surface"], f["status"], (f["detail"] or "").splitlines()[0][:120]) for f in failures)
    examples = {}
    for failure in failures:
        examples.setdefault(
            (failure["surface"], failure["status"], (failure["detail"] or "").splitlines()[0][:120]), failure
        )
    for kind, n in kinds.most_common():
        failure = examples[kind]
        lines += [f"- {n} × {kind[0]}: {kind[1]} {kind[2]!r}; e.g. {failure['method']} `{failure['path'][:120]}`"]
        lines += [f"  headers {failure['headers']}, body ({failure['body_bytes']} B) `{failure['body_prefix'][:200]}`"]
    for text in dict.fromkeys(t.splitlines()[-1] for t in result["traceback_text"]):
        last = next(t for t in result["traceback_text"] if t.splitlines()[-1] == text)
        lines += ["", "```", *last.splitlines()[-14:], "```"]
    lines += [
        "",
        "Kinds of case (bench/fuzz.py): structurally valid requests with mutated values (wrong types, huge and "
        "negative numbers, NaN/Infinity literals, long strings, lone surrogates as escapes and as raw bytes, in "
        "keys, values, model names, input names, the /v2 id and parameters), binary tensor bodies with lying "
        "header lengths and sizes, raw bodies (invalid UTF-8, truncated, deeply nested, duplicated keys, "
        "integers past 4,300 digits, BOM, UTF-16, random bytes, wrong Content-Type, gzip/deflate valid, corrupt, "
        "cut and small bombs, unknown encodings) and metadata routes with odd names. Full reproducers (body in "
        "base64) of any failure are in fuzz.json.",
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-seconds", type=float, default=1800.0)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    limits = {"max_rows": 1024, "max_samples": 4096, "max_body_bytes": 4 * 1024 * 1024}  # the defaults, stated
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    with running_server(device="cpu", **{k: str(v) for k, v in limits.items()}) as server:
        target = discover(server.base, limits["max_rows"], limits["max_body_bytes"])
        print(f"fuzzing {server.base}: models {sorted(target.models)}, {args.cases} cases, seed {args.seed}")
        report = run(server.base, target, args.cases, args.seed, args.max_seconds)
        name = "flchain-mortality" if "flchain-mortality" in target.models else sorted(target.models)[0]
        row = {
            f["name"]: (f["categories"] or ["x"])[0] if f["kind"] == "categorical" else f["minimum"]
            for f in target.models[name]
        }
        valid_after = httpx.post(
            f"{server.base}/v1/models/{name}/predict", json={"instances": [row]}, timeout=60
        ).status_code
        found = tracebacks(_server_log(server.pid))
    server_errors = sum(n for s, n in report.statuses.items() if s.isdigit() and int(s) >= 500)
    result = {
        "command": "python " + " ".join([os.path.relpath(__file__, ROOT), *sys.argv[1:]]),
        "commit": commit.stdout.strip() or "unknown",
        "platform": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "hypothesis": hypothesis.__version__,
        "seed": args.seed,
        "limits": ", ".join(f"{k} {v}" for k, v in limits.items()),
        "models": sorted(target.models),
        "cases": report.sent,
        "seconds": round(report.seconds, 1),
        "statuses": dict(report.statuses),
        "surfaces": {s: dict(c) for s, c in report.surfaces.items()},
        "server_errors": server_errors,
        "no_answer": report.statuses.get("no answer", 0),
        "tracebacks": len(found),
        "traceback_text": list(dict.fromkeys(found))[:10],
        "valid_after": valid_after,
        "failure_count": len(report.failures),
        "failures": report.failures[:40],  # full reproducers of the first 40 (the Markdown groups them all)
    }
    result["passed"] = bool(not report.failures and not found and valid_after == 200 and report.sent >= args.cases)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "fuzz.json").write_text(json.dumps(result, indent=2, ensure_ascii=True) + "\n")
    (args.out / "fuzz.md").write_text(_markdown(result, report.failures))
    print(_markdown(result, report.failures))
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
