"""Issue 13's targets: what the wire format costs, over the bundled model.

Usage: python bench/protocols.py [--repeats 30] [--calls 300]

1. The protocol layer of 1,024 rows through /v2, in-process: request decode (``v2_binary.read_request`` and
   the request's ``decode`` into columns and options, as the route runs them) and response encode
   (``v2_outputs.encode``: the outputs written and the body serialised), JSON against the binary tensor data extension
   (every input binary, ``binary_data_output``). Median per call over --repeats runs; target: binary ≥ 3×
   faster. The same 1,024 rows end to end through a real `sbnn serve` (Monte Carlo pass included), for scale.
2. gRPC against a real `sbnn serve`: 1-row ModelInfer p50 and ServerLive p50, interleaved in one run over
   --calls calls each (target: within 1 ms), with the REST /v2 1-row p50 beside them.

Writes bench/results/protocols.md and bench/results/protocols.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._server import ROW, free_port, running_server  # noqa: E402

MODEL = "flchain-mortality"
ROWS = 1024
HEADER = "Inference-Header-Content-Length"
TARGETS = {"binary_speedup_min": 3.0, "grpc_gap_ms_max": 1.0}


def rows(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """n records around the training cohort (ages 50–69), varied so no two are alike."""
    rng = np.random.default_rng(seed)
    return [
        {
            **ROW,
            "age": int(rng.integers(50, 70)),
            "sex": str(rng.choice(["F", "M"])),
            "kappa": round(float(rng.uniform(0.8, 2.0)), 3),
            "lambda": round(float(rng.uniform(1.0, 2.2)), 3),
            "creatinine": round(float(rng.uniform(0.7, 1.4)), 2),
        }
        for _ in range(n)
    ]


def json_body(records: list[dict[str, Any]], parameters: dict[str, Any]) -> bytes:
    inputs = [
        {
            "name": name,
            "shape": [len(records)],
            "datatype": "BYTES" if name == "sex" else "FP64",
            "data": [r[name] for r in records],
        }
        for name in records[0]
    ]
    return json.dumps({"inputs": inputs, "parameters": parameters}).encode()


def binary_body(records: list[dict[str, Any]], parameters: dict[str, Any]) -> tuple[bytes, str]:
    """Every input as binary data, every output asked as binary -> (body, Inference-Header-Content-Length)."""
    inputs, chunks = [], []
    for name in records[0]:
        values = [r[name] for r in records]
        if name == "sex":
            chunk = b"".join(struct.pack("<I", len(v)) + v.encode() for v in values)
        else:
            chunk = np.asarray(values, dtype="<f8").tobytes()
        chunks.append(chunk)
        datatype = "BYTES" if name == "sex" else "FP64"
        inputs.append(
            {
                "name": name,
                "shape": [len(records)],
                "datatype": datatype,
                "parameters": {"binary_data_size": len(chunk)},
            }
        )
    header = json.dumps({"inputs": inputs, "parameters": {**parameters, "binary_data_output": True}}).encode()
    return header + b"".join(chunks), str(len(header))


def per_call_ms(work: Callable[[], Any], repeats: int, inner: int = 5) -> float:
    """Median over ``repeats`` runs of ``inner`` calls, per call, in ms."""
    work()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(inner):
            work()
        times.append((time.perf_counter() - started) / inner)
    return 1000 * statistics.median(times)


def protocol_layer(repeats: int) -> dict[str, Any]:
    from app.serve.api import v2, v2_binary, v2_outputs
    from app.serve.app import create_app
    from app.serve.settings import Settings

    app = create_app(Settings(models=ROOT / "models", device="cpu", max_rows=ROWS, grpc_port=0))
    dataplane = app.state.dataplane
    dataplane.repository.load_all()
    features = dataplane.model(MODEL).manifest.features
    records = rows(ROWS)
    parameters = {"samples": 64, "seed": 1, "sampler": "fresh"}
    plain = json_body(records, parameters)
    binary, length = binary_body(records, parameters)

    def decode(body: bytes, header: str | None) -> Any:
        request = v2_binary.read_request(body, header)
        v2.decode(MODEL, request).decode(features)
        return request

    json_request, binary_request = decode(plain, None), decode(binary, length)

    async def infer() -> Any:
        try:
            return await dataplane.infer(v2.decode(MODEL, json_request))
        finally:
            await dataplane.engine.close()

    result = asyncio.run(infer())
    json_response = v2_outputs.encode(result, json_request)
    binary_response = v2_outputs.encode(result, binary_request)
    assert HEADER in binary_response.headers and HEADER not in json_response.headers
    out = {
        "rows": ROWS,
        "request_bytes": {"json": len(plain), "binary": len(binary)},
        "response_bytes": {"json": len(json_response.body), "binary": len(binary_response.body)},
        "decode_ms": {
            "json": per_call_ms(lambda: decode(plain, None), repeats),
            "binary": per_call_ms(lambda: decode(binary, length), repeats),
        },
        "encode_ms": {
            "json": per_call_ms(lambda: v2_outputs.encode(result, json_request).body, repeats),
            "binary": per_call_ms(lambda: v2_outputs.encode(result, binary_request).body, repeats),
        },
    }
    out["total_ms"] = {k: out["decode_ms"][k] + out["encode_ms"][k] for k in ("json", "binary")}
    out["speedup"] = out["total_ms"]["json"] / out["total_ms"]["binary"]
    return out


def percentile_ms(times: list[float], q: float) -> float:
    return 1000 * float(np.percentile(times, q))


def served(calls: int) -> dict[str, Any]:
    import grpc

    from app.serve.grpc import open_inference_grpc_pb2 as pb
    from app.serve.grpc import open_inference_grpc_pb2_grpc as pb_grpc

    records = rows(ROWS)
    parameters = {"samples": 64, "seed": 1, "sampler": "fresh"}
    plain = json_body(records, parameters)
    binary, length = binary_body(records, parameters)
    one = json_body([dict(ROW)], {})
    request = pb.ModelInferRequest(model_name=MODEL)
    for name, value in ROW.items():
        tensor = request.inputs.add(name=name, shape=[1], datatype="BYTES" if name == "sex" else "FP64")
        if name == "sex":
            tensor.contents.bytes_contents.append(str(value).encode())
        else:
            tensor.contents.fp64_contents.append(float(value))
    bulk_calls = max(10, calls // 10)
    with running_server(device="cpu", max_rows=str(ROWS), grpc_port=str(free_port())) as server:
        assert server.grpc is not None
        with httpx.Client(base_url=server.base, timeout=60) as http, grpc.insecure_channel(server.grpc) as channel:
            url = f"/v2/models/{MODEL}/infer"
            bulk: dict[str, list[float]] = {"json": [], "binary": []}
            for _ in range(bulk_calls):
                for kind, body, headers in (("json", plain, {}), ("binary", binary, {HEADER: length})):
                    started = time.perf_counter()
                    response = http.post(url, content=body, headers=headers)
                    bulk[kind].append(time.perf_counter() - started)
                    assert response.status_code == 200, response.text
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            timed: dict[str, list[float]] = {"grpc_live": [], "grpc_infer": [], "rest_infer": []}
            for _ in range(20):  # warm both paths
                stub.ServerLive(pb.ServerLiveRequest())
                stub.ModelInfer(request)
                http.post(url, content=one)
            before = infer_seconds(http)
            deadline = time.monotonic() + 300
            for _ in range(calls):
                for kind, call in (
                    ("grpc_live", lambda: stub.ServerLive(pb.ServerLiveRequest())),
                    ("grpc_infer", lambda: stub.ModelInfer(request)),
                    ("rest_infer", lambda: http.post(url, content=one)),
                ):
                    started = time.perf_counter()
                    call()
                    timed[kind].append(time.perf_counter() - started)
                if time.monotonic() > deadline:
                    break
            after = infer_seconds(http)
    out: dict[str, Any] = {
        "bulk_p50_ms": {k: percentile_ms(v, 50) for k, v in bulk.items()},
        "bulk_calls": bulk_calls,
        "calls": len(timed["grpc_live"]),
        **{f"{k}_p50_ms": percentile_ms(v, 50) for k, v in timed.items()},
        **{f"{k}_p99_ms": percentile_ms(v, 99) for k, v in timed.items()},
    }
    out["grpc_gap_ms"] = out["grpc_infer_p50_ms"] - out["grpc_live_p50_ms"]
    out["grpc_infer_mean_ms"] = 1000 * statistics.mean(timed["grpc_infer"])
    out["grpc_live_mean_ms"] = 1000 * statistics.mean(timed["grpc_live"])
    out["grpc_infer_server_mean_ms"] = 1000 * (after[0] - before[0]) / (after[1] - before[1])
    return out


def infer_seconds(http: httpx.Client) -> tuple[float, float]:
    """(sum, count) of the server's own ModelInfer durations (sbnn_request_duration_seconds): from the call's
    arrival in the servicer to its answer, the data plane and /v2's decode and encode included."""
    from prometheus_client.parser import text_string_to_metric_families

    found = {}
    for family in text_string_to_metric_families(http.get("/metrics").text):
        for sample in family.samples:
            route = sample.labels.get("route") == "/inference.GRPCInferenceService/ModelInfer"
            if route and sample.labels.get("status") == "OK" and sample.name.endswith(("_sum", "_count")):
                found[sample.name.rsplit("_", 1)[1]] = sample.value
    return found["sum"], found["count"]


def render(layer: dict[str, Any], wire: dict[str, Any], command: str) -> str:
    speedup_ok = layer["speedup"] >= TARGETS["binary_speedup_min"]
    gap_ok = wire["grpc_gap_ms"] <= TARGETS["grpc_gap_ms_max"]
    d, e, t = layer["decode_ms"], layer["encode_ms"], layer["total_ms"]
    lines = [
        "# Protocols: JSON against binary tensors, gRPC against its own no-op",
        "",
        f"`{command}` on {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"torch threads as the server sets them; the bundled model ({MODEL}).",
        "",
        f"## 1. The /v2 protocol layer, {layer['rows']:,} rows (in-process, median per call)",
        "",
        "| | request bytes | decode (ms) | response bytes | encode (ms) | decode + encode (ms) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for kind in ("json", "binary"):
        lines.append(
            f"| {kind} | {layer['request_bytes'][kind]:,} | {d[kind]:.3f} | {layer['response_bytes'][kind]:,} | "
            f"{e[kind]:.3f} | {t[kind]:.3f} |"
        )
    lines += [
        "",
        f"Binary is **{layer['speedup']:.1f}×** faster than JSON (target ≥ {TARGETS['binary_speedup_min']:.0f}×: "
        f"{'met' if speedup_ok else 'MISSED'}). End to end through `sbnn serve` (S = 64, fresh sampler, "
        f"p50 of {wire['bulk_calls']}): JSON {wire['bulk_p50_ms']['json']:.1f} ms, binary "
        f"{wire['bulk_p50_ms']['binary']:.1f} ms.",
        "",
        f"## 2. gRPC 1-row predict against ServerLive ({wire['calls']} calls each, interleaved)",
        "",
        "| call | p50 (ms) | p99 (ms) |",
        "|---|---:|---:|",
        f"| gRPC ServerLive | {wire['grpc_live_p50_ms']:.2f} | {wire['grpc_live_p99_ms']:.2f} |",
        f"| gRPC ModelInfer, 1 row, the model's defaults | {wire['grpc_infer_p50_ms']:.2f} | "
        f"{wire['grpc_infer_p99_ms']:.2f} |",
        f"| REST /v2 infer, 1 row, the model's defaults | {wire['rest_infer_p50_ms']:.2f} | "
        f"{wire['rest_infer_p99_ms']:.2f} |",
        "",
        f"gRPC predict p50 − ServerLive p50 = **{wire['grpc_gap_ms']:.2f} ms** (target ≤ "
        f"{TARGETS['grpc_gap_ms_max']:.0f} ms: {'met' if gap_ok else 'MISSED'}). Where it goes: the server's own "
        f"ModelInfer time (`sbnn_request_duration_seconds`, from the call reaching the servicer to its answer: "
        f"/v2's decode and encode and the data plane, with its batching wait of up to 2 ms, the S = 512 Monte "
        f"Carlo pass, the gate, metrics and drift) averaged {wire['grpc_infer_server_mean_ms']:.2f} ms over the "
        f"timed calls, of a client-side mean of {wire['grpc_infer_mean_ms']:.2f} ms; gRPC's transport and "
        f"(de)serialisation are the other {wire['grpc_infer_mean_ms'] - wire['grpc_infer_server_mean_ms']:.2f} ms "
        f"(ServerLive's client-side mean: {wire['grpc_live_mean_ms']:.2f} ms). The gap is the data plane's, which "
        "REST pays too.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--calls", type=int, default=300)
    args = parser.parse_args()
    command = "python bench/protocols.py" + "".join(
        f" --{k} {v}" for k, v in vars(args).items() if v != parser.get_default(k)
    )
    layer = protocol_layer(args.repeats)
    print(json.dumps(layer, indent=2))
    wire = served(args.calls)
    print(json.dumps(wire, indent=2))
    results = ROOT / "bench" / "results"
    (results / "protocols.json").write_text(json.dumps({"layer": layer, "served": wire, "targets": TARGETS}, indent=2))
    (results / "protocols.md").write_text(render(layer, wire, command))
    print(render(layer, wire, command))


if __name__ == "__main__":
    main()
