"""The real thing: a uvicorn process on a loopback port, driven over HTTP with httpx.

Round trips, the OOD gate, a few malformed requests, 32 concurrent clients against a sequential replay
(dynamic batching must never mix answers), and drift of the gate's scores after a unit mismatch.
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

pytestmark = pytest.mark.anyio

MODEL = "flchain-mortality"
PREDICT = f"/v1/models/{MODEL}/predict"
INFER = f"/v2/models/{MODEL}/infer"
MAX_ROWS = 64
DRIFT_WINDOW = 200
CLIENTS = 32
REQUESTS_PER_CLIENT = 3

CheckPrediction = Callable[[dict[str, Any], int, dict[str, Any], Path], None]


@pytest.fixture
async def client(live_server: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=live_server, timeout=60.0) as http:
        yield http


async def _metrics(client: httpx.AsyncClient, parse_metrics: Callable[[str], Any]) -> Any:
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return parse_metrics(response.text)


@functools.cache
def _test_split() -> tuple[dict[str, Any], ...]:
    """The bundled model's held-out test split (in-distribution records, creatinine present), as JSON records."""
    from app.data.flchain import load_flchain

    frame = load_flchain(seed=0).test.frame
    frame = frame[frame["creatinine"].notna()]
    return tuple(json.loads(frame.to_json(orient="records")))


def _normal_rows(count: int, seed: int) -> list[dict[str, Any]]:
    """``count`` in-distribution flchain records drawn from the test split (ages 50-69, creatinine in mg/dL)."""
    rows = _test_split()
    return [dict(rows[i]) for i in np.random.default_rng(seed).choice(len(rows), size=count, replace=False)]


async def test_live_listing_shows_the_failed_model(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/models")
    assert response.status_code == 200
    states = {m["name"]: m["state"] for m in response.json()["models"]}
    assert states == {"flchain-mortality": "ready", "tiny": "ready", "broken": "failed"}
    assert (await client.get("/v2/models/broken/ready")).status_code == 503


async def test_live_v1_round_trip_and_replay(
    client: httpx.AsyncClient, model_repository: Path, flchain_row: dict[str, Any], check_prediction: CheckPrediction
) -> None:
    rows = [flchain_row, {**flchain_row, "sex": "M", "age": 66}]
    response = await client.post(PREDICT, json={"instances": rows})
    assert response.status_code == 200
    body = response.json()
    manifest = json.loads((model_repository / MODEL / "manifest.json").read_text())
    check_prediction(body, 2, manifest, model_repository / MODEL / "weights.safetensors")
    assert body["samples"] == 512
    replay = await client.post(PREDICT, json={"instances": rows, "seed": body["seed"]})
    assert replay.status_code == 200
    assert replay.json() == body


async def test_live_v2_matches_v1(
    client: httpx.AsyncClient, flchain_row: dict[str, Any], to_v2: Callable[..., list[dict[str, Any]]]
) -> None:
    rows = [flchain_row, {**flchain_row, "creatinine": 88.4}]
    datatypes = {"age": "INT32", "kappa": "FP32", "flc_grp": "INT64", "mgus": "INT64"}
    v2 = await client.post(INFER, json={"inputs": to_v2(rows, datatypes), "parameters": {"samples": 64, "seed": 5}})
    v1 = await client.post(PREDICT, json={"instances": rows, "samples": 64, "seed": 5})
    assert v2.status_code == 200 and v1.status_code == 200
    outputs = {o["name"]: o for o in v2.json()["outputs"]}
    assert v2.json()["parameters"]["samples"] == 64 and v2.json()["parameters"]["seed"] == 5
    predictions = v1.json()["predictions"]
    normal, rejected = predictions
    assert outputs["probabilities"]["data"] == [*normal["probabilities"].values(), None, None]
    assert outputs["mutual_information"]["data"] == [normal["uncertainty"]["epistemic"], None]
    assert outputs["decision"]["data"] == [row["decision"] for row in predictions] == ["accept", "reject"]
    assert outputs["reasons"]["data"] == ["", "bounds:creatinine"] == [",".join(r["reasons"]) for r in predictions]


async def test_live_malformed_requests_then_a_valid_one(client: httpx.AsyncClient, flchain_row: dict[str, Any]) -> None:
    headers = {"content-type": "application/json"}
    nan = json.dumps({"instances": [flchain_row]}).replace('"age": 62', '"age": NaN')
    response = await client.post(PREDICT, content=nan, headers=headers)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "instances", 0, "age"]
    response = await client.post(INFER, content=b'{"inputs": [', headers=headers)
    assert response.status_code == 400
    assert "JSON" in response.json()["error"]
    oversized = json.dumps({"instances": [flchain_row] * 1000}).encode()
    response = await client.post(PREDICT, content=oversized, headers=headers)
    assert response.status_code == 413
    assert "65536" in response.json()["detail"]

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: chunked transfer encoding
        for start in range(0, len(oversized), 8192):
            yield oversized[start : start + 8192]

    response = await client.post(PREDICT, content=chunks(), headers=headers)
    assert response.status_code == 413
    assert "65536" in response.json()["detail"]
    response = await client.post(PREDICT, json={"instances": [flchain_row], "samples": 8, "seed": 1})
    assert response.status_code == 200
    assert response.json()["predictions"][0]["decision"] == "accept"


def _client_requests(client_index: int) -> list[dict[str, Any]]:
    """A few requests of one client: its own seeds and rows (1-3 rows each), a few sample counts."""
    rows = _normal_rows(REQUESTS_PER_CLIENT * 3, seed=100 + client_index)
    requests = []
    for k in range(REQUESTS_PER_CLIENT):
        count = 1 + (client_index + k) % 3
        requests.append(
            {
                "instances": rows[3 * k : 3 * k + count],
                "samples": (32, 64)[(client_index + k) % 2],
                "seed": 10_000 + 100 * client_index + k,
            }
        )
    return requests


async def test_concurrent_clients_get_their_own_answers(
    live_server: str, client: httpx.AsyncClient, parse_metrics: Callable[[str], Any]
) -> None:
    plan = [_client_requests(index) for index in range(CLIENTS)]
    before = await _metrics(client, parse_metrics)

    async def run_client(requests: list[dict[str, Any]]) -> list[tuple[int, dict[str, Any]]]:
        async with httpx.AsyncClient(base_url=live_server, timeout=60.0) as own:
            answers = []
            for request in requests:
                response = await own.post(PREDICT, json=request)
                answers.append((response.status_code, response.json()))
            return answers

    concurrent = await asyncio.gather(*(run_client(requests) for requests in plan))
    after = await _metrics(client, parse_metrics)

    for requests, answers in zip(plan, concurrent, strict=True):
        for request, (status, body) in zip(requests, answers, strict=True):
            assert status == 200, body
            replay = await client.post(PREDICT, json=request)
            assert replay.status_code == 200
            assert body == replay.json()
            assert body["seed"] == request["seed"] and body["samples"] == request["samples"]
            assert len(body["predictions"]) == len(request["instances"])

    def delta(name: str, **labels: str) -> float:
        return after.count(name, model=MODEL, **labels) - before.count(name, model=MODEL, **labels)

    # Every request went through exactly one pass. How many passes they shared depends on the scheduler, so it
    # is not asserted here; tests/serve/test_batching.py checks coalescing deterministically.
    assert delta("sbnn_batch_requests_sum") == CLIENTS * REQUESTS_PER_CLIENT
    assert 1 <= delta("sbnn_batch_requests_count") <= CLIENTS * REQUESTS_PER_CLIENT


async def test_drift_gauges_rise_after_a_unit_mismatch(
    client: httpx.AsyncClient, parse_metrics: Callable[[str], Any]
) -> None:
    normal = _normal_rows(DRIFT_WINDOW + 2 * MAX_ROWS, seed=7)
    for index, start in enumerate(range(0, DRIFT_WINDOW, 50)):  # fill the whole window with normal rows
        response = await client.post(PREDICT, json={"instances": normal[start : start + 50], "seed": index})
        assert response.status_code == 200
    baseline = await _metrics(client, parse_metrics)
    assert baseline.value("sbnn_drift_window_rows", model=MODEL) == DRIFT_WINDOW
    rate = baseline.value("sbnn_drift_ood_rate", model=MODEL)
    assert rate is not None and rate < 0.15  # in distribution: few rows referred
    before = {}
    for score in ("epistemic", "density"):
        psi, ks = (baseline.value(f"sbnn_drift_{name}", model=MODEL, score=score) for name in ("psi", "ks"))
        assert psi is not None and ks is not None
        assert psi < 0.5 and ks < 0.3, score  # in distribution: no drift to speak of
        before[score] = (psi, ks)

    # creatinine sent in mg/L instead of mg/dL (x10: mostly still plausible, so scored): more than half the window,
    # in requests of at most MAX_ROWS
    shifted = [{**row, "creatinine": row["creatinine"] * 10} for row in normal[DRIFT_WINDOW:]]
    for index, start in enumerate(range(0, len(shifted), MAX_ROWS)):
        response = await client.post(PREDICT, json={"instances": shifted[start : start + MAX_ROWS], "seed": 50 + index})
        assert response.status_code == 200
        assert "accept" not in {p["decision"] for p in response.json()["predictions"]}  # refer, or reject above 30
    drifted = await _metrics(client, parse_metrics)
    assert drifted.value("sbnn_drift_ood_rate", model=MODEL) > max(0.3, rate)
    for score, (psi, ks) in before.items():
        assert drifted.value("sbnn_drift_psi", model=MODEL, score=score) > max(psi, 1.0), score
        assert drifted.value("sbnn_drift_ks", model=MODEL, score=score) > ks, score
