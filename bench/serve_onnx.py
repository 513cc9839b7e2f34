"""The onnx backend against the torch backend, one row at c = 1 (issue 16's target: seeded within 2x).

Exports a copy of the bundled model (`sbnn export-onnx`: bank, sampling and local graphs) into a temporary
repository, starts `sbnn serve` on it twice (SBNN_BACKEND=torch and =onnx) and runs hey, round by round and
interleaved, on three bodies per server: one row with a seed (sampler `auto`: `local` on both), the same with
`"sampler": "fresh"` (what a seeded request ran on onnx before the local graph), and one row without a seed
(the bank). The backends' own `compute` for the seeded row is timed in this process, in alternating blocks.

    python bench/serve_onnx.py [--rounds 5] [--requests 400]
"""

from __future__ import annotations

import argparse
import functools
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
from bench._server import ROW, machine_facts, running_server  # noqa: E402

MODEL = parts.MODEL
PREDICT = f"/v1/models/{MODEL}/predict"
BODIES = {
    "seeded (auto)": {"instances": [ROW], "seed": 7},
    "seeded, sampler fresh": {"instances": [ROW], "seed": 7, "sampler": "fresh"},
    "no seed (bank)": {"instances": [ROW]},
}
BACKENDS = ("torch", "onnx")


def exported_repository(into: Path) -> Path:
    from app.checkpoint.io import load_checkpoint
    from app.checkpoint.onnx_export import export_onnx

    folder = into / MODEL
    shutil.copytree(ROOT / "models" / MODEL, folder)
    export_onnx(load_checkpoint(folder), seed=0)
    return into


def engine_times(folder: Path, repeats: int, block: int = 20) -> dict[str, dict[str, float]]:
    """Each backend's ``compute`` for the seeded row (its ``auto`` plan), and the onnx backend's noise draw alone,
    in alternating blocks of ``block`` calls with 0.1 s between blocks (onnxruntime's threads spin for a while
    after a run, which slows a torch call right behind it in the same process): ms."""
    import torch

    from app.bnn.spec import Sampler
    from app.checkpoint.noise import NoiseStream
    from app.serve.backend_onnx import OnnxBackend
    from app.serve.backend_torch import TorchBackend

    backends = {"torch": TorchBackend.load(folder, torch.device("cpu"), None, 0), "onnx": OnnxBackend.load(folder)}
    x = backends["torch"].manifest.preprocessing.typical_input()
    plans = {name: b.plan(Sampler.AUTO, 1, b.manifest.default_samples, 7, None) for name, b in backends.items()}
    local = backends["onnx"].onnx.local
    assert local is not None  # the export wrote it
    calls = {
        **{name: functools.partial(b.compute, [(x, plans[name])], 0) for name, b in backends.items()},
        "onnx noise": lambda: NoiseStream(local.inputs, 7, rows=1).draw(plans["onnx"].samples),
    }
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(max(1, repeats // block)):
        for name, call in calls.items():
            time.sleep(0.1)
            for _ in range(block):
                start = time.perf_counter()
                call()
                times[name].append(1e3 * (time.perf_counter() - start))
    samplers = {**{name: plan.sampler.value for name, plan in plans.items()}, "onnx noise": "–"}
    return {
        name: {"sampler": samplers[name], "p50_ms": statistics.median(t), "min_ms": min(t)} for name, t in times.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=400, help="hey requests per body, server and round")
    parser.add_argument("--engine-repeats", type=int, default=200)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    if shutil.which("hey") is None:
        sys.exit("hey is not installed: apt-get install hey")
    load_before = os.getloadavg()
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {b: {k: [] for k in [*BODIES, "live"]} for b in BACKENDS}
    samplers: dict[str, dict[str, str]] = {b: {} for b in BACKENDS}
    with tempfile.TemporaryDirectory() as tmp:
        repository = exported_repository(Path(tmp) / "models")
        bodies = {}
        for name, body in BODIES.items():
            bodies[name] = Path(tmp) / f"{len(bodies)}.json"
            bodies[name].write_text(json.dumps(body))
        with (
            running_server(models=str(repository), backend="torch") as on_torch,
            running_server(models=str(repository), backend="onnx") as on_onnx,
        ):
            servers = {"torch": on_torch.base, "onnx": on_onnx.base}
            for backend, base in servers.items():
                for name, body in BODIES.items():
                    answer = httpx.post(f"{base}{PREDICT}", json=body, timeout=30)
                    answer.raise_for_status()
                    samplers[backend][name] = answer.json()["sampler"]
                    parts.hey(f"{base}{PREDICT}", 100, 1, bodies[name], timeout_s=120)  # warm-up
            for _ in range(args.rounds):
                for backend, base in servers.items():
                    runs[backend]["live"].append(parts.hey(f"{base}/v2/health/live", args.requests, 1, None, 120))
                    for name in BODIES:
                        run = parts.hey(f"{base}{PREDICT}", args.requests, 1, bodies[name], timeout_s=300)
                        runs[backend][name].append(run)
        engine = engine_times(repository / MODEL, args.engine_repeats)
    summary = {
        backend: {name: parts.over_rounds(rounds) for name, rounds in by_body.items()}
        for backend, by_body in runs.items()
    }
    seeded = "seeded (auto)"
    ratio = summary["onnx"][seeded]["mean_ms"] / summary["torch"][seeded]["mean_ms"]
    result = {
        "command": "python bench/serve_onnx.py " + " ".join(sys.argv[1:]),
        "machine": {**machine_facts(load_before), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())},
        "samplers": samplers,
        "summary": summary,
        "rounds": runs,
        "engine": engine,
        "target": {"seeded_mean_ratio": ratio, "met": ratio <= 2.0},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "serve-onnx.json").write_text(json.dumps(result, indent=2) + "\n")
    text = render(result, args)
    (args.out / "serve-onnx.md").write_text(text)
    print(text)


def render(result: dict[str, Any], args: argparse.Namespace) -> str:
    m, s, target = result["machine"], result["summary"], result["target"]
    lines = [
        "# The onnx backend against torch, one row at c = 1",
        "",
        f"Command: `{result['command'].strip()}`. Machine: {m['cpus']} CPUs, {m['platform']}, Python {m['python']}, "
        f"torch {m['torch']}; {m['date']}. Load average before {m['load_average_at_start']}, after "
        f"{m['load_average_at_end']}: the 2 cores are shared by client, both servers and whatever else runs.",
        "",
        f"Both servers on one repository (the bundled model and its export), hey at c = 1, {args.rounds} rounds of "
        f"{args.requests} requests per body and server, interleaved; figures are the medians over the rounds "
        "(hey's percentiles have 0.1 ms resolution, its mean is finer).",
        "",
        "| body | torch sampler | torch p50 ms | torch mean ms | onnx sampler | onnx p50 ms | onnx mean ms "
        "| onnx / torch (mean) |",
        "|---|---|--:|--:|---|--:|--:|--:|",
    ]
    for name in [*BODIES, "live"]:
        t, o = s["torch"][name], s["onnx"][name]
        ts, os_ = result["samplers"]["torch"].get(name, "–"), result["samplers"]["onnx"].get(name, "–")
        label = "GET /v2/health/live (floor)" if name == "live" else f"1 row, {name}"
        lines.append(
            f"| {label} | {ts} | {t['p50_ms']:.1f} | {t['mean_ms']:.2f} | {os_} | {o['p50_ms']:.1f} | "
            f"{o['mean_ms']:.2f} | {o['mean_ms'] / t['mean_ms']:.2f}× |"
        )
    e = result["engine"]
    lines += [
        "",
        f"Every request answered 200: {all(v['ok'] == v['sent'] for b in s.values() for v in b.values())}.",
        "",
        f"The backends alone (`compute` for the seeded row, {args.engine_repeats} calls each, in alternating "
        f"blocks of 20): torch "
        f"`{e['torch']['sampler']}` p50 {e['torch']['p50_ms']:.2f} ms (min {e['torch']['min_ms']:.2f}), onnx "
        f"`{e['onnx']['sampler']}` p50 {e['onnx']['p50_ms']:.2f} ms (min {e['onnx']['min_ms']:.2f}): "
        f"{e['onnx']['p50_ms'] / e['torch']['p50_ms']:.2f}×. Of the onnx backend's, numpy drawing the noise (282 "
        f"normals per row and sample for this model) alone: p50 {e['onnx noise']['p50_ms']:.2f} ms.",
        "",
        f"Target, the onnx backend's seeded 1-row predict within 2× the torch backend's: "
        f"{target['seeded_mean_ratio']:.2f}× (means) — {'met' if target['met'] else '**missed**'}.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
