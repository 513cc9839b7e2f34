"""/v1 REST API on the in-process app: predict round trip, replay by seed, the OOD gate, model metadata."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.serve.settings import RejectMode, Settings

pytestmark = pytest.mark.anyio

PREDICT = "/v1/models/flchain-mortality/predict"
CheckPrediction = Callable[[dict[str, Any], int, dict[str, Any], Path], None]


def _manifest(repository: Path, name: str) -> dict[str, Any]:
    return json.loads((repository / name / "manifest.json").read_text())


async def test_predict_round_trip(
    asgi_client: httpx.AsyncClient,
    model_repository: Path,
    flchain_row: dict[str, Any],
    check_prediction: CheckPrediction,
) -> None:
    rows = [flchain_row, {**flchain_row, "age": 55, "sex": "M", "kappa": 0.9}, {**flchain_row, "creatinine": 88.4}]
    response = await asgi_client.post(PREDICT, json={"instances": rows})
    assert response.status_code == 200, response.text
    body = response.json()
    manifest = _manifest(model_repository, "flchain-mortality")
    check_prediction(body, 3, manifest, model_repository / "flchain-mortality" / "weights.safetensors")
    assert body["samples"] == 512 == manifest["default_samples"]
    assert body["model"]["kind"] == "lowrank"


async def test_predict_round_trip_on_the_tiny_model(
    asgi_client: httpx.AsyncClient, model_repository: Path, check_prediction: CheckPrediction
) -> None:
    rows = [{"x1": 0.3, "x2": -1.0, "site": "east"}, {"x1": -2.0, "x2": None, "site": "north"}]
    response = await asgi_client.post("/v1/models/tiny/predict", json={"instances": rows, "seed": 9})
    assert response.status_code == 200, response.text
    body = response.json()
    manifest = _manifest(model_repository, "tiny")
    check_prediction(body, 2, manifest, model_repository / "tiny" / "weights.safetensors")
    assert body["samples"] == manifest["default_samples"] and body["seed"] == 9


async def test_same_seed_reproduces_the_answer(asgi_client: httpx.AsyncClient, flchain_row: dict[str, Any]) -> None:
    request = {"instances": [flchain_row, {**flchain_row, "age": 51}], "samples": 64, "seed": 123}
    first = await asgi_client.post(PREDICT, json=request)
    second = await asgi_client.post(PREDICT, json=request)
    assert first.status_code == 200 and second.status_code == 200
    assert first.json()["seed"] == 123
    assert first.json() == second.json()


async def test_reported_seed_replays_an_unseeded_answer(
    asgi_client: httpx.AsyncClient, flchain_row: dict[str, Any]
) -> None:
    request: dict[str, Any] = {"instances": [flchain_row, {**flchain_row, "kappa": 2.5}], "samples": 64}
    fresh = await asgi_client.post(PREDICT, json=request)
    assert fresh.status_code == 200
    seed = fresh.json()["seed"]
    assert isinstance(seed, int) and seed >= 0
    replay = await asgi_client.post(PREDICT, json={**request, "seed": seed})
    assert replay.status_code == 200
    assert replay.json() == fresh.json()


async def test_different_seeds_give_different_probabilities(
    asgi_client: httpx.AsyncClient, flchain_row: dict[str, Any]
) -> None:
    answers = []
    for seed in (1, 2):
        response = await asgi_client.post(PREDICT, json={"instances": [flchain_row], "samples": 64, "seed": seed})
        assert response.status_code == 200
        answers.append(response.json()["predictions"][0]["probabilities"])
    assert answers[0] != answers[1]


@pytest.mark.parametrize("samples", [1, 64, 2048])
async def test_samples_override_is_honoured(
    asgi_client: httpx.AsyncClient, flchain_row: dict[str, Any], samples: int
) -> None:
    response = await asgi_client.post(PREDICT, json={"instances": [flchain_row], "samples": samples, "seed": 4})
    assert response.status_code == 200
    body = response.json()
    assert body["samples"] == samples
    if samples == 1:  # one weight draw: nothing to disagree with
        assert body["predictions"][0]["uncertainty"]["epistemic"] == pytest.approx(0.0, abs=1e-6)


async def test_unit_mismatch_is_rejected_with_its_bound_and_a_normal_row_accepted(
    asgi_client: httpx.AsyncClient, flchain_row: dict[str, Any]
) -> None:
    umol = {**flchain_row, "creatinine": flchain_row["creatinine"] * 88.4}  # µmol/L sent instead of mg/dL
    response = await asgi_client.post(PREDICT, json={"instances": [flchain_row, umol], "seed": 0})
    assert response.status_code == 200
    normal, shifted = response.json()["predictions"]
    assert normal["decision"] == "accept" and normal["reasons"] == [] and normal["probabilities"] is not None
    assert normal["gate"]["epistemic"]["score"] < normal["gate"]["epistemic"]["threshold"]
    assert shifted["decision"] == "reject" and shifted["reasons"] == ["bounds:creatinine"]
    assert shifted["probabilities"] is None and shifted["label"] is None
    assert "creatinine = 88.4 is outside the plausible range [0, 30] mg/dL" in shifted["details"][0]


async def test_age_in_the_thousands_is_rejected_and_the_rest_of_the_batch_scored(
    asgi_client: httpx.AsyncClient, flchain_row: dict[str, Any]
) -> None:
    rows = [flchain_row, {**flchain_row, "age": 10000}, {**flchain_row, "age": -50}, {**flchain_row, "age": 1e30}]
    response = await asgi_client.post(PREDICT, json={"instances": rows, "seed": 3, "samples": 64})
    assert response.status_code == 200, response.text
    body = response.json()
    decisions = [p["decision"] for p in body["predictions"]]
    assert decisions == ["accept", "reject", "reject", "reject"]
    assert all(p["reasons"] == ["bounds:age"] for p in body["predictions"][1:])
    assert "age = 10000 is outside the plausible range [0, 120] years" in body["predictions"][1]["details"][0]
    # The bad rows were never scored: the good row's answer is the one it gets alone.
    alone = await asgi_client.post(PREDICT, json={"instances": [flchain_row], "seed": 3, "samples": 64})
    assert alone.json()["predictions"][0] == body["predictions"][0]


async def test_a_request_whose_rows_are_all_rejected_draws_nothing(
    asgi_client: httpx.AsyncClient, flchain_row: dict[str, Any]
) -> None:
    response = await asgi_client.post(PREDICT, json={"instances": [{**flchain_row, "flc_grp": 11}]})
    assert response.status_code == 200
    body = response.json()
    assert body["seed"] is None and body["sampler"] is None and body["mc_error"] is None
    assert body["predictions"][0]["decision"] == "reject" and body["predictions"][0]["reasons"] == ["bounds:flc_grp"]


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"age": 95}, "support:age"),  # plausible, but the training range is 50-69
        ({"age": None}, "support:age"),  # never missing in training: imputed and referred
        ({"sex": "X"}, "support:sex"),  # a category unseen in training
        ({"kappa": 60.0, "lambda": 45.0}, "support:kappa"),  # far beyond the training free light chains
    ],
)
async def test_rows_outside_the_training_support_are_referred_with_their_reason(
    asgi_client: httpx.AsyncClient,
    model_repository: Path,
    flchain_row: dict[str, Any],
    check_prediction: CheckPrediction,
    change: dict[str, Any],
    reason: str,
) -> None:
    response = await asgi_client.post(PREDICT, json={"instances": [{**flchain_row, **change}], "seed": 1})
    assert response.status_code == 200, response.text
    body = response.json()
    check_prediction(
        body,
        1,
        _manifest(model_repository, "flchain-mortality"),
        model_repository / "flchain-mortality" / "weights.safetensors",
    )
    prediction = body["predictions"][0]
    assert prediction["decision"] == "refer" and reason in prediction["reasons"]
    assert prediction["probabilities"] is not None and prediction["gate"]["support"]["flag"] is True


async def test_a_row_far_in_input_density_is_referred_where_mutual_information_saturates(
    asgi_client: httpx.AsyncClient, flchain_row: dict[str, Any]
) -> None:
    # Inside every training range, but an unlikely combination: kappa near its maximum in the lowest FLC decile.
    row = {**flchain_row, "age": 51, "kappa": 8.0, "lambda": 0.5, "flc_grp": 1, "creatinine": 0.5, "mgus": 1}
    response = await asgi_client.post(PREDICT, json={"instances": [row], "seed": 1})
    prediction = response.json()["predictions"][0]
    density = prediction["gate"]["density"]
    assert prediction["gate"]["support"]["flag"] is False
    assert density["flag"] is True and density["score"] > density["threshold"] and density["percentile"] > 99.0
    assert prediction["decision"] == "refer" and "density" in prediction["reasons"]


async def test_reject_mode_request_fails_the_whole_request_naming_the_field(
    app_client: Callable[[Settings], Any], serve_settings: Settings, flchain_row: dict[str, Any], to_v2: Any
) -> None:
    rows = [flchain_row, {**flchain_row, "age": 10000}]
    async with app_client(serve_settings.model_copy(update={"reject_mode": RejectMode.REQUEST})) as client:
        v1 = await client.post(PREDICT, json={"instances": rows})
        v2 = await client.post("/v2/models/flchain-mortality/infer", json={"inputs": to_v2(rows)})
        fine = await client.post(PREDICT, json={"instances": [{**flchain_row, "age": 95}]})
    assert v1.status_code == 422
    (detail,) = v1.json()["detail"]
    assert detail["loc"] == ["body", "instances", 1, "age"] and "plausible range [0, 120]" in detail["msg"]
    assert v2.status_code == 400 and v2.json()["error"].startswith("inputs.age[1]: age = 10000 is outside")
    assert fine.status_code == 200 and fine.json()["predictions"][0]["decision"] == "refer"  # refer stays a row's


async def test_model_list_shows_ready_and_failed_models(asgi_client: httpx.AsyncClient) -> None:
    response = await asgi_client.get("/v1/models")
    assert response.status_code == 200
    models = {m["name"]: m for m in response.json()["models"]}
    assert set(models) == {"flchain-mortality", "tiny", "broken"}
    assert models["flchain-mortality"]["state"] == "ready" and models["flchain-mortality"]["version"] == "1"
    assert models["flchain-mortality"]["kind"] == "lowrank" and models["flchain-mortality"]["reason"] is None
    assert models["tiny"]["state"] == "ready"
    assert models["broken"]["state"] == "failed"
    assert "sha256" in models["broken"]["reason"]
    assert models["broken"]["version"] is None


async def test_model_metadata(asgi_client: httpx.AsyncClient, model_repository: Path) -> None:
    response = await asgi_client.get("/v1/models/flchain-mortality")
    assert response.status_code == 200
    body = response.json()
    manifest = _manifest(model_repository, "flchain-mortality")
    assert body["name"] == "flchain-mortality" and body["state"] == "ready"
    assert body["kind"] == "lowrank"
    assert body["sha256"] == manifest["weights"]["sha256"]
    assert body["ranks"] == manifest["ranks"] and body["ranks"][-1] == 1
    assert body["parameter_count"] == 10918
    assert [f["name"] for f in body["features"]] == ["age", "sex", "kappa", "lambda", "flc_grp", "creatinine", "mgus"]
    features = {f["name"]: f for f in body["features"]}
    assert features["sex"]["kind"] == "categorical" and features["sex"]["categories"] == ["F", "M"]
    assert features["creatinine"]["missing_allowed"] is True and features["age"]["missing_allowed"] is False
    assert features["age"]["plausible"] == {"low": 0.0, "high": 120.0}
    gate = body["gate"]
    assert gate["target_fpr"] == 0.02 == manifest["gate"]["target_fpr"]
    assert gate["thresholds"] == {
        "density": manifest["gate"]["density"]["threshold"],
        "epistemic": manifest["gate"]["epistemic"]["threshold"],
    }
    assert gate["calibration"]["sampler"] == "bank" and gate["calibration"]["bank_seed"] == 0
    assert set(gate["achieved"]) == {"val", "test"} and gate["warnings"] == manifest["gate"]["warnings"]
    assert body["default_samples"] == 512 and body["max_samples"] == 2048
    assert body["task"]["labels"] == ["alive", "died"]
    assert body["metrics"]["test"]["auroc"] == pytest.approx(manifest["metrics"]["test"]["auroc"])


async def test_failed_model_metadata_is_200_with_its_state(asgi_client: httpx.AsyncClient) -> None:
    response = await asgi_client.get("/v1/models/broken")
    assert response.status_code == 200
    body = response.json()
    assert body["name"] == "broken" and body["state"] == "failed"
    assert "sha256" in body["reason"]
    assert body["features"] is None and body["sha256"] is None


async def test_predict_on_a_failed_model_is_503(asgi_client: httpx.AsyncClient) -> None:
    rows = [{"x1": 0.3, "x2": -1.0, "site": "east"}]
    response = await asgi_client.post("/v1/models/broken/predict", json={"instances": rows})
    assert response.status_code == 503
    assert "broken" in response.json()["detail"] and "sha256" in response.json()["detail"]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/models/nope"),
        ("POST", "/v1/models/nope/predict"),
        ("GET", "/v2/models/nope"),
        ("GET", "/v2/models/nope/ready"),
        ("POST", "/v2/models/nope/infer"),
        ("POST", "/v2/models/nope/versions/1/infer"),
    ],
)
async def test_unknown_model_is_404(
    asgi_client: httpx.AsyncClient, flchain_row: dict[str, Any], method: str, path: str
) -> None:
    if path.startswith("/v1"):
        body: dict[str, Any] = {"instances": [flchain_row]}
    else:
        body = {"inputs": [{"name": "age", "shape": [1], "datatype": "FP64", "data": [62]}]}
    response = await asgi_client.request(method, path, json=body if method == "POST" else None)
    assert response.status_code == 404
    message = response.json()["error" if path.startswith("/v2") else "detail"]
    assert "nope" in message


async def test_samplers_are_reported_and_replay(asgi_client: httpx.AsyncClient, flchain_row: dict[str, Any]) -> None:
    plain = await asgi_client.post(PREDICT, json={"instances": [flchain_row]})
    assert plain.status_code == 200
    assert plain.json()["sampler"] == "bank" and plain.json()["seed"] == 0  # unseeded: the frozen bank
    for sampler in ("bank", "fresh", "local"):
        body = {"instances": [flchain_row], "sampler": sampler, "samples": 256}
        if sampler != "bank":
            body["seed"] = 42
        first = await asgi_client.post(PREDICT, json=body)
        assert first.status_code == 200, first.text
        answer = first.json()
        assert answer["sampler"] == sampler and answer["samples"] == 256
        assert answer["mc_error"]["probability"] > 0
        replay = await asgi_client.post(PREDICT, json={**body, "seed": answer["seed"]})
        assert replay.json() == answer


async def test_auto_picks_local_for_one_seeded_row(asgi_client: httpx.AsyncClient, flchain_row: dict[str, Any]) -> None:
    response = await asgi_client.post(PREDICT, json={"instances": [flchain_row], "seed": 5})
    assert response.status_code == 200
    assert response.json()["sampler"] == "local"


async def test_adaptive_request_stops_at_its_tolerance(
    asgi_client: httpx.AsyncClient, flchain_row: dict[str, Any]
) -> None:
    body = {"instances": [flchain_row], "tolerance": 0.01, "seed": 8, "sampler": "fresh", "samples": 2048}
    response = await asgi_client.post(PREDICT, json=body)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert 64 <= answer["samples"] < 2048
    assert max(answer["mc_error"]["probability"], answer["mc_error"]["mutual_information"]) <= 0.01
    assert (await asgi_client.post(PREDICT, json=body)).json() == answer


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"sampler": "bank", "seed": 7}, "seed"),
        ({"sampler": "bank", "samples": 1024}, "samples"),
        ({"sampler": "magic"}, "sampler"),
        ({"tolerance": 0}, "tolerance"),
        ({"tolerance": 1.5}, "tolerance"),
    ],
)
async def test_bad_sampler_options_are_422(
    asgi_client: httpx.AsyncClient, flchain_row: dict[str, Any], body: dict[str, Any], field: str
) -> None:
    response = await asgi_client.post(PREDICT, json={"instances": [flchain_row], **body})
    assert response.status_code == 422, response.text
    assert field in response.json()["detail"][0]["loc"]


@pytest.mark.parametrize("kappa", [1e300, 2e38])
async def test_a_value_too_far_to_score_is_rejected_alone(
    asgi_client: httpx.AsyncClient, flchain_row: dict[str, Any], kappa: float
) -> None:
    # kappa has no plausible upper bound, but a network cannot score a value that far: rejected, not a NaN answer.
    response = await asgi_client.post(PREDICT, json={"instances": [flchain_row, {**flchain_row, "kappa": kappa}]})
    assert response.status_code == 200, response.text
    normal, far = response.json()["predictions"]
    assert normal["decision"] == "accept" and normal["probabilities"] is not None
    assert far["decision"] == "reject" and far["reasons"] == ["bounds:kappa"] and far["label"] is None
    assert "too far to score" in far["details"][0]


async def test_served_decisions_reproduce_the_manifests_validation_rate(
    asgi_client: httpx.AsyncClient, model_repository: Path
) -> None:
    """The gate as served (default requests: the calibration bank) refers exactly the share training recorded."""
    from app.checkpoint.files import read_manifest
    from app.data.dataset import load_dataset

    manifest = read_manifest(model_repository / "tiny")
    frame = load_dataset(manifest.data).val.frame
    records = json.loads(frame.to_json(orient="records"))
    decisions = []
    for start in range(0, len(records), 64):
        response = await asgi_client.post("/v1/models/tiny/predict", json={"instances": records[start : start + 64]})
        assert response.status_code == 200, response.text
        assert response.json()["sampler"] == "bank"
        decisions += [p["decision"] for p in response.json()["predictions"]]
    share = sum(d != "accept" for d in decisions) / len(decisions)
    assert share == pytest.approx(manifest.gate.achieved["val"].not_accepted)
