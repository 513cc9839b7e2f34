"""gRPC (inference.GRPCInferenceService and grpc.health.v1) on a real grpc.aio server, over a real channel.

The app serves REST (through an in-process ASGI client) and gRPC (on a free loopback port) from one data plane,
so every gRPC answer is compared with /v2's for the same request.
"""

from __future__ import annotations

import asyncio
import copy
import json
import math
import os
import signal
import struct
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio
import grpc
import httpx
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from app.serve.grpc import open_inference_grpc_pb2 as pb
from app.serve.grpc import open_inference_grpc_pb2_grpc as pb_grpc
from app.serve.settings import Settings

pytestmark = pytest.mark.anyio

REPO = Path(__file__).resolve().parents[2]
MODEL = "flchain-mortality"
INFER = f"/v2/models/{MODEL}/infer"
CONTENTS = {"FP64": "fp64_contents", "FP32": "fp32_contents", "INT64": "int64_contents", "INT32": "int_contents"}
CONTENTS |= {"INT8": "int_contents", "BYTES": "bytes_contents", "BOOL": "bool_contents"}
# The conftest's flchain record (its fixtures serve the tests; the bad-input cases are built at collection).
FLCHAIN_ROW: dict[str, Any] = {
    "age": 62,
    "sex": "F",
    "kappa": 1.2,
    "lambda": 1.5,
    "flc_grp": 5,
    "creatinine": 1.0,
    "mgus": 0,
}
TOO_MANY_ROWS = 65  # the test servers' max_rows is 64 (conftest LIMITS), their body limit 64 KiB


def v2_inputs(rows: list[dict[str, Any]], datatypes: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """Records -> one tensor of shape [N] per feature (FP64 numbers, BYTES for sex unless told)."""
    datatypes = datatypes or {}
    return [
        {
            "name": name,
            "shape": [len(rows)],
            "datatype": datatypes.get(name, "BYTES" if name == "sex" else "FP64"),
            "data": [row[name] for row in rows],
        }
        for name in rows[0]
    ]


@pytest.fixture(scope="module")
async def served(
    serve_settings: Settings, app_client: Callable[[Settings], Any], free_port: Callable[[], int]
) -> AsyncIterator[tuple[httpx.AsyncClient, grpc.aio.Channel]]:
    """An app with gRPC on: its ASGI client and a channel to its gRPC port (both once ready)."""
    port = free_port()
    async with app_client(serve_settings.model_copy(update={"grpc_port": port})) as client:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield client, channel


@pytest.fixture
def rest(served: tuple[httpx.AsyncClient, grpc.aio.Channel]) -> httpx.AsyncClient:
    return served[0]


@pytest.fixture
def stub(served: tuple[httpx.AsyncClient, grpc.aio.Channel]) -> pb_grpc.GRPCInferenceServiceStub:
    return pb_grpc.GRPCInferenceServiceStub(served[1])


def _parameter(target: pb.InferParameter, value: Any) -> None:
    if isinstance(value, bool):
        target.bool_param = value
    elif isinstance(value, int):
        target.int64_param = value
    elif isinstance(value, float):
        target.double_param = value
    else:
        target.string_param = value


def to_grpc(body: dict[str, Any], model: str = MODEL, raw: bool = False) -> pb.ModelInferRequest:
    """A /v2 JSON body as the same ModelInferRequest: typed contents, or raw_input_contents."""
    request = pb.ModelInferRequest(model_name=model, id=body.get("id", ""))
    for key, value in (body.get("parameters") or {}).items():
        _parameter(request.parameters[key], value)
    for tensor in body["inputs"]:
        added = request.inputs.add(name=tensor["name"], datatype=tensor["datatype"], shape=tensor["shape"])
        data = tensor["data"]
        if tensor["datatype"] == "BYTES":
            data = [v.encode() for v in data]
        elif tensor["datatype"].startswith("FP"):
            data = [math.nan if v is None else v for v in data]
        if raw:
            if tensor["datatype"] == "BYTES":
                request.raw_input_contents.append(b"".join(struct.pack("<I", len(v)) + v for v in data))
            else:
                dtype = {"FP64": "<f8", "FP32": "<f4", "INT64": "<i8", "INT32": "<i4"}[tensor["datatype"]]
                request.raw_input_contents.append(np.asarray(data, dtype=dtype).tobytes())
        else:
            getattr(added.contents, CONTENTS[tensor["datatype"]]).extend(data)
    for output in body.get("outputs") or []:
        request.outputs.add(name=output["name"])
    return request


def _typed(response: pb.ModelInferResponse) -> dict[str, list[Any]]:
    out = {}
    for tensor in response.outputs:
        values = list(getattr(tensor.contents, CONTENTS[tensor.datatype]))
        out[tensor.name] = [v.decode() for v in values] if tensor.datatype == "BYTES" else values
    return out


def _from_raw(response: pb.ModelInferResponse) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for tensor, raw in zip(response.outputs, response.raw_output_contents, strict=True):
        if tensor.datatype == "BYTES":
            values, at = [], 0
            while at < len(raw):
                (size,) = struct.unpack_from("<I", raw, at)
                values.append(raw[at + 4 : at + 4 + size].decode())
                at += 4 + size
            out[tensor.name] = values
        else:
            out[tensor.name] = np.frombuffer(raw, dtype={"FP64": "<f8", "BOOL": "|b1"}[tensor.datatype]).tolist()
    return out


def _json_outputs(body: dict[str, Any]) -> dict[str, list[Any]]:
    return {o["name"]: [math.nan if v is None else v for v in o["data"]] for o in body["outputs"]}


def _same(a: dict[str, list[Any]], b: dict[str, list[Any]]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert len(a[name]) == len(b[name]), name
        for x, y in zip(a[name], b[name], strict=True):
            if isinstance(x, float) and math.isnan(x):
                assert isinstance(y, float) and math.isnan(y), name
            else:
                assert x == y, name


def _rows() -> list[dict[str, Any]]:
    far = {**FLCHAIN_ROW, "kappa": 40.0, "lambda": 30.0}  # outside the support: referred or rejected
    return [dict(FLCHAIN_ROW), {**FLCHAIN_ROW, "age": 75, "sex": "M", "creatinine": None}, far]


async def test_server_live_ready_metadata_and_health(
    rest: httpx.AsyncClient, stub: pb_grpc.GRPCInferenceServiceStub, served: Any
) -> None:
    assert (await stub.ServerLive(pb.ServerLiveRequest())).live
    assert (await stub.ServerReady(pb.ServerReadyRequest())).ready
    meta = await stub.ServerMetadata(pb.ServerMetadataRequest())
    assert {"name": meta.name, "version": meta.version, "extensions": list(meta.extensions)} == (
        await rest.get("/v2")
    ).json()
    health = health_pb2_grpc.HealthStub(served[1])
    for service in ("", "inference.GRPCInferenceService"):
        answer = await health.Check(health_pb2.HealthCheckRequest(service=service))
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await health.Check(health_pb2.HealthCheckRequest(service="nope"))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


async def test_model_ready_and_metadata(rest: httpx.AsyncClient, stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    assert (await stub.ModelReady(pb.ModelReadyRequest(name=MODEL))).ready
    assert not (await stub.ModelReady(pb.ModelReadyRequest(name="broken"))).ready
    meta = await stub.ModelMetadata(pb.ModelMetadataRequest(name=MODEL))
    expected = (await rest.get(f"/v2/models/{MODEL}")).json()
    got = {
        "name": meta.name,
        "versions": list(meta.versions),
        "platform": meta.platform,
        "inputs": [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in meta.inputs],
        "outputs": [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in meta.outputs],
    }
    assert got == expected
    version = expected["versions"][0]
    assert (await stub.ModelMetadata(pb.ModelMetadataRequest(name=MODEL, version=version))).name == MODEL


async def test_model_infer_answers_as_v2(rest: httpx.AsyncClient, stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    datatypes = {"age": "INT64", "kappa": "FP32", "flc_grp": "INT32", "mgus": "INT64"}
    kappa32 = float(np.float32(FLCHAIN_ROW["kappa"]))  # FP32 contents carry float32 values: send those to /v2 too
    rows = [{**row, "kappa": kappa32 if row["kappa"] == FLCHAIN_ROW["kappa"] else row["kappa"]} for row in _rows()]
    body = {"id": "g-1", "inputs": v2_inputs(rows, datatypes), "parameters": {"samples": 64, "seed": 5}}
    expected = await rest.post(INFER, json=body)
    assert expected.status_code == 200, expected.text
    answer = await stub.ModelInfer(to_grpc(body))
    assert answer.model_name == MODEL and answer.id == "g-1"
    assert answer.parameters["seed"].int64_param == 5 and answer.parameters["samples"].int64_param == 64
    wanted = expected.json()
    assert answer.parameters["model_sha256"].string_param == wanted["parameters"]["model_sha256"]
    assert [list(t.shape) for t in answer.outputs] == [o["shape"] for o in wanted["outputs"]]
    _same(_typed(answer), _json_outputs(wanted))
    assert len(set(_typed(answer)["decision"])) > 1  # the rows were answered differently, as on /v2


async def test_raw_contents_in_and_out(rest: httpx.AsyncClient, stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    body = {
        "inputs": v2_inputs(_rows(), {"age": "INT64", "mgus": "INT32"}),
        "parameters": {"samples": 32, "seed": 11},
        "outputs": [{"name": "probabilities"}, {"name": "ood_flag"}, {"name": "decision"}, {"name": "label"}],
    }
    expected = (await rest.post(INFER, json=body)).json()
    answer = await stub.ModelInfer(to_grpc(body, raw=True))
    assert len(answer.raw_output_contents) == len(answer.outputs) == 4
    assert all(not t.HasField("contents") for t in answer.outputs)
    _same(_from_raw(answer), _json_outputs(expected))


def _bad_bodies() -> list[tuple[str, dict[str, Any]]]:
    rows = [dict(FLCHAIN_ROW), dict(FLCHAIN_ROW)]
    base = {"inputs": v2_inputs(rows), "parameters": {"samples": 16, "seed": 1}}

    def changed(edit: Any) -> dict[str, Any]:
        body = copy.deepcopy(base)
        edit(body)
        return body

    def tensor(body: dict[str, Any], name: str) -> dict[str, Any]:
        return next(t for t in body["inputs"] if t["name"] == name)

    return [
        ("unknown input", changed(lambda b: b["inputs"].append({**tensor(b, "age"), "name": "agee"}))),
        ("missing input", changed(lambda b: b["inputs"].remove(tensor(b, "mgus")))),
        ("input twice", changed(lambda b: b["inputs"].append(tensor(b, "age")))),
        ("categorical as FP64", changed(lambda b: tensor(b, "sex").update(datatype="FP64", data=[1.0, 2.0]))),
        ("numeric as BYTES", changed(lambda b: tensor(b, "age").update(datatype="BYTES", data=["62", "63"]))),
        ("INT8 out of range", changed(lambda b: tensor(b, "age").update(datatype="INT8", data=[62, 300]))),
        ("shape holds fewer", changed(lambda b: tensor(b, "age").update(shape=[3]))),
        ("shape [N, 2]", changed(lambda b: tensor(b, "age").update(shape=[1, 2]))),
        ("shape of rank 3", changed(lambda b: tensor(b, "age").update(shape=[2, 1, 1]))),
        ("unequal N", changed(lambda b: tensor(b, "age").update(shape=[1], data=[62]))),
        ("infinite value", changed(lambda b: tensor(b, "kappa").update(data=[1.2, math.inf]))),
        ("too many samples", changed(lambda b: b["parameters"].update(samples=10**6))),
        ("negative seed", changed(lambda b: b["parameters"].update(seed=-1))),
        ("seed as a string", changed(lambda b: b["parameters"].update(seed="one"))),
        ("unknown sampler", changed(lambda b: b["parameters"].update(sampler="gibbs"))),
        ("tolerance out of range", changed(lambda b: b["parameters"].update(tolerance=2.0))),
        ("misspelt parameter", changed(lambda b: b["parameters"].update(sample=3))),
        ("unknown output", changed(lambda b: b.update(outputs=[{"name": "probs"}]))),
        ("output twice", changed(lambda b: b.update(outputs=[{"name": "label"}, {"name": "label"}]))),
        ("too many rows", {"inputs": v2_inputs([dict(FLCHAIN_ROW)] * TOO_MANY_ROWS)}),
    ]


@pytest.mark.parametrize(("case", "body"), _bad_bodies(), ids=[case for case, _ in _bad_bodies()])
async def test_bad_inputs_are_invalid_argument_with_v2_message(
    rest: httpx.AsyncClient, stub: pb_grpc.GRPCInferenceServiceStub, case: str, body: dict[str, Any]
) -> None:
    refused = await rest.post(INFER, content=json.dumps(body))  # NaN and Infinity allowed, as Python writes them
    assert refused.status_code == 400, (case, refused.text)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.ModelInfer(to_grpc(body))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == refused.json()["error"]


async def test_raw_contents_that_do_not_fit_are_invalid_argument(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    request = to_grpc({"inputs": v2_inputs([dict(FLCHAIN_ROW)])}, raw=True)
    request.raw_input_contents[0] = request.raw_input_contents[0][:-1]
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.ModelInfer(request)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith("inputs.age: 7 bytes are not a whole number of FP64")
    request = to_grpc({"inputs": v2_inputs([dict(FLCHAIN_ROW)])}, raw=True)
    del request.raw_input_contents[-1]
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.ModelInfer(request)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith("raw_input_contents:")


@pytest.mark.parametrize(("model", "code", "status"), [("nope", "NOT_FOUND", 404), ("broken", "UNAVAILABLE", 503)])
async def test_unknown_and_unready_models(
    rest: httpx.AsyncClient, stub: pb_grpc.GRPCInferenceServiceStub, model: str, code: str, status: int
) -> None:
    body = {"inputs": v2_inputs([dict(FLCHAIN_ROW)])}
    refused = await rest.post(f"/v2/models/{model}/infer", json=body)
    assert refused.status_code == status
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.ModelInfer(to_grpc(body, model=model))
    assert info.value.code() == getattr(grpc.StatusCode, code)
    assert info.value.details() == refused.json()["error"]
    if model == "nope":
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.ModelReady(pb.ModelReadyRequest(name=model))
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.ModelMetadata(pb.ModelMetadataRequest(name=model))
    assert info.value.code() == getattr(grpc.StatusCode, code)


async def test_grpc_calls_are_in_the_metrics(
    rest: httpx.AsyncClient, stub: pb_grpc.GRPCInferenceServiceStub, parse_metrics: Callable[[str], Any]
) -> None:
    await stub.ModelInfer(to_grpc({"inputs": v2_inputs([dict(FLCHAIN_ROW)]), "parameters": {"samples": 8}}))
    metrics = parse_metrics((await rest.get("/metrics")).text)
    route = "/inference.GRPCInferenceService/ModelInfer"
    found = metrics.find("sbnn_request_duration_seconds_count", model=MODEL, route=route, status="OK")
    assert found and found[0][1] >= 1


async def test_sbnn_serve_grpc_port_and_graceful_shutdown(
    model_repository: Path, tmp_path: Path, free_port: Callable[[], int]
) -> None:
    """``sbnn serve --grpc-port``: gRPC answers; on SIGTERM a call in flight still completes, then both stop."""
    http_port, grpc_port = free_port(), free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("SBNN_")}
    env["SBNN_MAX_ROWS"] = "64"
    env["SBNN_READY_WHEN"] = "any"  # the test repository holds a broken model on purpose
    command = [sys.executable, "-m", "app.cli", "serve", "--models", str(model_repository), "--device", "cpu"]
    command += ["--port", str(http_port), "--grpc-port", str(grpc_port)]
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            deadline = time.monotonic() + 60
            while True:
                assert process.poll() is None, log_path.read_text()
                try:
                    check = health_pb2.HealthCheckRequest(service="inference.GRPCInferenceService")
                    if (await health.Check(check, timeout=2)).status == health_pb2.HealthCheckResponse.SERVING:
                        break
                except grpc.aio.AioRpcError:
                    pass
                assert time.monotonic() < deadline, log_path.read_text()
                await anyio.sleep(0.1)
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            body = {"inputs": v2_inputs([dict(FLCHAIN_ROW)] * 64), "parameters": {"samples": 4096, "seed": 1}}
            in_flight = asyncio.ensure_future(stub.ModelInfer(to_grpc(body), timeout=60))
            await anyio.sleep(0.05)
            process.send_signal(signal.SIGTERM)
            answer = await in_flight
            assert answer.parameters["samples"].int64_param == 4096
        code = await anyio.to_thread.run_sync(lambda: process.wait(timeout=30))
        assert code == 0 and "Application shutdown complete" in log_path.read_text()  # a stop asked for: status 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)


def _grpc_forms() -> list[tuple[str, dict[str, Any], pb.ModelInferRequest]]:
    """test_serve_bad_inputs' /v2 bad bodies that have a gRPC form: the tensors typed contents can carry (not a
    string for a number, not a null category, not a JSON-only defect)."""
    from test_serve_bad_inputs import V2_CASES  # the same directory: on sys.path under pytest's prepend mode

    forms = []
    for name, body, _ in V2_CASES:
        if not isinstance(body, dict) or set(body) - {"id", "inputs", "parameters", "outputs"}:
            continue  # a JSON-only defect, or a field (a misspelling) a protobuf message cannot carry
        if any(not isinstance(t, dict) or set(t) - {"name", "shape", "datatype", "data"} for t in body["inputs"]):
            continue
        try:
            forms.append((name, body, to_grpc(body)))
        except (AttributeError, KeyError, TypeError, ValueError):
            continue
    return forms


@pytest.mark.parametrize(("body", "request_"), [pytest.param(b, r, id=n) for n, b, r in _grpc_forms()])
async def test_every_v2_bad_input_with_a_grpc_form_is_refused_alike(
    rest: httpx.AsyncClient, stub: pb_grpc.GRPCInferenceServiceStub, body: dict[str, Any], request_: Any
) -> None:
    refused = await rest.post(INFER, json=body)
    assert 400 <= refused.status_code < 500, refused.text
    codes = {400: grpc.StatusCode.INVALID_ARGUMENT, 404: grpc.StatusCode.NOT_FOUND}
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.ModelInfer(request_)
    assert info.value.code() == codes[refused.status_code]
    assert info.value.details() == refused.json()["error"]


def test_most_v2_bad_inputs_have_a_grpc_form() -> None:
    assert len(_grpc_forms()) >= 25


async def test_unknown_datatype_is_worded_as_v2_words_it(
    rest: httpx.AsyncClient, stub: pb_grpc.GRPCInferenceServiceStub
) -> None:
    body = {"inputs": v2_inputs([dict(FLCHAIN_ROW)])}
    refused = await rest.post(INFER, json={"inputs": [{**body["inputs"][0], "datatype": "FP8"}, *body["inputs"][1:]]})
    request = to_grpc(body)
    request.inputs[0].datatype = "FP8"
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.ModelInfer(request)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == refused.json()["error"]
    assert info.value.details().startswith("inputs.age: unknown datatype FP8; expected one of ['BOOL', 'BYTES'")


async def test_an_empty_bytes_element_is_a_missing_category(
    rest: httpx.AsyncClient, stub: pb_grpc.GRPCInferenceServiceStub
) -> None:
    """gRPC has no null: an empty BYTES element is read as JSON's null is (typed and raw contents)."""
    parameters = {"samples": 16, "seed": 2, "sampler": "fresh"}
    expected = await rest.post(
        INFER, json={"inputs": v2_inputs([{**FLCHAIN_ROW, "sex": None}]), "parameters": parameters}
    )
    assert expected.status_code == 200, expected.text
    body = {"inputs": v2_inputs([{**FLCHAIN_ROW, "sex": ""}]), "parameters": parameters}
    _same(_typed(await stub.ModelInfer(to_grpc(body))), _json_outputs(expected.json()))
    _same(_from_raw(await stub.ModelInfer(to_grpc(body, raw=True))), _json_outputs(expected.json()))


async def test_a_message_over_the_size_limit_is_resource_exhausted(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    """The gRPC receive limit is the REST body limit (conftest LIMITS: 64 KiB)."""
    request = to_grpc({"inputs": v2_inputs([dict(FLCHAIN_ROW)])})
    request.id = "x" * 70_000
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.ModelInfer(request)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "65536" in info.value.details()


async def test_extensions_outside_the_protocol_are_unimplemented_and_404(served: Any) -> None:
    """Calls the OIP proto lacks are UNIMPLEMENTED; REST serves only the repository extension (Triton's shape)."""
    rest, channel = served
    for method in ("RepositoryIndex", "ModelStatistics", "SystemSharedMemoryStatus"):
        call = channel.unary_unary(f"/{pb.DESCRIPTOR.package}.GRPCInferenceService/{method}")
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call(b"")
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED, method
    for path in (f"/v2/models/{MODEL}/stats", "/v2/systemsharedmemory/status"):
        response = await rest.post(path, json={})
        assert response.status_code == 404 and "error" in response.json(), path
    assert (await rest.post("/v2/repository/index", json={})).status_code == 200
