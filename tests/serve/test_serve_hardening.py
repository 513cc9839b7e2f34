"""Input hardening: bodies Python's json reads but the service must not (lone surrogates, invalid UTF-8,
duplicated keys), /v1's strict option types, no server paths in client-visible errors, no ``server`` header.

Each refusal comes before anything is scored, names the field, and leaves no request value in the log.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.serve.api import strict_json

pytestmark = pytest.mark.anyio

PREDICT = "/v1/models/flchain-mortality/predict"
INFER = "/v2/models/flchain-mortality/infer"
ROW: dict[str, Any] = {"age": 62, "sex": "F", "kappa": 1.2, "lambda": 1.5, "flc_grp": 5, "creatinine": 1.0, "mgus": 0}
SURROGATE = '"\\ud800"'  # a JSON string escape Python's json turns into a str that cannot be encoded
MARK = "MARKER"  # replaced by SURROGATE in the raw body
JSON = {"content-type": "application/json"}


def _v2(rows: list[dict[str, Any]], **top: Any) -> dict[str, Any]:
    tensors = [
        {"name": k, "shape": [len(rows)], "datatype": "BYTES" if k == "sex" else "FP64", "data": [r[k] for r in rows]}
        for k in rows[0]
    ]
    return {"inputs": tensors, "parameters": {"samples": 8}, **top}


def _with_surrogate(body: dict[str, Any]) -> str:
    text = json.dumps(body)
    assert text.count(f'"{MARK}"') == 1
    return text.replace(f'"{MARK}"', SURROGATE)


def _v2_renamed(position: int) -> dict[str, Any]:
    body = _v2([ROW])
    body["inputs"][position]["name"] = MARK
    return body


async def _rows_scored(client: httpx.AsyncClient, parse_metrics: Callable[[str], Any]) -> float:
    return parse_metrics((await client.get("/metrics")).text).count("sbnn_predictions_total")


# (case id, path, raw body, where the error must point: /v1 a loc prefix, /v2 text in the error)
SURROGATE_CASES: list[tuple[str, str, str, list[str | int] | str]] = [
    (
        "v1 feature value",
        PREDICT,
        _with_surrogate({"instances": [{**ROW, "sex": MARK}]}),
        ["body", "instances", 0, "sex"],
    ),
    ("v1 feature key", PREDICT, _with_surrogate({"instances": [{**ROW, MARK: 1}]}), ["body", "instances", 0]),
    ("v1 top-level key", PREDICT, _with_surrogate({"instances": [ROW], MARK: 1}), ["body"]),
    ("v2 BYTES value", INFER, _with_surrogate(_v2([{**ROW, "sex": MARK}])), "body.inputs.1.data.0:"),
    ("v2 input name", INFER, _with_surrogate(_v2_renamed(0)), "body.inputs.0.name:"),
    ("v2 id", INFER, _with_surrogate(_v2([ROW], id=MARK)), "body.id:"),
    ("v2 parameter value", INFER, _with_surrogate({**_v2([ROW]), "parameters": {"sampler": MARK}}), "body.parameters"),
]


@pytest.mark.parametrize(("path", "body", "where"), [pytest.param(p, b, w, id=n) for n, p, b, w in SURROGATE_CASES])
async def test_a_lone_surrogate_is_refused_naming_the_field_before_scoring(
    asgi_client: httpx.AsyncClient,
    parse_metrics: Callable[[str], Any],
    caplog: pytest.LogCaptureFixture,
    path: str,
    body: str,
    where: list[str | int] | str,
) -> None:
    scored = await _rows_scored(asgi_client, parse_metrics)
    with caplog.at_level(logging.DEBUG):
        response = await asgi_client.post(path, content=body, headers=JSON)
    if path == PREDICT:
        assert response.status_code == 422, response.text
        detail = response.json()["detail"]
        assert detail[0]["loc"] == where and "Unicode" in detail[0]["msg"], detail
    else:
        assert response.status_code == 400, response.text
        assert response.json()["error"].startswith(where) and "Unicode" in response.json()["error"]
    assert await _rows_scored(asgi_client, parse_metrics) == scored  # refused before the data plane
    for record in caplog.records:
        message = record.getMessage()
        message.encode("utf-8")  # no lone surrogate reached a log line
        assert "\ud800" not in message and "ud800" not in message
        assert record.exc_info is None, message


@pytest.mark.parametrize(("path", "status"), [(PREDICT, 422), (INFER, 400)])
@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b'{"instances": [{"sex": "\xff"}]}', id="invalid byte"),
        pytest.param(b'{"inputs": [{"name": "\xc3"}]}', id="truncated sequence"),
        pytest.param(b'{"id": "\xed\xa0\x80", "inputs": []}', id="encoded surrogate"),
    ],
)
async def test_invalid_utf8_is_a_client_error(
    asgi_client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture, path: str, status: int, raw: bytes
) -> None:
    with caplog.at_level(logging.DEBUG):
        response = await asgi_client.post(path, content=raw, headers=JSON)
    assert response.status_code == status, response.text
    text = json.dumps(response.json())
    assert "UTF-8" in text or "Unicode" in text
    assert all(record.exc_info is None for record in caplog.records)


def _duplicated(body: str, key: str, value: str) -> str:
    """``body`` (an object's JSON) with ``"key": value`` added at its end, after the one it has."""
    assert body.endswith("}")
    return f'{body[:-1]}, "{key}": {value}}}'


ROW_JSON = json.dumps(ROW)
V2_JSON = json.dumps(_v2([ROW]))
TENSOR = json.dumps(_v2([ROW])["inputs"][0])

# (case id, path, raw body, where the error must point)
DUPLICATE_CASES: list[tuple[str, str, str, list[str | int] | str]] = [
    (
        "v1 instances twice",
        PREDICT,
        _duplicated(json.dumps({"instances": [ROW]}), "instances", f"[{ROW_JSON}, {ROW_JSON}]"),
        ["body", "instances"],
    ),
    (
        "v1 feature twice",
        PREDICT,
        json.dumps({"instances": ["ROW"]}).replace('"ROW"', _duplicated(ROW_JSON, "age", "99")),
        ["body", "instances", 0, "age"],
    ),
    (
        "v1 samples twice",
        PREDICT,
        _duplicated(json.dumps({"instances": [ROW], "samples": 8}), "samples", "9"),
        ["body", "samples"],
    ),
    ("v2 inputs twice", INFER, _duplicated(V2_JSON, "inputs", "[]"), "body.inputs:"),
    ("v2 tensor key twice", INFER, V2_JSON.replace(TENSOR, _duplicated(TENSOR, "data", "[70]")), "body.inputs.0.data:"),
    (
        "v2 parameter twice",
        INFER,
        V2_JSON.replace('{"samples": 8}', '{"samples": 8, "samples": 16}'),
        "body.parameters.samples:",
    ),
]


@pytest.mark.parametrize(("path", "body", "where"), [pytest.param(p, b, w, id=n) for n, p, b, w in DUPLICATE_CASES])
async def test_a_duplicated_key_is_refused_naming_it(
    asgi_client: httpx.AsyncClient,
    parse_metrics: Callable[[str], Any],
    path: str,
    body: str,
    where: list[str | int] | str,
) -> None:
    scored = await _rows_scored(asgi_client, parse_metrics)
    response = await asgi_client.post(path, content=body, headers=JSON)
    if path == PREDICT:
        assert response.status_code == 422, response.text
        detail = response.json()["detail"]
        assert detail[0]["loc"] == where and "duplicated key" in detail[0]["msg"], detail
        assert detail[0]["type"] == "json_duplicate_key"
    else:
        assert response.status_code == 400, response.text
        assert response.json()["error"].startswith(where) and "duplicated key" in response.json()["error"]
    assert await _rows_scored(asgi_client, parse_metrics) == scored


async def test_the_kserve_v1_alias_is_as_strict(asgi_client: httpx.AsyncClient) -> None:
    body = _duplicated(json.dumps({"instances": [ROW]}), "instances", f"[{ROW_JSON}]")
    response = await asgi_client.post("/v1/models/flchain-mortality:predict", content=body, headers=JSON)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "instances"]


async def test_a_body_nested_too_deeply_is_a_client_error(asgi_client: httpx.AsyncClient) -> None:
    deep = "[" * 20000 + "]" * 20000
    v1 = await asgi_client.post(PREDICT, content=f'{{"instances": {deep}}}', headers=JSON)
    assert v1.status_code == 422 and v1.json()["detail"][0]["type"] == "json_invalid"
    v2 = await asgi_client.post(INFER, content=f'{{"inputs": {deep}}}', headers=JSON)
    assert v2.status_code == 400 and "JSON" in v2.json()["error"]


@pytest.mark.parametrize("path", [PREDICT, INFER, "/v1/models/flchain-mortality:predict", "/v1/models/nope/predict"])
async def test_an_integer_of_too_many_digits_is_a_client_error(asgi_client: httpx.AsyncClient, path: str) -> None:
    """Found by bench/fuzz.py: Python refuses int() of over 4,300 digits, and json.loads with it (was a 500)."""
    digits = "9" * 4301
    response = await asgi_client.post(path, content=f'{{"instances": [], "inputs": [], "id": {digits}}}', headers=JSON)
    assert response.status_code in (400, 422), response.text
    assert "too many digits" in response.text


@pytest.mark.parametrize("encoding", ["utf-16", "utf-32", "utf-8-sig"])
@pytest.mark.parametrize(("path", "status"), [(PREDICT, 422), (INFER, 400)])
async def test_json_in_another_encoding_than_utf8_is_refused(
    asgi_client: httpx.AsyncClient, path: str, status: int, encoding: str
) -> None:
    body = json.dumps({"instances": [ROW]} if path == PREDICT else _v2([ROW])).encode(encoding)
    response = await asgi_client.post(path, content=body, headers=JSON)
    assert response.status_code == status, response.text


@pytest.mark.parametrize("length", ["9" * 5000, "²", "12a"])
async def test_a_binary_header_length_that_is_no_small_integer_is_refused_without_echoing_it(
    asgi_client: httpx.AsyncClient, length: str
) -> None:
    headers = {**JSON, "Inference-Header-Content-Length": length.encode("latin-1")}  # "²" is b"\xb2"
    response = await asgi_client.post(INFER, content=b'{"inputs": []}', headers=headers)
    assert response.status_code == 400, response.text
    assert response.json()["error"].startswith("Inference-Header-Content-Length: must be an integer")
    assert len(response.text) < 300


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("seed", True),
        ("seed", "7"),
        ("seed", 7.0),
        ("samples", "512"),
        ("samples", True),
        ("samples", 64.0),
        ("tolerance", "0.01"),
        ("tolerance", True),
    ],
)
async def test_v1_options_are_strictly_typed_as_on_v2(asgi_client: httpx.AsyncClient, field: str, value: Any) -> None:
    response = await asgi_client.post(PREDICT, json={"instances": [ROW], field: value})
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == ["body", field]
    v2 = await asgi_client.post(INFER, json=_v2([ROW], parameters={field: value}))
    assert v2.status_code == 400, v2.text


async def test_v1_options_of_the_right_type_still_serve(asgi_client: httpx.AsyncClient) -> None:
    body = {"instances": [ROW], "samples": 64, "seed": 7, "sampler": "fresh", "tolerance": 0.5}
    response = await asgi_client.post(PREDICT, json=body)
    assert response.status_code == 200, response.text
    assert response.json()["seed"] == 7


async def test_a_valid_body_still_serves_on_both_surfaces(asgi_client: httpx.AsyncClient) -> None:
    assert (await asgi_client.post(PREDICT, json={"instances": [ROW], "samples": 8})).status_code == 200
    answer = await asgi_client.post(INFER, json=_v2([{**ROW, "sex": "M"}], id="é-✓"))
    assert answer.status_code == 200 and answer.json()["id"] == "é-✓"


async def test_a_failed_models_reason_names_no_server_path(
    asgi_client: httpx.AsyncClient, model_repository: Path
) -> None:
    models = {m["name"]: m for m in (await asgi_client.get("/v1/models")).json()["models"]}
    reason = models["broken"]["reason"]
    assert models["broken"]["state"] == "failed" and "sha256" in reason
    assert reason.startswith("weights.safetensors: ")
    unready = await asgi_client.post("/v1/models/broken/predict", json={"instances": [ROW]})
    assert unready.status_code == 503
    for text in (reason, json.dumps((await asgi_client.get("/v1/models/broken")).json()), unready.text):
        assert str(model_repository) not in text and str(model_repository.resolve()) not in text
        assert "/tmp" not in text and "pytest-" not in text


def test_strict_json_loads_refuses_by_location() -> None:
    with pytest.raises(strict_json.JsonRefused) as info:
        strict_json.loads('{"a": [{"b": 1, "b": 2}]}')
    assert info.value.loc == ("a", 0, "b") and info.value.type == "json_duplicate_key"
    with pytest.raises(strict_json.JsonRefused) as info:
        strict_json.loads('{"a": {"\\udc00": 1}}')
    assert info.value.loc == ("a",) and "\udc00" not in info.value.msg
    assert strict_json.loads('{"a": ["\\u00e9\\ud83d\\ude00"]}') == {"a": ["é😀"]}  # a surrogate pair is fine


def test_grpc_bytes_that_are_not_utf8_are_refused() -> None:
    """gRPC strings cannot hold a lone surrogate; BYTES contents can hold any bytes, and are refused when they
    are not UTF-8 (INVALID_ARGUMENT, as every RequestRejected)."""
    pytest.importorskip("grpc")
    from app.serve.errors import RequestRejected
    from app.serve.grpc import open_inference_grpc_pb2 as pb
    from app.serve.grpc.server import _request

    for contents in (b"\xff", b"\xed\xa0\x80"):
        message = pb.ModelInferRequest(model_name="flchain-mortality")
        tensor = message.inputs.add(name="sex", datatype="BYTES", shape=[1])
        tensor.contents.bytes_contents.append(contents)
        with pytest.raises(RequestRejected, match="UTF-8") as info:
            _request(message)
        assert info.value.field == "inputs.sex"
        raw = pb.ModelInferRequest(model_name="flchain-mortality")
        raw.inputs.add(name="sex", datatype="BYTES", shape=[1])
        raw.raw_input_contents.append(len(contents).to_bytes(4, "little") + contents)
        with pytest.raises(RequestRejected, match="UTF-8"):
            _request(raw)


def test_the_live_server_sends_no_server_header(live_server: str) -> None:
    for response in (
        httpx.get(f"{live_server}/v2/health/live", timeout=10.0),
        httpx.get(f"{live_server}/v1/nothing-here", timeout=10.0),
        httpx.post(f"{live_server}{PREDICT}", content=b"{", headers=JSON, timeout=10.0),
    ):
        assert "server" not in response.headers, response.headers
