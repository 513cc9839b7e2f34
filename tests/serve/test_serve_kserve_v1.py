"""KServe V1 protocol aliases: liveness at /, POST /v1/models/{name}:predict and the ready field.

In-process for the answers and errors; against the real uvicorn for the calls the KServe SDK's
InferenceRESTClient makes with protocol v1 (is_server_live, is_model_ready, infer), parsed as it parses them.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.anyio

MODEL = "flchain-mortality"
ALIAS = f"/v1/models/{MODEL}:predict"
PREDICT = f"/v1/models/{MODEL}/predict"
ROW: dict[str, Any] = {"age": 62, "sex": "F", "kappa": 1.2, "lambda": 1.5, "flc_grp": 5, "creatinine": 1.0, "mgus": 0}


def _without(row: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k != key}


async def test_root_is_alive(asgi_client: httpx.AsyncClient) -> None:
    response = await asgi_client.get("/")
    assert response.status_code == 200
    assert response.json() == {"status": "alive"}


@pytest.mark.parametrize("options", [{"seed": 7, "samples": 64}, {"seed": 11, "sampler": "fresh"}, {}])
async def test_predict_alias_answers_the_canonical_predictions(
    asgi_client: httpx.AsyncClient, flchain_row: dict[str, Any], options: dict[str, Any]
) -> None:
    rows = [flchain_row, {**flchain_row, "age": 95}, {**flchain_row, "age": 10000}, {**flchain_row, "sex": "M"}]
    alias = await asgi_client.post(ALIAS, json={"instances": rows, **options})
    canonical = await asgi_client.post(PREDICT, json={"instances": rows, **options})
    assert alias.status_code == 200, alias.text
    assert canonical.status_code == 200, canonical.text
    body = alias.json()
    assert set(body) == {"predictions"}  # KServe V1: {"predictions": [...]}, one entry per instance
    assert len(body["predictions"]) == len(rows)
    assert body["predictions"] == canonical.json()["predictions"]  # the same numbers, gate and reasons
    assert [p["decision"] for p in body["predictions"]] == ["accept", "refer", "reject", "accept"]


async def test_predict_alias_on_the_tiny_model(asgi_client: httpx.AsyncClient) -> None:
    rows = [{"x1": 0.3, "x2": -1.0, "site": "east"}, {"x1": -2.0, "x2": None, "site": "north"}]
    alias = await asgi_client.post("/v1/models/tiny:predict", json={"instances": rows, "seed": 9})
    canonical = await asgi_client.post("/v1/models/tiny/predict", json={"instances": rows, "seed": 9})
    assert alias.status_code == 200 and canonical.status_code == 200
    assert alias.json()["predictions"] == canonical.json()["predictions"]


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"instances": [_without(ROW, "age")]}, ["body", "instances", 0, "age"]),
        ({"instances": [ROW, _without(ROW, "mgus")]}, ["body", "instances", 1, "mgus"]),
        ({"instances": [ROW, {**ROW, "height": 170}]}, ["body", "instances", 1, "height"]),
        ({"instances": [{**ROW, "age": "62"}]}, ["body", "instances", 0, "age"]),
        ({"instances": [ROW, ROW, {**ROW, "sex": 1}]}, ["body", "instances", 2, "sex"]),
        ({"instances": [list(ROW.values())]}, ["body", "instances", 0]),  # positional rows: records only
        ({"instances": []}, ["body", "instances"]),
        ({"inputs": [ROW]}, ["body", "inputs"]),  # the TF-style key: refused by name
        ({"instances": [ROW], "samples": 0}, ["body", "samples"]),
        ({"instances": [ROW], "sampler": "bank", "seed": 7}, ["body", "seed"]),
    ],
    ids=lambda value: str(value) if isinstance(value, list) else None,
)
async def test_bad_inputs_are_422_naming_the_field(
    asgi_client: httpx.AsyncClient, body: dict[str, Any], loc: list[str | int]
) -> None:
    response = await asgi_client.post(ALIAS, json=body)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert loc in [d["loc"] for d in detail]
    assert all(d["msg"] for d in detail)


async def test_unknown_model_is_404_and_a_failed_one_503(
    asgi_client: httpx.AsyncClient, flchain_row: dict[str, Any]
) -> None:
    unknown = await asgi_client.post("/v1/models/nope:predict", json={"instances": [flchain_row]})
    assert unknown.status_code == 404
    assert unknown.json() == {"detail": "model 'nope' not found"}
    failed = await asgi_client.post("/v1/models/broken:predict", json={"instances": [{"x1": 0.3}]})
    assert failed.status_code == 503
    assert "broken" in failed.json()["detail"] and "sha256" in failed.json()["detail"]


@pytest.mark.parametrize(
    ("name", "state", "ready"), [(MODEL, "ready", True), ("tiny", "ready", True), ("broken", "failed", False)]
)
async def test_model_metadata_and_listing_carry_ready(
    asgi_client: httpx.AsyncClient, name: str, state: str, ready: bool
) -> None:
    response = await asgi_client.get(f"/v1/models/{name}")
    assert response.status_code == 200  # a failed model stays 200 with its state and reason
    body = response.json()
    assert body["name"] == name and body["state"] == state and body["ready"] is ready
    listing = await asgi_client.get("/v1/models")
    assert listing.status_code == 200
    (entry,) = [m for m in listing.json()["models"] if m["name"] == name]
    assert entry["state"] == state and entry["ready"] is ready


@pytest.fixture
async def live(live_server: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=live_server, timeout=60.0) as http:
        yield http


async def _sdk_model_ready(client: httpx.AsyncClient, name: str) -> bool:
    """InferenceRESTClient.is_model_ready with protocol v1: 503 is False, another error raises, else `ready`."""
    response = await client.get(f"/v1/models/{name}")
    if response.status_code == 503:
        return False
    response.raise_for_status()
    return response.json().get("ready")


async def test_the_kserve_sdk_v1_calls_over_real_http(live: httpx.AsyncClient, flchain_row: dict[str, Any]) -> None:
    root = await live.get("/")
    assert root.status_code == 200
    assert root.json().get("status").lower() == "alive"  # is_server_live
    assert await _sdk_model_ready(live, MODEL) is True
    assert await _sdk_model_ready(live, "broken") is False
    with pytest.raises(httpx.HTTPStatusError):
        await _sdk_model_ready(live, "nope")
    body = {"instances": [flchain_row, {**flchain_row, "kappa": 2.5}], "seed": 5, "samples": 128}
    # infer: the dict serialised to JSON bytes, posted with content-type application/json
    response = await live.post(ALIAS, content=json.dumps(body).encode(), headers={"content-type": "application/json"})
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    canonical = await live.post(PREDICT, json=body)
    assert predictions == canonical.json()["predictions"]
    assert all(set(p["probabilities"]) == {"alive", "died"} for p in predictions)


async def test_openapi_lists_the_aliases_with_the_v1_request_schema(asgi_client: httpx.AsyncClient) -> None:
    response = await asgi_client.get("/openapi.json")
    assert response.status_code == 200
    paths = response.json()["paths"]
    assert "get" in paths["/"]
    operation = paths["/v1/models/{name}:predict"]["post"]
    assert operation["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/PredictRequest")
    answer = operation["responses"]["200"]["content"]["application/json"]["schema"]
    assert answer["$ref"].endswith("/KServePredictResponse")
    operation_ids = [op["operationId"] for methods in paths.values() for op in methods.values()]
    assert len(operation_ids) == len(set(operation_ids))  # the alias does not shadow /predict's operation
