"""Sequence (LSTM) models served end to end: /v1 step lists, /v2 [N, T] (or packed [N, T, F]) tensors with lengths,
and gRPC.

A tiny regression LSTM and a tiny sequence classifier (conftest's ``sequence_repository``, trained once a
session) are served by a real uvicorn process on 127.0.0.1 with gRPC on; every answer is checked against the
wire format of docs/serving.md.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

pd = pytest.importorskip("pandas")
pytestmark = pytest.mark.anyio

from conftest import SEQUENCE_CLASSIFIER as CLASSIFIER  # noqa: E402
from conftest import SEQUENCE_REGRESSION as REGRESSION  # noqa: E402
from conftest import SEQUENCE_UNIT as UNIT  # noqa: E402

STEP = {"lab": 5.0, "ward": "w1"}  # an in-distribution visit


@pytest.fixture(scope="module")
def grpc_port(free_port: Callable[[], int]) -> int:
    return free_port()


@pytest.fixture(scope="module")
def server(
    sequence_repository: Path,
    start_uvicorn: Callable[..., Any],
    grpc_port: int,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[httpx.Client]:
    """A real uvicorn process serving both models (and gRPC on ``grpc_port``), once both are ready."""
    log_dir = tmp_path_factory.mktemp("sequence-uvicorn")
    with start_uvicorn(sequence_repository, log_dir, ready_when="all", grpc_port=str(grpc_port)) as base_url:
        with httpx.Client(base_url=base_url, timeout=60.0) as client:
            yield client


def _predict(client: httpx.Client, model: str, instances: list[Any], **options: Any) -> httpx.Response:
    return client.post(f"/v1/models/{model}/predict", json={"instances": instances, **options})


def _sequence(*labs: float, ward: str = "w1") -> list[dict[str, Any]]:
    return [{"lab": lab, "ward": ward} for lab in labs]


def _v2_body(sequences: list[list[dict[str, Any]]], **parameters: Any) -> dict[str, Any]:
    """[N, T] tensors (nested JSON, padded with 0 / "") and lengths [N]."""
    steps = max(len(s) for s in sequences)
    lab = [[step["lab"] for step in s] + [0.0] * (steps - len(s)) for s in sequences]
    ward = [[step["ward"] for step in s] + [""] * (steps - len(s)) for s in sequences]
    n = len(sequences)
    inputs = [
        {"name": "lab", "shape": [n, steps], "datatype": "FP64", "data": lab},
        {"name": "ward", "shape": [n, steps], "datatype": "BYTES", "data": ward},
        {"name": "lengths", "shape": [n], "datatype": "INT32", "data": [len(s) for s in sequences]},
    ]
    return {"inputs": inputs, "parameters": parameters}


def _outputs(body: dict[str, Any]) -> dict[str, list[Any]]:
    return {o["name"]: o["data"] for o in body["outputs"]}


def _error_loc(response: httpx.Response) -> list[Any]:
    assert response.status_code == 422, response.text
    return response.json()["detail"][0]["loc"]


def test_v1_regression_answers_in_the_targets_unit(server: httpx.Client) -> None:
    response = _predict(server, REGRESSION, [_sequence(5.0, 5.5, 4.8), _sequence(6.0)], seed=3, sampler="fresh")
    assert response.status_code == 200, response.text
    from app.serve.api.schemas_v1 import PredictResponse

    body = response.json()
    PredictResponse.model_validate(body)
    assert body["sampler"] == "fresh" and body["seed"] == 3 and body["samples"] == 16
    assert set(body["mc_error"]) == {"mean"}
    for prediction in body["predictions"]:
        assert prediction["unit"] == UNIT and prediction["decision"] == "accept", prediction
        mean, intervals, variance = prediction["mean"], prediction["intervals"], prediction["variance"]
        assert list(intervals) == ["0.5", "0.9", "0.95"]
        for low, high in intervals.values():
            assert low < mean < high
        assert intervals["0.95"][1] - intervals["0.95"][0] > intervals["0.5"][1] - intervals["0.5"][0]
        assert variance["total"] == pytest.approx(variance["aleatoric"] + variance["epistemic"], rel=1e-12)
        assert prediction["gate"]["epistemic"]["score"] == variance["epistemic"]
        # The mean is in the target's unit (y ≈ 2·lab ≈ 10), not standardised.
        assert 3.0 < mean < 20.0
    replay = _predict(server, REGRESSION, [_sequence(5.0, 5.5, 4.8), _sequence(6.0)], seed=3, sampler="fresh")
    assert replay.content == response.content  # bitwise


def test_the_default_bank_replays_and_a_long_sequence_keeps_its_last_steps(server: httpx.Client) -> None:
    metadata = server.get(f"/v1/models/{REGRESSION}").json()
    max_length = metadata["sequence"]["max_length"]
    recent = _sequence(5.0, 5.2, 4.9)
    long = _sequence(*([3.0] * (max_length + 4))) + recent[-max_length:]
    body = _predict(server, REGRESSION, [long, long[-max_length:]]).json()
    assert body["sampler"] == "bank" and body["seed"] == 0
    first, kept = body["predictions"]
    assert first["decision"] == "accept" and first["mean"] == kept["mean"]  # only the last max_length steps count
    assert _predict(server, REGRESSION, [long, long[-max_length:]]).json() == body


def test_an_out_of_range_step_is_referred_naming_the_step(server: httpx.Client) -> None:
    body = _predict(server, REGRESSION, [_sequence(5.0, 30.0, 5.1)]).json()
    (prediction,) = body["predictions"]
    assert prediction["decision"] == "refer" and "support:lab" in prediction["reasons"]
    detail = prediction["details"][prediction["reasons"].index("support:lab")]
    assert detail.startswith("step 2 of 3:") and "lab" in detail
    assert prediction["mean"] is not None and prediction["gate"]["support"]["flag"] is True


def test_an_impossible_step_is_rejected(server: httpx.Client) -> None:
    body = _predict(server, REGRESSION, [_sequence(5.0, -4.0), _sequence(5.0)]).json()
    rejected, accepted = body["predictions"]
    assert rejected["decision"] == "reject" and rejected["reasons"] == ["bounds:lab"]
    assert rejected["details"][0].startswith("step 2 of 2:")
    assert rejected["mean"] is None and rejected["intervals"] is None and rejected["variance"] is None
    assert accepted["decision"] == "accept" and accepted["mean"] is not None


@pytest.mark.parametrize(
    ("instances", "options", "loc"),
    [
        pytest.param([[]], {}, ["body", "instances", 0], id="empty instance"),
        pytest.param([_sequence(5.0), [{"lab": 5.0}]], {}, ["body", "instances", 1, 0, "ward"], id="missing feature"),
        pytest.param(
            [_sequence(5.0, 5.0) + [{**STEP, "lab": "high"}]],
            {},
            ["body", "instances", 0, 2, "lab"],
            id="a string for a number",
        ),  # fmt: skip
        pytest.param([[{**STEP, "ph": 7}]], {}, ["body", "instances", 0, 0, "ph"], id="unknown feature"),
        pytest.param([STEP], {}, ["body", "instances", 0], id="a record, not a list of steps"),
        pytest.param([5], {}, ["body", "instances", 0], id="a number, not a list of steps"),
        pytest.param([[{**STEP, "lab": [5.0]}]], {}, ["body", "instances", 0, 0, "lab"], id="a list for a number"),
        pytest.param([_sequence(5.0)], {"sampler": "local"}, ["body", "sampler"], id="sampler local"),
        pytest.param([_sequence(5.0)], {"tolerance": 0.01}, ["body", "tolerance"], id="adaptive"),
    ],
)
def test_v1_bad_sequence_inputs_are_422_naming_the_field(
    server: httpx.Client, instances: list[Any], options: dict[str, Any], loc: list[Any]
) -> None:
    assert _error_loc(_predict(server, REGRESSION, instances, **options))[: len(loc)] == loc


def test_v2_gives_v1s_numbers_for_the_same_sequences(server: httpx.Client) -> None:
    sequences = [_sequence(5.0, 5.5, 4.8), _sequence(6.0), _sequence(5.0, 30.0)]
    v1 = _predict(server, REGRESSION, sequences, seed=11, sampler="fresh").json()
    response = server.post(f"/v2/models/{REGRESSION}/infer", json=_v2_body(sequences, seed=11, sampler="fresh"))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["parameters"]["seed"] == 11 and body["parameters"]["unit"] == UNIT
    out = _outputs(body)
    assert "label" not in out and "probabilities" not in out
    for row, prediction in enumerate(v1["predictions"]):
        assert out["mean"][row] == prediction["mean"]
        for level, (low, high) in prediction["intervals"].items():
            percent = round(float(level) * 100)
            assert (out[f"interval_{percent}_low"][row], out[f"interval_{percent}_high"][row]) == (low, high)
        for part in ("total", "aleatoric", "epistemic"):
            assert out[f"variance_{part}"][row] == prediction["variance"][part]
        assert out["decision"][row] == prediction["decision"]
        assert out["reasons"][row] == ",".join(prediction["reasons"])
        assert out["density_score"][row] == prediction["gate"]["density"]["score"]


def test_v2_metadata_lists_step_inputs_and_lengths(server: httpx.Client) -> None:
    body = server.get(f"/v2/models/{REGRESSION}").json()
    inputs = {t["name"]: (t["datatype"], t["shape"]) for t in body["inputs"]}
    assert inputs == {"lab": ("FP64", [-1, -1]), "ward": ("BYTES", [-1, -1]), "lengths": ("INT64", [-1])}
    outputs = [t["name"] for t in body["outputs"]]
    assert outputs[:3] == ["mean", "interval_50_low", "interval_50_high"] and "variance_epistemic" in outputs


def _v2_error(server: httpx.Client, body: dict[str, Any]) -> str:
    response = server.post(f"/v2/models/{REGRESSION}/infer", json=body)
    assert response.status_code == 400, response.text
    return response.json()["error"]


def test_v2_bad_sequence_inputs_are_400_naming_the_field(server: httpx.Client) -> None:
    good = _v2_body([_sequence(5.0, 5.5), _sequence(6.0)])
    lengths_zero = _v2_body([_sequence(5.0, 5.5), _sequence(6.0)])
    lengths_zero["inputs"][2]["data"] = [2, 0]
    assert _v2_error(server, lengths_zero).startswith("inputs.lengths[1]:")
    too_long = _v2_body([_sequence(5.0, 5.5), _sequence(6.0)])
    too_long["inputs"][2]["data"] = [3, 1]
    assert _v2_error(server, too_long).startswith("inputs.lengths[0]:")
    mismatch = _v2_body([_sequence(5.0, 5.5), _sequence(6.0)])
    mismatch["inputs"][1] = {**mismatch["inputs"][1], "shape": [2, 1], "data": [["w1"], ["w1"]]}
    assert _v2_error(server, mismatch).startswith("inputs:")
    no_lengths = {**good, "inputs": good["inputs"][:2]}
    assert _v2_error(server, no_lengths).startswith("inputs.lengths:")
    flat = _v2_body([_sequence(5.0, 5.5), _sequence(6.0)])
    flat["inputs"][0] = {**flat["inputs"][0], "shape": [2], "data": [5.0, 6.0]}
    assert _v2_error(server, flat).startswith("inputs")
    bad_value = _v2_body([_sequence(5.0, 5.5), _sequence(6.0)])
    bad_value["inputs"][0]["data"][0][1] = "x"
    assert _v2_error(server, bad_value).startswith("inputs.lab[0][1]:")
    local = _v2_body([_sequence(5.0)], sampler="local")
    assert _v2_error(server, local).startswith("parameters.sampler:")


def _packed_body(sequences: list[list[dict[str, Any]]], **parameters: Any) -> dict[str, Any]:
    """The numeric feature (lab) packed as ``steps`` [N, T, 1] beside ward [N, T] and lengths."""
    body = _v2_body(sequences, **parameters)
    lab, ward, lengths = body["inputs"]
    packed = [[[v] for v in row] for row in lab["data"]]
    steps = {"name": "steps", "shape": [*lab["shape"], 1], "datatype": "FP32", "data": packed}
    return {**body, "inputs": [steps, ward, lengths]}


def test_a_packed_steps_tensor_gives_the_per_feature_numbers(server: httpx.Client) -> None:
    sequences = [_sequence(5.0, 5.5, 4.8), _sequence(6.0), _sequence(5.0, 30.0)]
    per_feature = server.post(f"/v2/models/{REGRESSION}/infer", json=_v2_body(sequences, seed=5, sampler="fresh"))
    packed = server.post(f"/v2/models/{REGRESSION}/infer", json=_packed_body(sequences, seed=5, sampler="fresh"))
    assert packed.status_code == 200, packed.text
    assert _outputs(packed.json()) == _outputs(per_feature.json())  # JSON carries the numbers as sent


def test_a_bad_packed_steps_tensor_is_400_naming_the_field(server: httpx.Client) -> None:
    two = [_sequence(5.0, 5.5), _sequence(6.0)]
    wide = _packed_body(two)
    wide["inputs"][0] = {**wide["inputs"][0], "shape": [2, 2, 2], "data": [[[5.0, 1.0]] * 2] * 2}
    assert _v2_error(server, wide).startswith("inputs.steps: shape must be [N, T, 1]")
    text = _packed_body(two)
    text["inputs"][0]["datatype"] = "BYTES"
    assert _v2_error(server, text).startswith("inputs.steps:")
    both = _packed_body(two)
    both["inputs"].append(_v2_body(two)["inputs"][0])
    assert _v2_error(server, both).startswith("inputs.lab: unknown input")
    other_t = _packed_body(two)
    other_t["inputs"][0] = {**other_t["inputs"][0], "shape": [2, 3, 1], "data": [[[5.0]] * 3] * 2}
    assert _v2_error(server, other_t).startswith("inputs:")
    integer = _packed_body(two)
    integer["inputs"][0]["datatype"] = "INT32"
    integer["inputs"][0]["data"][0][1] = [5.5]
    assert _v2_error(server, integer).startswith("inputs.steps[0][1][0]:")
    bad_value = _packed_body(two)
    bad_value["inputs"][0]["data"][1][0] = ["x"]  # the preprocessing's refusal names the packed position
    assert _v2_error(server, bad_value).startswith("inputs.steps[1][0][0]:")


def test_padding_is_ignored_whatever_it_holds(server: httpx.Client) -> None:
    body = _v2_body([_sequence(5.0, 5.5), _sequence(6.0)])
    padded = _v2_body([_sequence(5.0, 5.5), _sequence(6.0)])
    padded["inputs"][0]["data"][1][1] = -1e300  # impossible, but padding
    padded["inputs"][1]["data"][1][1] = "unseen"
    first = server.post(f"/v2/models/{REGRESSION}/infer", json=body).json()
    second = server.post(f"/v2/models/{REGRESSION}/infer", json=padded).json()
    assert _outputs(first) == _outputs(second) and _outputs(first)["decision"] == ["accept", "accept"]


def test_a_sequence_classifier_answers_as_a_flat_one(server: httpx.Client) -> None:
    response = _predict(server, CLASSIFIER, [_sequence(5.0, 5.5, 6.5), _sequence(3.0)], seed=4)
    assert response.status_code == 200, response.text
    body = response.json()
    from app.serve.api.schemas_v1 import PredictionOut

    for prediction in body["predictions"]:
        PredictionOut.model_validate(prediction)
        assert prediction["label"] in ("0", "1")
        assert math.fsum(prediction["probabilities"].values()) == pytest.approx(1.0)
        u = prediction["uncertainty"]
        assert u["total"] == pytest.approx(u["aleatoric"] + u["epistemic"], abs=1e-6)
    out = _outputs(
        server.post(
            f"/v2/models/{CLASSIFIER}/infer",
            json=_v2_body([_sequence(5.0, 5.5, 6.5), _sequence(3.0)], seed=4, sampler="fresh"),
        ).json()
    )
    assert out["label"] == [p["label"] for p in body["predictions"]]
    assert out["mutual_information"] == [p["uncertainty"]["epistemic"] for p in body["predictions"]]


def test_grpc_carries_the_same_tensors(server: httpx.Client, grpc_port: int) -> None:
    grpc = pytest.importorskip("grpc")
    from app.serve.grpc import open_inference_grpc_pb2 as pb
    from app.serve.grpc import open_inference_grpc_pb2_grpc as pb_grpc

    sequences = [_sequence(5.0, 5.5, 4.8), _sequence(6.0)]
    request = pb.ModelInferRequest(model_name=REGRESSION)
    request.parameters["seed"].int64_param = 8
    request.parameters["sampler"].string_param = "fresh"
    lab = request.inputs.add(name="lab", shape=[2, 3], datatype="FP64")
    lab.contents.fp64_contents.extend([5.0, 5.5, 4.8, 6.0, 0.0, 0.0])
    ward = request.inputs.add(name="ward", shape=[2, 3], datatype="BYTES")
    ward.contents.bytes_contents.extend([b"w1", b"w1", b"w1", b"w1", b"", b""])
    lengths = request.inputs.add(name="lengths", shape=[2], datatype="INT64")
    lengths.contents.int64_contents.extend([3, 1])
    packed = pb.ModelInferRequest()
    packed.CopyFrom(request)
    del packed.inputs[0]
    steps = packed.inputs.add(name="steps", shape=[2, 3, 1], datatype="FP64")  # lab packed as [N, T, F]
    steps.contents.fp64_contents.extend([5.0, 5.5, 4.8, 6.0, 0.0, 0.0])
    with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        replies = [stub.ModelInfer(message, timeout=30) for message in (request, packed)]
    v1 = _predict(server, REGRESSION, sequences, seed=8, sampler="fresh").json()
    for reply in replies:
        means = next(list(o.contents.fp64_contents) for o in reply.outputs if o.name == "mean")
        assert means == [p["mean"] for p in v1["predictions"]]


def test_binary_tensor_data_carries_the_same_tensors(server: httpx.Client) -> None:
    import json

    from app.serve.api.tensors import to_bytes

    tensors = [
        ("lab", "FP64", [2, 3], np.array([5.0, 5.5, 4.8, 6.0, np.nan, np.nan])),
        ("ward", "BYTES", [2, 3], np.array(["w1", "w1", "w1", "w1", "", ""], dtype=object)),
        ("lengths", "INT64", [2], np.array([3, 1])),
    ]
    chunks = [to_bytes(datatype, values) for _, datatype, _, values in tensors]
    inputs = [
        {"name": name, "shape": shape, "datatype": datatype, "parameters": {"binary_data_size": len(chunk)}}
        for (name, datatype, shape, _), chunk in zip(tensors, chunks, strict=True)
    ]
    header = json.dumps({"inputs": inputs, "parameters": {"seed": 8, "sampler": "fresh"}}).encode()
    response = server.post(
        f"/v2/models/{REGRESSION}/infer",
        content=header + b"".join(chunks),
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
    assert response.status_code == 200, response.text
    v1 = _predict(server, REGRESSION, [_sequence(5.0, 5.5, 4.8), _sequence(6.0)], seed=8, sampler="fresh").json()
    assert _outputs(response.json())["mean"] == [p["mean"] for p in v1["predictions"]]


def test_metrics_count_sequence_predictions(server: httpx.Client, parse_metrics: Callable[[str], Any]) -> None:
    _predict(server, REGRESSION, [_sequence(5.0)])
    metrics = parse_metrics(server.get("/metrics").text)
    assert metrics.count("sbnn_predictions_total", model=REGRESSION) >= 1
    assert metrics.count("sbnn_decisions_total", model=REGRESSION, decision="accept") >= 1
    assert metrics.count("sbnn_epistemic_uncertainty_nats_count", model=REGRESSION) == 0  # not nats
    _predict(server, CLASSIFIER, [_sequence(5.0)])
    metrics = parse_metrics(server.get("/metrics").text)
    assert metrics.count("sbnn_epistemic_uncertainty_nats_count", model=CLASSIFIER) >= 1


def test_the_served_bank_is_the_one_the_gate_was_calibrated_on(server: httpx.Client, sequence_repository: Path) -> None:
    from app.checkpoint.io import load_checkpoint
    from app.evaluate.sequence_scoring import SequenceBankScorer, sequence_inputs

    sequences = [_sequence(5.0, 5.5, 4.8), _sequence(6.0, 4.0)]
    served = _predict(server, REGRESSION, sequences).json()["predictions"]
    checkpoint = load_checkpoint(sequence_repository / REGRESSION)
    m = checkpoint.manifest
    scorer = SequenceBankScorer(
        checkpoint.model, m.default_samples, 0, max_length=m.sequence.max_length,
        target_mean=m.task.scale.mean, target_std=m.task.scale.std,
    )  # fmt: skip
    steps = [step for s in sequences for step in s]
    columns = {name: [step[name] for step in steps] for name in ("lab", "ward")}
    lengths = np.array([len(s) for s in sequences])
    x, kept, _ = sequence_inputs(m.preprocessing, columns, lengths, m.sequence.max_length)
    expected = scorer(x, kept)
    assert [p["mean"] for p in served] == expected.mean.tolist()
    assert [p["gate"]["epistemic"]["score"] for p in served] == expected.epistemic.tolist()


async def test_reject_mode_request_names_the_impossible_step(
    sequence_repository: Path, app_client: Callable[..., Any]
) -> None:
    from app.serve.settings import Settings

    settings = Settings(models=sequence_repository, device="cpu", reject_mode="request", grpc_port=0)
    async with app_client(settings) as client:
        instances = [_sequence(5.0), _sequence(5.0, 5.0, -3.0)]
        response = await client.post(f"/v1/models/{REGRESSION}/predict", json={"instances": instances})
        assert _error_loc(response) == ["body", "instances", 1, 2, "lab"]
        response = await client.post(f"/v2/models/{REGRESSION}/infer", json=_v2_body(instances))
        assert response.status_code == 400 and response.json()["error"].startswith("inputs.lab[1][2]:")
