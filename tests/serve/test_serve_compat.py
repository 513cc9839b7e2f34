"""Standard clients unchanged (app/serve/middleware.py, the /v2 request schemas): any Content-Type, added fields,
gzip/deflate bodies within the body limit, HEAD on every GET route, X-Request-Id, the platform per backend."""

from __future__ import annotations

import gzip
import json
import logging
import shutil
import zlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.checkpoint.io import load_checkpoint
from app.checkpoint.onnx_export import export_onnx
from app.serve.settings import Settings

pytestmark = pytest.mark.anyio

MODEL = "flchain-mortality"
INFER = f"/v2/models/{MODEL}/infer"
PREDICT = f"/v1/models/{MODEL}/predict"
ROOT = Path(__file__).resolve().parents[2]
LIMIT = 65536  # max_body_bytes of the servers under test (conftest.LIMITS)
FLCHAIN_ROW = {"age": 62, "sex": "F", "kappa": 1.2, "lambda": 1.5, "flc_grp": 5, "creatinine": 1.0, "mgus": 0}


def v2_inputs(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {"name": k, "shape": [len(rows)], "datatype": "BYTES" if k == "sex" else "FP64", "data": [r[k] for r in rows]}
        for k in rows[0]
    ]


def _request(**extra: Any) -> dict[str, Any]:
    return {"id": "req-7", "inputs": v2_inputs([FLCHAIN_ROW]), "parameters": {"samples": 16, "seed": 3}, **extra}


def _raw_deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()


@pytest.fixture
async def live(live_server: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=live_server, timeout=60.0) as http:
        yield http


@pytest.fixture(scope="module")
async def plain_answer(asgi_client: httpx.AsyncClient) -> dict[str, Any]:
    response = await asgi_client.post(INFER, json=_request())
    assert response.status_code == 200, response.text
    return response.json()


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/octet-stream", "application/json"])
async def test_v2_body_is_json_whatever_the_content_type(
    live: httpx.AsyncClient, content_type: str | None, plain_answer: dict[str, Any]
) -> None:
    """tritonclient.http sends no Content-Type; curl -d sends application/x-www-form-urlencoded."""
    headers = {} if content_type is None else {"content-type": content_type}
    response = await live.post(INFER, content=json.dumps(_request()).encode(), headers=headers)
    assert response.status_code == 200, response.text
    assert response.json()["id"] == "req-7"
    assert response.json()["outputs"] == plain_answer["outputs"]


async def test_v2_malformed_json_without_content_type_is_400(asgi_client: httpx.AsyncClient) -> None:
    response = await asgi_client.post(INFER, content=b'{"inputs": [')
    assert response.status_code == 400
    assert "JSON" in response.json()["error"]


async def test_v2_fields_a_client_adds_are_ignored(
    asgi_client: httpx.AsyncClient, plain_answer: dict[str, Any]
) -> None:
    """KServe's InferRequest.to_rest() adds model_name; clients add their own parameters and fields."""
    body = _request(model_name=MODEL, model_version="1", trace={"span": "x"})
    body["parameters"]["binary_data_output"] = False
    body["inputs"][0].update(model_name=MODEL, parameters={"client_tag": "x"}, note="added")
    body["outputs"] = [
        {"name": o["name"], "parameters": {"binary_data": False}, "x": 1} for o in plain_answer["outputs"]
    ]
    response = await asgi_client.post(INFER, json=body)
    assert response.status_code == 200, response.text
    assert response.json()["outputs"] == plain_answer["outputs"]
    assert response.json()["id"] == "req-7"


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (lambda b: b.update(parameter=b.pop("parameters")), "body.parameter: unknown field; did you mean 'parameters'"),
        (lambda b: b.update(output=[{"name": "label"}]), "body.output:"),
        (lambda b: b.update(Inputs=[]), "body.Inputs:"),
        (lambda b: b["parameters"].update(sample=8), "parameters.sample:"),
        (lambda b: b["inputs"][0].update(dtype="FP64"), "inputs.age.dtype:"),
        (lambda b: b.update(outputs=[{"name": "label", "parameter": {}}]), "outputs.label.parameter:"),
    ],
    ids=["parameter", "output", "Inputs", "parameters.sample", "tensor dtype", "output parameter"],
)
async def test_v2_misspelt_field_is_400(
    asgi_client: httpx.AsyncClient, change: Callable[[dict[str, Any]], None], named: str
) -> None:
    """A field that reads like a known one would be silently dropped: refused, naming it."""
    body = _request()
    change(body)
    response = await asgi_client.post(INFER, json=body)
    assert response.status_code == 400, response.text
    assert named in response.json()["error"]


@pytest.mark.parametrize(
    ("encoding", "compress"),
    [("gzip", gzip.compress), ("x-gzip", gzip.compress), ("deflate", zlib.compress), ("deflate", _raw_deflate)],
    ids=["gzip", "x-gzip", "deflate (zlib)", "deflate (raw)"],
)
async def test_compressed_bodies_are_inflated(
    live: httpx.AsyncClient, encoding: str, compress: Callable[[bytes], bytes], plain_answer: dict[str, Any]
) -> None:
    body = compress(json.dumps(_request()).encode())
    response = await live.post(INFER, content=body, headers={"content-encoding": encoding})
    assert response.status_code == 200, response.text
    assert response.json()["outputs"] == plain_answer["outputs"]
    v1 = await live.post(
        PREDICT,
        content=compress(json.dumps({"instances": [FLCHAIN_ROW], "samples": 8}).encode()),
        headers={"content-encoding": encoding, "content-type": "application/json"},
    )
    assert v1.status_code == 200, v1.text


async def test_two_gzip_members_are_one_body(asgi_client: httpx.AsyncClient) -> None:
    data = json.dumps(_request()).encode()
    body = gzip.compress(data[:50]) + gzip.compress(data[50:])
    response = await asgi_client.post(INFER, content=body, headers={"content-encoding": "gzip"})
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(("path", "key"), [(INFER, "error"), (PREDICT, "detail")])
async def test_gzip_bomb_is_413_not_inflated(live: httpx.AsyncClient, path: str, key: str) -> None:
    """64 MiB of zeros in 64 KiB of gzip: refused once the inflated body passes the limit."""
    bomb = gzip.compress(b"0" * (64 * 1024 * 1024), compresslevel=9)
    assert len(bomb) < LIMIT
    response = await live.post(path, content=bomb, headers={"content-encoding": "gzip"})
    assert response.status_code == 413
    assert str(LIMIT) in response.json()[key]


async def test_compressed_body_over_the_limit_is_413(asgi_client: httpx.AsyncClient) -> None:
    """The limit holds for the compressed bytes too (incompressible data)."""
    noise = gzip.compress(bytes(range(256)) * (LIMIT // 128), compresslevel=0)
    response = await asgi_client.post(INFER, content=noise, headers={"content-encoding": "gzip"})
    assert response.status_code == 413
    assert str(LIMIT) in response.json()["error"]


@pytest.mark.parametrize(
    "body",
    [b"not gzip at all", gzip.compress(b'{"inputs": []}')[:-12], gzip.compress(b"{}") + b"trailing"],
    ids=["not gzip", "truncated", "trailing bytes"],
)
async def test_corrupt_gzip_is_400_naming_the_body(asgi_client: httpx.AsyncClient, body: bytes) -> None:
    response = await asgi_client.post(INFER, content=body, headers={"content-encoding": "gzip"})
    assert response.status_code == 400
    assert response.json()["error"].startswith("body: not valid gzip data")


async def test_unsupported_encoding_is_415(asgi_client: httpx.AsyncClient) -> None:
    response = await asgi_client.post(INFER, content=b"\x00", headers={"content-encoding": "br"})
    assert response.status_code == 415
    assert "br" in response.json()["error"] and response.headers["accept-encoding"] == "gzip, deflate"


@pytest.mark.parametrize(
    "path",
    [
        "/v2",
        "/v2/health/live",
        "/v2/health/ready",
        f"/v2/models/{MODEL}",
        f"/v2/models/{MODEL}/ready",
        f"/v2/models/{MODEL}/versions/1",
        "/v2/models/nothing",
        "/v2/models/broken/ready",
        "/v1/models",
        f"/v1/models/{MODEL}",
        "/metrics",
        INFER,
    ],
)
async def test_head_answers_as_get_without_a_body(live: httpx.AsyncClient, path: str) -> None:
    get = await live.get(path)
    head = await live.head(path)
    assert head.status_code == get.status_code
    assert head.content == b""
    for name in ("content-type", "allow"):
        assert head.headers.get(name) == get.headers.get(name)
    if path != "/metrics":  # the metrics text changes between the two calls
        assert head.headers["content-length"] == get.headers["content-length"] == str(len(get.content))


async def test_head_on_the_asgi_app_sends_no_body(asgi_client: httpx.AsyncClient) -> None:
    head = await asgi_client.head("/v2/health/live")
    assert head.status_code == 200
    assert head.content == b"" and head.headers["content-length"] == str(len(b'{"live":true}'))


async def test_request_id_is_echoed_or_generated(live: httpx.AsyncClient) -> None:
    echoed = await live.post(INFER, json=_request(), headers={"x-request-id": "client-42"})
    assert echoed.status_code == 200
    assert echoed.headers["x-request-id"] == "client-42" and echoed.json()["id"] == "req-7"
    generated = await live.get("/v2/health/live")
    first = generated.headers["x-request-id"]
    assert len(first) == 32 and int(first, 16) >= 0
    assert (await live.get("/v2/health/live")).headers["x-request-id"] != first
    unsafe = await live.get("/v2/health/live", headers={"x-request-id": "a b\tc"})
    assert unsafe.headers["x-request-id"] != "a b\tc" and len(unsafe.headers["x-request-id"]) == 32
    for response in (
        await live.get("/v2/models/nothing", headers={"x-request-id": "r-404"}),
        await live.post(INFER, content=b"x" * (LIMIT + 1), headers={"x-request-id": "r-413"}),
    ):
        assert response.status_code in (404, 413)
        assert response.headers["x-request-id"] == f"r-{response.status_code}"


async def test_log_line_carries_the_ids_and_no_request_values(
    asgi_client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    body = _request(id="secret-id")
    body["inputs"][0]["data"] = [61.5]
    with caplog.at_level(logging.INFO, logger="sbnn.serve.access"):
        response = await asgi_client.post(
            INFER, json=body, headers={"x-request-id": "trace-me", "traceparent": traceparent}
        )
        await asgi_client.get("/v2/health/live", headers={"traceparent": "garbage\nline"})
    assert response.status_code == 200
    lines = [r.getMessage() for r in caplog.records if r.name == "sbnn.serve.access"]
    infer = next(line for line in lines if "request_id=trace-me" in line)
    assert infer.startswith("POST /v2/models/{name}/infer 200 ") and f"traceparent={traceparent}" in infer
    assert "61.5" not in infer and "secret-id" not in infer and MODEL not in infer
    assert any(line.startswith("GET /v2/health/live 200") and line.endswith("traceparent=-") for line in lines)


@pytest.fixture(scope="module")
def onnx_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repository = tmp_path_factory.mktemp("compat-onnx")
    folder = repository / MODEL
    shutil.copytree(ROOT / "models" / MODEL, folder)
    export_onnx(load_checkpoint(folder), seed=0)
    return repository


@pytest.mark.parametrize(("backend", "platform"), [("torch", "sbnn_pytorch"), ("onnx", "sbnn_onnxruntime")])
async def test_platform_names_the_backend(
    app_client: Callable[[Settings], Any], onnx_repository: Path, backend: str, platform: str
) -> None:
    async with app_client(Settings(models=onnx_repository, backend=backend, device="cpu")) as client:
        response = await client.get(f"/v2/models/{MODEL}")
    assert response.status_code == 200
    assert response.json()["platform"] == platform
