"""/v2 Open Inference Protocol (KServe v2) on the in-process app, and the OpenAPI document."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.anyio

INFER = "/v2/models/flchain-mortality/infer"
FEATURES = ["age", "sex", "kappa", "lambda", "flc_grp", "creatinine", "mgus"]
VECTOR_OUTPUTS = [
    "total_entropy",
    "aleatoric",
    "mutual_information",
    "predictive_std",
    "support_score",
    "support_percentile",
    "density_score",
    "density_percentile",
    "epistemic_percentile",
    "ood_flag",
    "decision",
    "reasons",
    "label",
]
# One numeric datatype of each kind the spec allows (values are JSON numbers either way); BYTES for sex.
MIXED_DATATYPES = {
    "age": "INT64",
    "kappa": "FP32",
    "lambda": "FP64",
    "flc_grp": "INT32",
    "creatinine": "FP64",
    "mgus": "INT64",
}

V2Inputs = Callable[..., list[dict[str, Any]]]


def _outputs(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {output["name"]: output for output in body["outputs"]}


async def test_server_metadata(asgi_client: httpx.AsyncClient) -> None:
    response = await asgi_client.get("/v2")
    assert response.status_code == 200
    body = response.json()
    assert body["name"] == "sbnn"
    assert isinstance(body["version"], str) and body["version"]
    assert body["extensions"] == ["binary_tensor_data", "model_repository"]


async def test_health(asgi_client: httpx.AsyncClient) -> None:
    live = await asgi_client.get("/v2/health/live")
    assert live.status_code == 200
    assert live.json() == {"live": True}
    ready = await asgi_client.get("/v2/health/ready")
    assert ready.status_code == 200
    assert ready.json() == {"ready": True}


async def test_model_metadata(asgi_client: httpx.AsyncClient, model_repository: Path) -> None:
    response = await asgi_client.get("/v2/models/flchain-mortality")
    assert response.status_code == 200
    body = response.json()
    assert body["name"] == "flchain-mortality" and body["versions"] == ["1"]
    assert [i["name"] for i in body["inputs"]] == FEATURES
    inputs = {i["name"]: i for i in body["inputs"]}
    assert inputs["sex"]["datatype"] == "BYTES"
    assert all(inputs[name]["datatype"] == "FP64" for name in FEATURES if name != "sex")
    assert all(i["shape"] == [-1] for i in body["inputs"])
    outputs = {o["name"]: o for o in body["outputs"]}
    assert set(outputs) == {"probabilities", *VECTOR_OUTPUTS}
    assert outputs["probabilities"] == {"name": "probabilities", "datatype": "FP64", "shape": [-1, 2]}
    for name in ("total_entropy", "aleatoric", "mutual_information", "density_score", "epistemic_percentile"):
        assert outputs[name]["datatype"] == "FP64" and outputs[name]["shape"] == [-1]
    assert outputs["ood_flag"]["datatype"] == "BOOL"
    assert outputs["decision"]["datatype"] == "BYTES" and outputs["reasons"]["datatype"] == "BYTES"
    versioned = await asgi_client.get("/v2/models/flchain-mortality/versions/1")
    assert versioned.status_code == 200
    assert versioned.json() == body


@pytest.mark.parametrize(
    ("path", "status", "ready"),
    [
        ("/v2/models/flchain-mortality/ready", 200, True),
        ("/v2/models/tiny/ready", 200, True),
        ("/v2/models/flchain-mortality/versions/1/ready", 200, True),
        ("/v2/models/broken/ready", 503, False),
    ],
)
async def test_model_ready(asgi_client: httpx.AsyncClient, path: str, status: int, ready: bool) -> None:
    response = await asgi_client.get(path)
    assert response.status_code == status
    assert response.json()["ready"] is ready


async def test_failed_model_is_503_for_metadata_and_infer(asgi_client: httpx.AsyncClient) -> None:
    metadata = await asgi_client.get("/v2/models/broken")
    assert metadata.status_code == 503
    assert "broken" in metadata.json()["error"]
    inputs = [
        {"name": "x1", "shape": [1], "datatype": "FP64", "data": [0.1]},
        {"name": "x2", "shape": [1], "datatype": "FP64", "data": [0.2]},
        {"name": "site", "shape": [1], "datatype": "BYTES", "data": ["east"]},
    ]
    infer = await asgi_client.post("/v2/models/broken/infer", json={"inputs": inputs})
    assert infer.status_code == 503
    assert "sha256" in infer.json()["error"]


async def test_infer_round_trip_matches_v1(
    asgi_client: httpx.AsyncClient, model_repository: Path, flchain_row: dict[str, Any], to_v2: V2Inputs
) -> None:
    rows = [flchain_row, {**flchain_row, "sex": "M", "age": 67, "kappa": 2.0}, {**flchain_row, "creatinine": 88.4}]
    request = {"id": "req-1", "inputs": to_v2(rows, MIXED_DATATYPES), "parameters": {"samples": 64, "seed": 5}}
    response = await asgi_client.post(INFER, json=request)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model_name"] == "flchain-mortality" and body["model_version"] == "1" and body["id"] == "req-1"
    assert body["parameters"]["samples"] == 64 and body["parameters"]["seed"] == 5
    assert body["parameters"]["sampler"] in {"fresh", "local"} and body["parameters"]["mc_error_probability"] > 0
    manifest = json.loads((model_repository / "flchain-mortality" / "manifest.json").read_text())
    assert body["parameters"]["model_sha256"] == manifest["weights"]["sha256"]
    outputs = _outputs(body)
    assert [o["name"] for o in body["outputs"]] == ["probabilities", *VECTOR_OUTPUTS]
    assert outputs["probabilities"]["shape"] == [3, 2] and len(outputs["probabilities"]["data"]) == 6
    for name in VECTOR_OUTPUTS:
        assert outputs[name]["shape"] == [3] and len(outputs[name]["data"]) == 3, name
    assert outputs["ood_flag"]["datatype"] == "BOOL" and outputs["decision"]["datatype"] == "BYTES"
    # The third row sends creatinine in µmol/L: rejected, not scored (null FP64 values, an empty label).
    assert outputs["ood_flag"]["data"][2] is True and outputs["decision"]["data"][2] == "reject"
    assert outputs["reasons"]["data"][2] == "bounds:creatinine" and outputs["label"]["data"][2] == ""
    assert outputs["probabilities"]["data"][4:] == [None, None] and outputs["mutual_information"]["data"][2] is None
    assert outputs["density_score"]["data"][2] is None and outputs["support_score"]["data"][2] is None

    v1 = await asgi_client.post(
        "/v1/models/flchain-mortality/predict", json={"instances": rows, "samples": 64, "seed": 5}
    )
    assert v1.status_code == 200
    for row, prediction in enumerate(v1.json()["predictions"]):
        gate = prediction["gate"]
        assert outputs["decision"]["data"][row] == prediction["decision"]
        assert outputs["reasons"]["data"][row] == ",".join(prediction["reasons"])
        assert outputs["ood_flag"]["data"][row] is (prediction["decision"] != "accept")
        assert outputs["support_score"]["data"][row] == gate["support"]["score"]
        assert outputs["support_percentile"]["data"][row] == gate["support"]["percentile"]
        assert outputs["density_score"]["data"][row] == gate["density"]["score"]
        assert outputs["density_percentile"]["data"][row] == gate["density"]["percentile"]
        assert outputs["epistemic_percentile"]["data"][row] == gate["epistemic"]["percentile"]
        if prediction["decision"] == "reject":
            continue
        assert outputs["probabilities"]["data"][2 * row : 2 * row + 2] == list(prediction["probabilities"].values())
        assert outputs["mutual_information"]["data"][row] == prediction["uncertainty"]["epistemic"]
        assert outputs["total_entropy"]["data"][row] == prediction["uncertainty"]["total"]
        assert outputs["aleatoric"]["data"][row] == prediction["uncertainty"]["aleatoric"]
        assert outputs["predictive_std"]["data"][row] == prediction["uncertainty"]["std"]
        assert outputs["label"]["data"][row] == prediction["label"]


async def test_versioned_infer(asgi_client: httpx.AsyncClient, flchain_row: dict[str, Any], to_v2: V2Inputs) -> None:
    request = {"inputs": to_v2([flchain_row]), "parameters": {"samples": 16, "seed": 3}}
    plain = await asgi_client.post(INFER, json=request)
    versioned = await asgi_client.post("/v2/models/flchain-mortality/versions/1/infer", json=request)
    assert plain.status_code == 200 and versioned.status_code == 200
    assert versioned.json() == plain.json()
    unknown = await asgi_client.post("/v2/models/flchain-mortality/versions/9/infer", json=request)
    assert unknown.status_code == 404
    assert "versions/9" in unknown.json()["error"]
    unknown_ready = await asgi_client.get("/v2/models/flchain-mortality/versions/9/ready")
    assert unknown_ready.status_code == 404


async def test_an_unknown_model_is_404_whatever_the_body_holds(
    asgi_client: httpx.AsyncClient, flchain_row: dict[str, Any], to_v2: V2Inputs
) -> None:
    bad_bodies = [
        {"inputs": to_v2([flchain_row]), "parameters": {"samples": "x"}},
        {"inputs": to_v2([flchain_row]), "outputs": [{"name": "nope"}]},
        {"inputs": [{"name": "nope", "datatype": "FP64", "shape": [1], "data": [1.0]}]},
    ]
    for body in bad_bodies:
        unknown = await asgi_client.post("/v2/models/nope/infer", json=body)
        assert unknown.status_code == 404, unknown.text
        known = await asgi_client.post(INFER, json=body)
        assert known.status_code == 400, known.text


async def test_outputs_filter(asgi_client: httpx.AsyncClient, flchain_row: dict[str, Any], to_v2: V2Inputs) -> None:
    request = {
        "inputs": to_v2([flchain_row, flchain_row]),
        "parameters": {"samples": 16, "seed": 1},
        "outputs": [{"name": "decision"}, {"name": "reasons"}, {"name": "density_score"}],
    }
    response = await asgi_client.post(INFER, json=request)
    assert response.status_code == 200
    outputs = response.json()["outputs"]
    assert [o["name"] for o in outputs] == ["decision", "reasons", "density_score"]
    assert outputs[0]["data"] == ["accept", "accept"] and outputs[1]["data"] == ["", ""]


async def test_a_row_outside_the_support_is_referred_with_its_reason(
    asgi_client: httpx.AsyncClient, flchain_row: dict[str, Any], to_v2: V2Inputs
) -> None:
    rows = [flchain_row, {**flchain_row, "age": 95}, {**flchain_row, "age": 720}]  # the last: age in months
    response = await asgi_client.post(INFER, json={"inputs": to_v2(rows), "parameters": {"seed": 2}})
    assert response.status_code == 200
    outputs = _outputs(response.json())
    assert outputs["decision"]["data"] == ["accept", "refer", "reject"]
    reasons = outputs["reasons"]["data"]
    assert reasons[1].split(",")[0] == "support:age" and reasons[2] == "bounds:age"
    assert outputs["label"]["data"][1] in {"alive", "died"} and outputs["probabilities"]["data"][2] is not None


async def test_every_row_rejected_answers_without_a_seed(
    asgi_client: httpx.AsyncClient, flchain_row: dict[str, Any], to_v2: V2Inputs
) -> None:
    response = await asgi_client.post(INFER, json={"inputs": to_v2([{**flchain_row, "mgus": 7}])})
    assert response.status_code == 200
    body = response.json()
    assert "seed" not in body["parameters"] and body["parameters"]["samples"] == 512
    assert _outputs(body)["decision"]["data"] == ["reject"]


async def test_nested_data_with_shape_n_by_1(
    asgi_client: httpx.AsyncClient, flchain_row: dict[str, Any], to_v2: V2Inputs
) -> None:
    rows = [flchain_row, {**flchain_row, "age": 52}]
    flat = await asgi_client.post(INFER, json={"inputs": to_v2(rows), "parameters": {"samples": 16, "seed": 2}})
    nested_inputs = [{**tensor, "shape": [2, 1], "data": [[v] for v in tensor["data"]]} for tensor in to_v2(rows)]
    nested = await asgi_client.post(INFER, json={"inputs": nested_inputs, "parameters": {"samples": 16, "seed": 2}})
    assert flat.status_code == 200 and nested.status_code == 200
    assert nested.json() == flat.json()
    assert _outputs(nested.json())["probabilities"]["shape"] == [2, 2]


async def test_null_creatinine_is_accepted(
    asgi_client: httpx.AsyncClient, flchain_row: dict[str, Any], to_v2: V2Inputs
) -> None:
    rows = [{**flchain_row, "creatinine": None}]
    response = await asgi_client.post(INFER, json={"inputs": to_v2(rows), "parameters": {"samples": 16}})
    assert response.status_code == 200
    assert _outputs(response.json())["label"]["data"][0] in ("alive", "died")


async def test_openapi_lists_every_route_and_request_schema(asgi_client: httpx.AsyncClient) -> None:
    response = await asgi_client.get("/openapi.json")
    assert response.status_code == 200
    document = response.json()
    paths = document["paths"]
    expected = {
        "/v1/models": "get",
        "/v1/models/{name}": "get",
        "/v1/models/{name}/predict": "post",
        "/v2": "get",
        "/v2/health/live": "get",
        "/v2/health/ready": "get",
        "/v2/models/{name}": "get",
        "/v2/models/{name}/ready": "get",
        "/v2/models/{name}/infer": "post",
        "/v2/models/{name}/versions/{version}/infer": "post",
        "/metrics": "get",
    }
    for path, method in expected.items():
        assert path in paths, path
        assert method in paths[path], path
    schemas = document["components"]["schemas"]
    assert "PredictRequest" in schemas and "InferenceRequest" in schemas
    predict_body = paths["/v1/models/{name}/predict"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert predict_body["$ref"].endswith("/PredictRequest")
    infer_body = paths["/v2/models/{name}/infer"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert infer_body["$ref"].endswith("/InferenceRequest")


async def test_infer_sampler_parameter_is_honoured(
    asgi_client: httpx.AsyncClient, flchain_row: dict[str, Any], to_v2: V2Inputs
) -> None:
    for sampler in ("bank", "fresh", "local"):
        parameters = {"sampler": sampler, "samples": 128, **({} if sampler == "bank" else {"seed": 3})}
        response = await asgi_client.post(INFER, json={"inputs": to_v2([flchain_row]), "parameters": parameters})
        assert response.status_code == 200, response.text
        assert response.json()["parameters"]["sampler"] == sampler
