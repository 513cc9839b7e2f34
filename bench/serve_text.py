"""A text model through the server: one text and a batch of texts per request at c = 1, on the torch and onnx
backends, beside the live floor (issue 18's target: a 1-row text predict under 30 ms p50 on 2 cores).

Copies the text checkpoint (default: the bundled ``models/rotten-tomatoes-sentiment``) into a temporary
repository, exports its bank there (`sbnn export-onnx`), starts `sbnn serve` on it twice (SBNN_BACKEND=torch and
=onnx) and runs hey round by round, interleaved: a 1-text body (sampler: the bank, the default), a 32-text body,
and GET /v2/health/live (the floor: what any request pays). The backends' own ``compute`` of the tokenised 1-text
request is timed in this process too, and the tokenizer alone.

    python bench/serve_text.py [--model models/rotten-tomatoes-sentiment] [--rounds 5] [--requests 200]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import _load_parts as parts  # noqa: E402
from bench._server import machine_facts, running_server  # noqa: E402

TEXT = "a warm , funny and often moving film about growing up , with two fine performances at its centre"
BATCH = [
    TEXT,
    "the plot is dull and the acting is worse",
    "an ambitious , messy , sometimes brilliant drama about a family falling apart over one summer",
    "not a single laugh in ninety minutes",
] * 8
BODIES = {"1 text": {"instances": [{"text": TEXT}]}, "32 texts": {"instances": [{"text": t} for t in BATCH]}}
BACKENDS = ("torch", "onnx")
TARGET_MS = 30.0


def exported_repository(model: Path, into: Path) -> Path:
    from app.checkpoint.io import load_checkpoint
    from app.checkpoint.onnx_export import export_onnx

    folder = into / model.name
    shutil.copytree(model, folder, ignore=shutil.ignore_patterns("*.png", "card.md", "metrics.json"))
    export_onnx(load_checkpoint(folder), seed=0)
    return into


def engine_times(folder: Path, repeats: int) -> dict[str, dict[str, float]]:
    """Each backend's ``compute`` of the tokenised 1-text request (the bank plan), and the tokenizer alone, in
    alternating blocks of 20 calls: ms."""
    import torch

    from app.bnn.spec import Sampler
    from app.checkpoint.files import read_manifest, read_tokenizer
    from app.serve.backend import TextInputs
    from app.serve.backend_onnx import OnnxBackend
    from app.serve.backend_torch import TorchBackend

    encoder = read_tokenizer(folder, read_manifest(folder))
    encoded = encoder.encode([TEXT])
    inputs = TextInputs(encoded.ids, encoded.lengths)
    backends = {"torch": TorchBackend.load(folder, torch.device("cpu"), None, 0), "onnx": OnnxBackend.load(folder)}
    plans = {name: b.plan(Sampler.AUTO, 1, b.manifest.default_samples, None, None) for name, b in backends.items()}
    calls = {
        **{name: (lambda b=b, p=plans[name]: b.compute([(inputs, p)], 0)) for name, b in backends.items()},
        "tokenizer": lambda: encoder.encode([TEXT]),
    }
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(max(1, repeats // 20)):
        for name, call in calls.items():
            time.sleep(0.1)
            for _ in range(20):
                start = time.perf_counter()
                call()
                times[name].append(1e3 * (time.perf_counter() - start))
    return {name: {"p50_ms": statistics.median(t), "min_ms": min(t)} for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "rotten-tomatoes-sentiment")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=200, help="hey requests per body, server and round")
    parser.add_argument("--engine-repeats", type=int, default=200)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    if shutil.which("hey") is None:
        sys.exit("hey is not installed: apt-get install hey")
    load_before = os.getloadavg()
    name = args.model.name
    predict = f"/v1/models/{name}/predict"
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {b: {k: [] for k in [*BODIES, "live"]} for b in BACKENDS}
    answers: dict[str, dict[str, Any]] = {b: {} for b in BACKENDS}
    with tempfile.TemporaryDirectory() as tmp:
        repository = exported_repository(args.model, Path(tmp) / "models")
        bodies = {}
        for body_name, body in BODIES.items():
            bodies[body_name] = Path(tmp) / f"{len(bodies)}.json"
            bodies[body_name].write_text(json.dumps(body))
        with (
            running_server(models=str(repository), backend="torch", timeout=300) as on_torch,
            running_server(models=str(repository), backend="onnx", timeout=300) as on_onnx,
        ):
            servers = {"torch": on_torch.base, "onnx": on_onnx.base}
            for backend, base in servers.items():
                for body_name, body in BODIES.items():
                    answer = httpx.post(f"{base}{predict}", json=body, timeout=60)
                    answer.raise_for_status()
                    reply = answer.json()
                    answers[backend][body_name] = {"sampler": reply["sampler"], "samples": reply["samples"]}
                    parts.hey(f"{base}{predict}", 50, 1, bodies[body_name], timeout_s=300)  # warm-up
            for _ in range(args.rounds):
                for backend, base in servers.items():
                    runs[backend]["live"].append(parts.hey(f"{base}/v2/health/live", args.requests, 1, None, 120))
                    for body_name in BODIES:
                        run = parts.hey(f"{base}{predict}", args.requests, 1, bodies[body_name], timeout_s=600)
                        runs[backend][body_name].append(run)
        engine = engine_times(repository / name, args.engine_repeats)
    summary = {
        backend: {body_name: parts.over_rounds(rounds) for body_name, rounds in by_body.items()}
        for backend, by_body in runs.items()
    }
    one = summary["torch"]["1 text"]["p50_ms"]
    result = {
        "command": "python bench/serve_text.py " + " ".join(sys.argv[1:]),
        "machine": {**machine_facts(load_before), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())},
        "model": name,
        "answers": answers,
        "summary": summary,
        "rounds": runs,
        "engine": engine,
        "target": {"p50_ms": one, "limit_ms": TARGET_MS, "met": one < TARGET_MS},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "serve-text.json").write_text(json.dumps(result, indent=2) + "\n")
    text = render(result, args)
    (args.out / "serve-text.md").write_text(text)
    print(text)


def render(result: dict[str, Any], args: argparse.Namespace) -> str:
    m, s, target, e = result["machine"], result["summary"], result["target"], result["engine"]
    lines = [
        "# A text model through the server, c = 1",
        "",
        f"Command: `{result['command'].strip()}`. Model: `{result['model']}`. Machine: {m['cpus']} CPUs, "
        f"{m['platform']}, Python {m['python']}, torch {m['torch']}; {m['date']}. Load average before "
        f"{m['load_average_at_start']}, after {m['load_average_at_end']}.",
        "",
        f"Both servers on one repository (the model and its export), hey at c = 1, {args.rounds} rounds of "
        f"{args.requests} requests per body and server, interleaved; figures are the medians over the rounds.",
        "",
        "| body | backend | sampler, S | p50 ms | p99 ms | mean ms |",
        "|---|---|---|--:|--:|--:|",
    ]
    for body_name in [*BODIES, "live"]:
        for backend in BACKENDS:
            row = s[backend][body_name]
            answer = result["answers"][backend].get(body_name)
            how = f"{answer['sampler']}, {answer['samples']}" if answer else "–"
            label = "GET /v2/health/live (floor)" if body_name == "live" else body_name
            lines.append(
                f"| {label} | {backend} | {how} | {row['p50_ms']:.1f} | {row['p99_ms']:.1f} | {row['mean_ms']:.2f} |"
            )
    lines += [
        "",
        f"Every request answered 200: {all(v['ok'] == v['sent'] for b in s.values() for v in b.values())}.",
        "",
        f"The backends alone (`compute` of the tokenised 1-text request, {args.engine_repeats} calls each): torch "
        f"p50 {e['torch']['p50_ms']:.2f} ms (min {e['torch']['min_ms']:.2f}), onnx p50 {e['onnx']['p50_ms']:.2f} ms "
        f"(min {e['onnx']['min_ms']:.2f}); the tokenizer alone p50 {e['tokenizer']['p50_ms']:.3f} ms.",
        "",
        f"Target, a 1-text predict under {target['limit_ms']:.0f} ms p50 (torch backend): {target['p50_ms']:.1f} ms "
        f"— {'met' if target['met'] else '**missed**'}.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
