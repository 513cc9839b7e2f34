"""Every malformed request is a 4xx JSON answer that names the field, never a 500 (in-process app).

/v1 answers 422 with FastAPI's {"detail": [{"loc": [...], "msg": ...}]}; /v2 answers 400 with {"error": "..."}.
The module ends by checking that the server still answers a valid request after all of them.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.anyio

PREDICT = "/v1/models/flchain-mortality/predict"
INFER = "/v2/models/flchain-mortality/infer"
ROW: dict[str, Any] = {"age": 62, "sex": "F", "kappa": 1.2, "lambda": 1.5, "flc_grp": 5, "creatinine": 1.0, "mgus": 0}
MAX_ROWS = 64
MAX_BODY_BYTES = 65536

V2Inputs = Callable[..., list[dict[str, Any]]]


def _without(row: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k != key}


def _raw_v1(age: str = "62", kappa: str = "1.2") -> str:
    """A /v1 body as text, so that NaN and Infinity (JSON extensions Python's json accepts) go over the wire."""
    body = json.dumps({"instances": [{**ROW, "age": "AGE", "kappa": "KAPPA"}], "samples": 8})
    return body.replace('"AGE"', age).replace('"KAPPA"', kappa)


def _raw_v2(age: str) -> str:
    tensors = [
        {"name": k, "shape": [1], "datatype": "BYTES" if k == "sex" else "FP64", "data": ["AGE" if k == "age" else v]}
        for k, v in ROW.items()
    ]
    return json.dumps({"inputs": tensors, "parameters": {"samples": 8}}).replace('"AGE"', age)


# (case id, JSON body or raw text, the location FastAPI reports); every one is a 422.
V1_CASES: list[tuple[str, dict[str, Any] | str, list[str | int]]] = [
    ("missing feature", {"instances": [_without(ROW, "age")]}, ["body", "instances", 0, "age"]),
    ("missing feature, second row", {"instances": [ROW, _without(ROW, "mgus")]}, ["body", "instances", 1, "mgus"]),
    ("unknown feature", {"instances": [{**ROW, "height": 170}]}, ["body", "instances", 0, "height"]),
    ("string for a number", {"instances": [{**ROW, "age": "62"}]}, ["body", "instances", 0, "age"]),
    ("bool for a number", {"instances": [{**ROW, "mgus": True}]}, ["body", "instances", 0, "mgus"]),
    ("number for a category", {"instances": [{**ROW, "sex": 1}]}, ["body", "instances", 0, "sex"]),
    ("list for a number", {"instances": [{**ROW, "kappa": [1.2]}]}, ["body", "instances", 0, "kappa"]),
    ("NaN", _raw_v1(age="NaN"), ["body", "instances", 0, "age"]),
    ("Infinity", _raw_v1(kappa="Infinity"), ["body", "instances", 0, "kappa"]),
    ("-Infinity", _raw_v1(kappa="-Infinity"), ["body", "instances", 0, "kappa"]),
    ("overflowing float", _raw_v1(age="1e400"), ["body", "instances", 0, "age"]),
    ("integer beyond float64", _raw_v1(age="1" + "0" * 400), ["body", "instances", 0, "age"]),
    ("empty instances", {"instances": []}, ["body", "instances"]),
    ("no instances", {"samples": 8}, ["body", "instances"]),
    ("instances not a list", {"instances": ROW}, ["body", "instances"]),
    ("too many rows", {"instances": [ROW] * (MAX_ROWS + 1)}, ["body", "instances"]),
    ("samples above max_samples", {"instances": [ROW], "samples": 2049}, ["body", "samples"]),
    ("samples 0", {"instances": [ROW], "samples": 0}, ["body", "samples"]),
    ("samples a string", {"instances": [ROW], "samples": "many"}, ["body", "samples"]),
    ("negative seed", {"instances": [ROW], "seed": -1}, ["body", "seed"]),
    ("seed beyond 2^63", {"instances": [ROW], "seed": 2**63}, ["body", "seed"]),
    ("unknown top-level field", {"instances": [ROW], "sample": 8}, ["body", "sample"]),
]


@pytest.mark.parametrize(("body", "loc"), [pytest.param(b, loc, id=name) for name, b, loc in V1_CASES])
async def test_v1_bad_input_is_422_naming_the_field(
    asgi_client: httpx.AsyncClient, body: dict[str, Any] | str, loc: list[str | int]
) -> None:
    if isinstance(body, str):
        response = await asgi_client.post(PREDICT, content=body, headers={"content-type": "application/json"})
    else:
        response = await asgi_client.post(PREDICT, json=body)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, list) and detail
    assert all(isinstance(error["msg"], str) and error["msg"] for error in detail)
    assert any(error["loc"][: len(loc)] == loc for error in detail), detail


async def test_v1_null_creatinine_is_accepted(asgi_client: httpx.AsyncClient) -> None:
    response = await asgi_client.post(PREDICT, json={"instances": [{**ROW, "creatinine": None}], "samples": 8})
    assert response.status_code == 200
    assert len(response.json()["predictions"]) == 1


async def test_v1_malformed_json_is_422(asgi_client: httpx.AsyncClient) -> None:
    response = await asgi_client.post(PREDICT, content=b'{"instances": [', headers={"content-type": "application/json"})
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert detail[0]["loc"][0] == "body" and detail[0]["type"] == "json_invalid"


def _v2(rows: list[dict[str, Any]], **changes: Any) -> dict[str, Any]:
    """A /v2 body for ``rows`` with per-tensor changes (``age={"datatype": "BYTES"}``) and extra top-level keys."""
    tensors = []
    for name in rows[0]:
        tensor = {
            "name": name,
            "shape": [len(rows)],
            "datatype": "BYTES" if name == "sex" else "FP64",
            "data": [row[name] for row in rows],
        }
        tensors.append({**tensor, **changes.pop(name, {})})
    return {"inputs": tensors, "parameters": {"samples": 8}, **changes}


def _with_tensor(body: dict[str, Any], tensor: dict[str, Any]) -> dict[str, Any]:
    return {**body, "inputs": [*body["inputs"], tensor]}


# (case id, JSON body or raw text, text the error must contain); every one is a 400.
V2_CASES: list[tuple[str, dict[str, Any] | str, str]] = [
    ("missing input", _v2([_without(ROW, "age")]), "inputs.age"),
    ("unknown input", _v2([{**ROW, "height": 170}]), "inputs.height"),
    ("string for a number", _v2([{**ROW, "age": "62"}]), "inputs.age[0]"),
    ("number for a category", _v2([{**ROW, "sex": 1}]), "inputs.sex[0]"),
    ("NaN", _raw_v2("NaN"), "inputs.age[0]"),
    ("Infinity", _raw_v2("Infinity"), "inputs.age[0]"),
    ("integer beyond float64", _raw_v2("1" + "0" * 400), "inputs.age[0]"),
    ("zero rows", _v2([ROW], **{k: {"shape": [0], "data": []} for k in ROW}), "inputs"),
    ("no inputs", {"inputs": []}, "inputs"),
    ("too many rows", _v2([ROW] * (MAX_ROWS + 1)), "inputs"),
    ("samples above max_samples", _v2([ROW], parameters={"samples": 2049}), "parameters.samples"),
    ("samples 0", _v2([ROW], parameters={"samples": 0}), "parameters.samples"),
    ("samples a string", _v2([ROW], parameters={"samples": "64"}), "parameters.samples"),
    ("samples a float", _v2([ROW], parameters={"samples": 8.5}), "parameters.samples"),
    ("samples a bool", _v2([ROW], parameters={"samples": True}), "parameters.samples"),
    ("negative seed", _v2([ROW], parameters={"seed": -1}), "parameters.seed"),
    ("unknown sampler", _v2([ROW], parameters={"sampler": "magic"}), "parameters.sampler"),
    ("bank with another seed", _v2([ROW], parameters={"sampler": "bank", "seed": 9}), "parameters.seed"),
    ("tolerance a string", _v2([ROW], parameters={"tolerance": "tight"}), "parameters.tolerance"),
    ("tolerance 0", _v2([ROW], parameters={"tolerance": 0}), "parameters.tolerance"),
    ("BYTES for a number", _v2([ROW], age={"datatype": "BYTES"}), "inputs.age"),
    ("FP32 for a category", _v2([ROW], sex={"datatype": "FP32"}), "inputs.sex"),
    ("BOOL for a number", _v2([ROW], mgus={"datatype": "BOOL"}), "inputs.mgus"),
    ("unknown datatype", _v2([ROW], kappa={"datatype": "FLOAT"}), "inputs.kappa"),
    ("INT64 holding 1.5", _v2([{**ROW, "kappa": 1.5}], kappa={"datatype": "INT64"}), "inputs.kappa[0]"),
    ("shape not matching the data", _v2([ROW], age={"shape": [2]}), "inputs.age"),
    ("shape [N, 2]", _v2([ROW, ROW], age={"shape": [1, 2]}), "inputs.age"),
    ("negative shape", _v2([ROW], age={"shape": [-1]}), "inputs.age"),
    ("three dimensions", _v2([ROW], age={"shape": [1, 1, 1]}), "inputs.age"),
    ("four dimensions", _v2([ROW], age={"shape": [1, 1, 1, 1]}), "inputs.0.shape"),
    ("inputs of different N", _v2([ROW], age={"shape": [2], "data": [62, 63]}), "inputs"),
    (
        "duplicated input",
        _with_tensor(_v2([ROW]), {"name": "age", "shape": [1], "datatype": "FP64", "data": [1]}),
        "inputs.age",
    ),
    ("unknown output", _v2([ROW], outputs=[{"name": "label"}, {"name": "logits"}]), "outputs.logits"),
    ("output asked twice", _v2([ROW], outputs=[{"name": "label"}, {"name": "label"}]), "outputs.label"),
    ("INT8 out of range", _v2([{**ROW, "age": 1000}], age={"datatype": "INT8"}), "inputs.age[0]"),
    ("UINT32 negative", _v2([{**ROW, "mgus": -1}], mgus={"datatype": "UINT32"}), "inputs.mgus[0]"),
    ("nesting not matching [N]", _v2([ROW], age={"data": [[62]]}), "inputs.age"),
    ("nesting too deep", _v2([ROW], age={"shape": [1, 1], "data": [[[62]]]}), "inputs.age"),
    ("tensor without data", {"inputs": [{"name": "age", "shape": [1], "datatype": "FP64"}]}, "inputs.age.data"),
    ("unknown top-level field", _v2([ROW], input=[]), "body.input:"),
]


@pytest.mark.parametrize(("body", "names"), [pytest.param(b, n, id=name) for name, b, n in V2_CASES])
async def test_v2_bad_input_is_400_naming_the_field(
    asgi_client: httpx.AsyncClient, body: dict[str, Any] | str, names: str
) -> None:
    if isinstance(body, str):
        response = await asgi_client.post(INFER, content=body, headers={"content-type": "application/json"})
    else:
        response = await asgi_client.post(INFER, json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert isinstance(error, str)
    assert names in error, error


async def test_v2_malformed_json_is_400(asgi_client: httpx.AsyncClient) -> None:
    response = await asgi_client.post(INFER, content=b'{"inputs": [', headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert "JSON" in response.json()["error"]


async def test_v2_null_creatinine_is_accepted(asgi_client: httpx.AsyncClient) -> None:
    response = await asgi_client.post(INFER, json=_v2([{**ROW, "creatinine": None}]))
    assert response.status_code == 200
    assert response.json()["outputs"][0]["shape"] == [1, 2]


def _oversized(key: str) -> bytes:
    """A well-formed body of just over MAX_BODY_BYTES (/v1 instances or /v2 inputs)."""
    rows = [ROW]
    while True:
        body = json.dumps({key: rows} if key == "instances" else _v2(rows)).encode()
        if len(body) > MAX_BODY_BYTES:
            return body
        rows = rows * 2


@pytest.mark.parametrize(("path", "key"), [(PREDICT, "detail"), (INFER, "error")])
async def test_body_over_the_limit_is_413(asgi_client: httpx.AsyncClient, path: str, key: str) -> None:
    response = await asgi_client.post(
        path,
        content=_oversized("instances" if key == "detail" else "inputs"),
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 413
    assert str(MAX_BODY_BYTES) in response.json()[key]


@pytest.mark.parametrize(("path", "key"), [(PREDICT, "detail"), (INFER, "error")])
async def test_streamed_body_over_the_limit_is_413(asgi_client: httpx.AsyncClient, path: str, key: str) -> None:
    """No Content-Length (chunked upload): the limit is enforced while the body streams in."""
    body = _oversized("instances" if key == "detail" else "inputs")

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 4096):
            yield body[start : start + 4096]

    response = await asgi_client.post(path, content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert str(MAX_BODY_BYTES) in response.json()[key]


async def test_server_still_answers_after_bad_inputs(asgi_client: httpx.AsyncClient, to_v2: V2Inputs) -> None:
    v1 = await asgi_client.post(PREDICT, json={"instances": [ROW], "samples": 8, "seed": 1})
    assert v1.status_code == 200
    assert v1.json()["predictions"][0]["decision"] == "accept"
    v2 = await asgi_client.post(INFER, json={"inputs": to_v2([ROW]), "parameters": {"samples": 8}})
    assert v2.status_code == 200
    assert len(v2.json()["outputs"]) == 14


async def test_v2_unknown_path_and_method_keep_the_v2_error_shape(asgi_client: httpx.AsyncClient) -> None:
    missing = await asgi_client.get("/v2/nothing-here")
    assert missing.status_code == 404
    assert "error" in missing.json()
    wrong_method = await asgi_client.get(INFER)
    assert wrong_method.status_code == 405
    assert "error" in wrong_method.json() and wrong_method.headers["allow"] == "POST"
    v1_missing = await asgi_client.get("/v1/nothing-here")
    assert v1_missing.status_code == 404 and "detail" in v1_missing.json()
