"""A regression MLP (a `--csv` table with a continuous target) served end to end by a real uvicorn process on
127.0.0.1: /v1 and /v2 answer the mixture's mean, intervals and variances in the target's unit, the default
bank is the one the gate was calibrated on, fresh draws replay by seed, and what it cannot run is refused."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

pd = pytest.importorskip("pandas")
pytest.importorskip("sklearn")

from app.train.config import TrainConfig  # noqa: E402

MODEL = "reg-mlp"
UNIT = "kg"
ROW = {"a": 0.1, "b": -0.4, "c": 0.3, "site": "n"}


@pytest.fixture(scope="module")
def regression_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny low-rank regression MLP trained on y = 4·(2a − b + noise growing with |c|) + 50."""
    from app.data.tabular import load_table
    from app.train.pipeline import train_checkpoint

    work = tmp_path_factory.mktemp("regression-train")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 3))
    frame = pd.DataFrame({"a": x[:, 0], "b": x[:, 1], "c": x[:, 2], "site": np.where(x[:, 0] > 0, "n", "s")})
    frame["y"] = (2 * x[:, 0] - x[:, 1] + rng.normal(size=600) * (0.1 + 0.5 * np.abs(x[:, 2]))) * 4 + 50
    frame.to_csv(work / "t.csv", index=False)
    dataset = load_table(work / "t.csv", "y", units={"y": UNIT})
    config = TrainConfig(
        hidden=[16, 16], rank=4, epochs=3, kl_warmup_epochs=1, default_samples=32, val_samples=8, device="cpu"
    )
    root = tmp_path_factory.mktemp("regression-models")
    train_checkpoint(dataset, config, root / MODEL)
    return root


@pytest.fixture(scope="module")
def server(
    regression_repository: Path, start_uvicorn: Callable[..., Any], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[httpx.Client]:
    with start_uvicorn(regression_repository, tmp_path_factory.mktemp("regression-uvicorn")) as base_url:
        with httpx.Client(base_url=base_url, timeout=60.0) as client:
            yield client


def _predict(client: httpx.Client, rows: list[dict[str, Any]], **options: Any) -> httpx.Response:
    return client.post(f"/v1/models/{MODEL}/predict", json={"instances": rows, **options})


def test_v1_answers_the_mixture_in_the_targets_unit(server: httpx.Client) -> None:
    response = _predict(server, [ROW, {**ROW, "a": 1.2}])
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["sampler"] == "bank" and body["samples"] == 32 and set(body["mc_error"]) == {"mean"}
    for prediction in body["predictions"]:
        assert prediction["unit"] == UNIT and prediction["decision"] == "accept", prediction
        assert 20 < prediction["mean"] < 80  # the target's unit, not the standardised scale
        variance = prediction["variance"]
        assert variance["total"] == pytest.approx(variance["aleatoric"] + variance["epistemic"])
        assert prediction["gate"]["epistemic"]["score"] == variance["epistemic"]
        widths = [high - low for low, high in prediction["intervals"].values()]
        assert widths == sorted(widths) and all(low < prediction["mean"] < high for low, high in
                                                prediction["intervals"].values())  # fmt: skip


def test_the_default_bank_is_the_one_the_gate_was_calibrated_on(
    server: httpx.Client, regression_repository: Path
) -> None:
    from app.checkpoint.io import load_checkpoint
    from app.evaluate.regression_scoring import RegressionBankScorer

    rows = [ROW, {**ROW, "b": 1.0, "site": "s"}]
    served = _predict(server, rows).json()["predictions"]
    checkpoint = load_checkpoint(regression_repository / MODEL)
    m = checkpoint.manifest
    scorer = RegressionBankScorer(
        checkpoint.model, m.default_samples, 0, target_mean=m.task.scale.mean, target_std=m.task.scale.std
    )
    columns = {name: np.array([row[name] for row in rows], dtype=object) for name in ROW}
    expected = scorer(m.preprocessing.transform(columns))
    np.testing.assert_allclose([p["mean"] for p in served], expected.mean, rtol=1e-6)
    np.testing.assert_allclose([p["variance"]["epistemic"] for p in served], expected.epistemic, rtol=1e-5)


def test_fresh_draws_replay_by_seed_and_differ_by_seed(server: httpx.Client) -> None:
    first = _predict(server, [ROW], sampler="fresh", seed=4, samples=64).json()
    assert first["sampler"] == "fresh" and first["samples"] == 64 and first["seed"] == 4
    assert _predict(server, [ROW], sampler="fresh", seed=4, samples=64).json()["predictions"] == first["predictions"]
    other = _predict(server, [ROW], sampler="fresh", seed=5, samples=64).json()
    assert other["predictions"][0]["mean"] != first["predictions"][0]["mean"]


def test_an_impossible_or_unfamiliar_row_is_gated(server: httpx.Client) -> None:
    body = _predict(server, [{**ROW, "a": 40.0}, {**ROW, "site": "elsewhere"}]).json()
    far, unseen = body["predictions"]
    assert far["decision"] == "refer" and "support:a" in far["reasons"] and far["mean"] is not None
    assert unseen["decision"] == "refer" and "support:site" in unseen["reasons"]


@pytest.mark.parametrize(
    ("options", "loc"),
    [
        ({"sampler": "local", "seed": 1}, "sampler"),
        ({"tolerance": 0.01}, "tolerance"),
        ({"seed": 3, "sampler": "bank"}, "seed"),
    ],
)
def test_what_a_regression_cannot_run_is_refused_naming_the_option(
    server: httpx.Client, options: dict[str, Any], loc: str
) -> None:
    response = _predict(server, [ROW], **options)
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == ["body", loc]


def test_v2_gives_v1s_numbers(server: httpx.Client) -> None:
    rows = [ROW, {**ROW, "c": -1.0}]
    v1 = _predict(server, rows).json()["predictions"]
    inputs = [
        {"name": name, "shape": [2], "datatype": "BYTES" if name == "site" else "FP64", "data": [r[name] for r in rows]}
        for name in ROW
    ]
    response = server.post(f"/v2/models/{MODEL}/infer", json={"inputs": inputs})
    assert response.status_code == 200, response.text
    out = {o["name"]: o["data"] for o in response.json()["outputs"]}
    assert out["mean"] == [p["mean"] for p in v1] and "probabilities" not in out
    assert out["interval_90_low"] == [p["intervals"]["0.9"][0] for p in v1]
    assert out["variance_epistemic"] == [p["variance"]["epistemic"] for p in v1]
    assert out["decision"] == [p["decision"] for p in v1]


def test_the_onnx_backend_serves_the_exported_bank_as_torch_does(regression_repository: Path, tmp_path: Path) -> None:
    pytest.importorskip("onnxscript")
    import shutil

    import torch

    from app.bnn.spec import Sampler
    from app.checkpoint.io import load_checkpoint
    from app.checkpoint.onnx_export import export_onnx
    from app.serve.backend_onnx import OnnxBackend
    from app.serve.backend_torch import TorchBackend

    folder = tmp_path / MODEL
    shutil.copytree(regression_repository / MODEL, folder)
    export_onnx(load_checkpoint(folder))
    onnx, torch_backend = OnnxBackend.load(folder), TorchBackend.load(folder, torch.device("cpu"), None, 0)
    x = np.random.default_rng(0).standard_normal((5, onnx.manifest.network.in_features)).astype(np.float32)
    (ours,) = onnx.compute([(x, onnx.plan(Sampler.AUTO, 5, 32, None, None))], batch_seed=0)
    (theirs,) = torch_backend.compute([(x, torch_backend.plan(Sampler.AUTO, 5, 32, None, None))], batch_seed=0)
    spread = float(np.sqrt(theirs.total).max())
    np.testing.assert_allclose(ours.mean, theirs.mean, atol=1e-4 * spread)
    np.testing.assert_allclose(ours.epistemic, theirs.epistemic, rtol=1e-3, atol=1e-9)
    for level, (low, high) in theirs.intervals.items():
        np.testing.assert_allclose(ours.intervals[level][0], low, atol=1e-4 * spread)
        np.testing.assert_allclose(ours.intervals[level][1], high, atol=1e-4 * spread)
    from app.bnn.plan import PlanRefused

    with pytest.raises(PlanRefused, match="frozen bank only"):
        onnx.plan(Sampler.FRESH, 5, 32, 1, None)
