"""Sequence (LSTM) models on the onnxruntime backend: a server that cannot import torch answers /v1 and /v2 from
the exported bank with the torch backend's numbers (within the export's tolerance) and the same gate, and
refuses what the bank cannot serve with why."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("pandas")

from conftest import SEQUENCE_CLASSIFIER, SEQUENCE_REGRESSION  # noqa: E402

from app.checkpoint.io import load_checkpoint  # noqa: E402
from app.checkpoint.onnx_sequence import export_sequence_onnx  # noqa: E402
from app.serve.settings import Settings  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
SEQUENCES = [
    [{"lab": 5.0, "ward": "w1"}, {"lab": 5.5, "ward": "w1"}, {"lab": 4.8, "ward": "w1"}],
    [{"lab": 6.0, "ward": "w1"}],
    [{"lab": 5.0, "ward": "w1"}, {"lab": 30.0, "ward": "w1"}],  # referred: lab 30 is outside training
    [{"lab": 5.0, "ward": "w1"}, {"lab": -4.0, "ward": "w1"}],  # rejected: below lab's plausible 0
]

# Runs in a fresh interpreter where `import torch` fails: the sequence serving path must do without it.
TORCH_FREE_CLIENT = """
import asyncio, json, sys
sys.modules["torch"] = None
import httpx
from app.serve.app import create_app
from app.serve.settings import Settings

async def main():
    app = create_app(Settings(models=sys.argv[1], backend="onnx"))
    sequences = json.loads(sys.argv[2])
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://onnx") as client:
            for _ in range(400):
                if (await client.get("/v2/health/ready")).status_code == 200:
                    break
                await asyncio.sleep(0.05)
            answers = {}
            for model in sys.argv[3:]:
                for name, options in (("bank", {}), ("fresh", {"sampler": "fresh", "seed": 1}),
                                      ("samples", {"samples": 7}), ("seed", {"seed": 9})):
                    response = await client.post(f"/v1/models/{model}/predict",
                                                 json={"instances": sequences, **options})
                    answers[f"{model}:{name}"] = [response.status_code, response.json()]
            steps = max(len(s) for s in sequences)
            packed = [[[step["lab"]] for step in s] + [[0.0]] * (steps - len(s)) for s in sequences]
            ward = [[step["ward"] for step in s] + [""] * (steps - len(s)) for s in sequences]
            inputs = [
                {"name": "steps", "shape": [len(sequences), steps, 1], "datatype": "FP32", "data": packed},
                {"name": "ward", "shape": [len(sequences), steps], "datatype": "BYTES", "data": ward},
                {"name": "lengths", "shape": [len(sequences)], "datatype": "INT64",
                 "data": [len(s) for s in sequences]},
            ]
            v2 = await client.post(f"/v2/models/{sys.argv[3]}/infer", json={"inputs": inputs})
            answers["v2"] = [v2.status_code, v2.json()]
            answers["models"] = (await client.get("/v1/models")).json()
            answers["torch_imported"] = sys.modules.get("torch") is not None
            print(json.dumps(answers))

asyncio.run(main())
"""


@pytest.fixture(scope="module")
def onnx_sequences(sequence_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny sequence models, each with its bank exported."""
    repository = tmp_path_factory.mktemp("onnx-sequences")
    for name in (SEQUENCE_REGRESSION, SEQUENCE_CLASSIFIER):
        shutil.copytree(sequence_repository / name, repository / name)
        export_sequence_onnx(load_checkpoint(repository / name))
    return repository


def _torch_answers(repository: Path, model: str) -> dict[str, Any]:
    """The torch backend's default (bank) answer for SEQUENCES."""
    import asyncio

    import httpx

    from app.serve.app import create_app

    async def ask() -> dict[str, Any]:
        app = create_app(Settings(models=repository, backend="torch", device="cpu", grpc_port=0))
        async with app.router.lifespan_context(app):
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://torch") as client:
                for _ in range(400):
                    if (await client.get("/v2/health/ready")).status_code == 200:
                        break
                    await asyncio.sleep(0.05)
                response = await client.post(f"/v1/models/{model}/predict", json={"instances": SEQUENCES})
                assert response.status_code == 200, response.text
                return response.json()

    return asyncio.run(ask())


@pytest.fixture(scope="module")
def onnx_answers(onnx_sequences: Path) -> dict[str, Any]:
    run = subprocess.run(
        [sys.executable, "-c", TORCH_FREE_CLIENT, str(onnx_sequences), json.dumps(SEQUENCES), SEQUENCE_REGRESSION,
         SEQUENCE_CLASSIFIER],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    answers = json.loads(run.stdout.strip().splitlines()[-1])
    assert answers["torch_imported"] is False
    assert {m["name"]: m["state"] for m in answers["models"]["models"]} == {
        SEQUENCE_REGRESSION: "ready",
        SEQUENCE_CLASSIFIER: "ready",
    }
    return answers


def _gate_matches(onnx_row: dict[str, Any], torch_row: dict[str, Any]) -> None:
    assert onnx_row["decision"] == torch_row["decision"] and onnx_row["reasons"] == torch_row["reasons"]
    for part in ("support", "density"):
        assert onnx_row["gate"][part] == torch_row["gate"][part]  # the same numpy gate on both backends
    if torch_row["gate"]["epistemic"]["score"] is not None:
        assert onnx_row["gate"]["epistemic"]["flag"] == torch_row["gate"]["epistemic"]["flag"]


def test_a_regression_answers_from_the_bank_as_torch_does(onnx_sequences: Path, onnx_answers: dict) -> None:
    status, onnx = onnx_answers[f"{SEQUENCE_REGRESSION}:bank"]
    assert status == 200, onnx
    torch = _torch_answers(onnx_sequences, SEQUENCE_REGRESSION)
    assert onnx["sampler"] == "bank" and (onnx["samples"], onnx["seed"]) == (torch["samples"], torch["seed"])
    decisions = [p["decision"] for p in onnx["predictions"]]
    assert decisions == ["accept", "accept", "refer", "reject"]
    for onnx_row, torch_row in zip(onnx["predictions"], torch["predictions"], strict=True):
        _gate_matches(onnx_row, torch_row)
        if torch_row["mean"] is None:
            assert onnx_row["mean"] is None and onnx_row["intervals"] is None
            continue
        spread = torch_row["variance"]["total"] ** 0.5
        assert onnx_row["mean"] == pytest.approx(torch_row["mean"], abs=1e-4 * spread)
        for part in ("total", "aleatoric", "epistemic"):
            assert onnx_row["variance"][part] == pytest.approx(torch_row["variance"][part], rel=1e-3, abs=1e-9)
        for level, (low, high) in torch_row["intervals"].items():
            assert onnx_row["intervals"][level] == pytest.approx([low, high], abs=1e-4 * spread)


def test_a_classifier_answers_from_the_bank_as_torch_does(onnx_sequences: Path, onnx_answers: dict) -> None:
    status, onnx = onnx_answers[f"{SEQUENCE_CLASSIFIER}:bank"]
    assert status == 200, onnx
    torch = _torch_answers(onnx_sequences, SEQUENCE_CLASSIFIER)
    for onnx_row, torch_row in zip(onnx["predictions"], torch["predictions"], strict=True):
        _gate_matches(onnx_row, torch_row)
        if torch_row["probabilities"] is None:
            continue
        assert onnx_row["label"] == torch_row["label"]
        for label, p in torch_row["probabilities"].items():
            assert onnx_row["probabilities"][label] == pytest.approx(p, abs=1e-5)
        for part in ("total", "aleatoric", "epistemic"):
            assert onnx_row["uncertainty"][part] == pytest.approx(torch_row["uncertainty"][part], abs=1e-5)


@pytest.mark.parametrize(("options", "field"), [("fresh", "sampler"), ("samples", "samples"), ("seed", "seed")])
def test_what_the_bank_cannot_serve_is_refused_with_why(onnx_answers: dict, options: str, field: str) -> None:
    for model in (SEQUENCE_REGRESSION, SEQUENCE_CLASSIFIER):
        status, body = onnx_answers[f"{model}:{options}"]
        assert status == 422, body
        assert body["detail"][0]["loc"] == ["body", field] and "ONNX export" in body["detail"][0]["msg"]


def test_v2_packed_steps_match_v1_on_the_onnx_backend(onnx_answers: dict) -> None:
    status, v2 = onnx_answers["v2"]
    assert status == 200, v2
    outputs = {o["name"]: o["data"] for o in v2["outputs"]}
    v1 = onnx_answers[f"{SEQUENCE_REGRESSION}:bank"][1]["predictions"]
    assert outputs["decision"] == [p["decision"] for p in v1]
    assert outputs["mean"][:3] == [p["mean"] for p in v1][:3]  # the 4th is rejected: no mean


def test_mixture_quantiles_in_numpy_match_torch() -> None:
    torch = pytest.importorskip("torch")
    from app.bnn.regression import GaussianPredictive
    from app.serve.predictive_numpy import gaussian_parameters_numpy, mixture_quantile_numpy

    head = torch.randn(150, 40, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2
    predictive = GaussianPredictive.from_head(head)
    means, variances = gaussian_parameters_numpy(head.numpy())
    np.testing.assert_allclose(variances, predictive.variances.numpy()[..., 0], rtol=1e-12)
    for q in (0.025, 0.05, 0.25, 0.75, 0.95, 0.975):
        expected = predictive.quantile(q).numpy()[:, 0]
        spread = predictive.total.sqrt().numpy()[:, 0]
        assert np.abs(mixture_quantile_numpy(means, variances, q) - expected).max() <= 1e-6 * spread.max()


def test_an_ensemble_answers_every_request_with_its_members(tmp_path: Path) -> None:
    """An ensemble's export holds its M members, not S draws: every request gets them, as on torch."""
    import dataclasses

    import torch
    from sequence_tables import write_visits

    from app.bnn.spec import LayerKind, Sampler
    from app.data.sequence_table import load_sequence_table
    from app.serve.backend_onnx import OnnxBackend
    from app.serve.backend_torch import TorchBackend
    from app.train.config import TrainConfig
    from app.train.sequence_pipeline import train_sequence_checkpoint

    dataset = load_sequence_table(
        write_visits(tmp_path / "v.csv", True), "y", "patient", "day", features=["lab", "ward"]
    )
    dataset = dataclasses.replace(dataset, target_unit="mmol/L")
    config = TrainConfig(
        kind=LayerKind.ENSEMBLE, members=2, hidden=[8], epochs=1, kl_warmup_epochs=0, default_samples=16,
        val_samples=2, batch_size=32, device="cpu",
    )  # fmt: skip
    train_sequence_checkpoint(dataset, config, tmp_path / "ens")
    export_sequence_onnx(load_checkpoint(tmp_path / "ens"))
    onnx = OnnxBackend.load(tmp_path / "ens")
    torch_backend = TorchBackend.load(tmp_path / "ens", torch.device("cpu"), None, 0)
    inputs = onnx.typical_input(3)
    plan = onnx.plan(Sampler.AUTO, 3, 16, 5, None)  # the manifest's 16 samples, any seed: the 2 members
    assert plan.samples == 2 and plan.sampler is Sampler.BANK
    (ours,) = onnx.compute([(inputs, plan)], batch_seed=0)
    (theirs,) = torch_backend.compute([(inputs, torch_backend.plan(Sampler.AUTO, 3, 16, None, None))], batch_seed=0)
    np.testing.assert_allclose(ours.mean, theirs.mean, rtol=1e-5, atol=1e-6)
