from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from app.bnn.engine import MonteCarloEngine
from app.bnn.network import BayesianMLP
from app.bnn.spec import LayerKind, Likelihood
from app.evaluate.regression_scoring import RegressionBankScorer
from app.train.config import ClassWeight, TrainConfig
from app.train.loop import build_spec, train


def _rows(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """y = 2·x0 − x1 with noise growing with |x2|."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3)).astype(np.float32)
    y = 2 * x[:, 0] - x[:, 1] + rng.normal(size=n) * (0.1 + 0.5 * np.abs(x[:, 2]))
    return x, y.astype(np.float64)


def _config(kind: LayerKind = LayerKind.LOWRANK, **extra: object) -> TrainConfig:
    options = {"kind": kind, "hidden": [16, 16], "rank": 4, "epochs": 40, "kl_warmup_epochs": 2, "patience": 40}
    return TrainConfig(**{**options, "batch_size": 64, "val_samples": 8, "device": "cpu", **extra})


def test_a_regression_spec_ends_in_a_mean_and_a_scale() -> None:
    spec = build_spec(_config(), in_features=3, classes=None)
    assert spec.likelihood is Likelihood.GAUSSIAN and spec.out_features == 1 and spec.head_features == 2
    assert spec.layer_shapes()[-1] == (16, 2) and spec.layer_ranks() == [3, 4, 2]  # the head at rank 2
    classifier = build_spec(_config(), in_features=3, classes=2)
    assert classifier.layer_shapes()[-1] == (16, 1) and classifier.layer_ranks()[-1] == 1  # unchanged


def test_a_regression_mlp_learns_the_mean_with_calibrated_intervals() -> None:
    x, y = _rows(1500, seed=0)
    xv, yv = _rows(500, seed=1)
    result = train(x, y, xv, yv, None, _config(lr=3e-3))  # 1e-3 needs more than 40 epochs of 24 steps here
    model = result.model
    assert isinstance(model, BayesianMLP) and model.spec.likelihood is Likelihood.GAUSSIAN
    scored = RegressionBankScorer(model, 32, 0)(xv)
    rmse = float(np.sqrt(np.mean((scored.mean - yv) ** 2)))
    assert rmse < 0.5 * float(yv.std())  # 0.26 measured, as a deterministic MLP's
    low, high = scored.intervals[0.9]
    assert 0.75 < float(np.mean((yv >= low) & (yv <= high))) <= 1.0
    np.testing.assert_allclose(scored.total, scored.aleatoric + scored.epistemic)


@pytest.mark.parametrize("kind", list(LayerKind))
def test_every_kind_trains_a_regression(kind: LayerKind) -> None:
    x, y = _rows(200, seed=2)
    result = train(x, y, x, y, None, _config(kind, epochs=2, kl_warmup_epochs=1, members=2))
    assert result.epochs_run == 2 and np.isfinite(result.best_val_nll)


def test_the_scorer_maps_back_to_the_target_units_and_replays() -> None:
    x, y = _rows(200, seed=3)
    model = train(x, y, x, y, None, _config(epochs=2, kl_warmup_epochs=1)).model
    unit = RegressionBankScorer(model, 16, 5)(x)
    scaled = RegressionBankScorer(model, 16, 5, target_mean=10.0, target_std=3.0)(x)
    np.testing.assert_allclose(scaled.mean, unit.mean * 3.0 + 10.0, rtol=1e-12)
    np.testing.assert_allclose(scaled.epistemic, unit.epistemic * 9.0, rtol=1e-12)
    np.testing.assert_array_equal(RegressionBankScorer(model, 16, 5)(x).mean, unit.mean)
    with pytest.raises(ValueError, match="scores classifiers"):
        MonteCarloEngine(model, bank_size=4)


def test_class_weights_and_bad_targets_are_refused_for_a_regression() -> None:
    x, y = _rows(50, seed=4)
    with pytest.raises(ValueError, match="class weights are for classifiers"):
        train(x, y, x, y, None, _config(epochs=1, kl_warmup_epochs=0, class_weight=ClassWeight.BALANCED))
    y[0] = np.inf
    with pytest.raises(ValueError, match="finite"):
        train(x, y, x, y, None, _config(epochs=1, kl_warmup_epochs=0))


def test_a_regression_checkpoint_round_trips(tmp_path: Path) -> None:
    pd = pytest.importorskip("pandas")
    pytest.importorskip("sklearn")
    from app.checkpoint.io import load_checkpoint
    from app.checkpoint.manifest import TaskType
    from app.data.tabular import load_table
    from app.train.pipeline import train_checkpoint

    x, y = _rows(600, seed=5)
    frame = pd.DataFrame({"a": x[:, 0], "b": x[:, 1], "c": x[:, 2], "site": np.where(x[:, 0] > 0, "n", "s")})
    frame["y"] = y * 4.0 + 50.0
    frame.to_csv(tmp_path / "t.csv", index=False)
    dataset = load_table(tmp_path / "t.csv", "y")
    assert dataset.is_regression
    manifest, _ = train_checkpoint(dataset, _config(epochs=3, kl_warmup_epochs=1, default_samples=16), tmp_path / "m")
    assert manifest.task.type is TaskType.REGRESSION and manifest.task.scale.mean == pytest.approx(
        float(dataset.train.y.mean())
    )
    assert manifest.gate.epistemic.score == "epistemic_variance" and manifest.gate.density.input == "row"
    checkpoint = load_checkpoint(tmp_path / "m")
    assert isinstance(checkpoint.model, BayesianMLP) and checkpoint.manifest == manifest
    with torch.no_grad():
        assert checkpoint.model(torch.zeros(2, manifest.network.in_features), samples=3).shape == (3, 2, 2)
    pytest.importorskip("onnxscript")
    from app.checkpoint.onnx_export import export_onnx

    report = export_onnx(checkpoint)  # the bank's head outputs: tests/serve/test_regression_serving.py serves it
    assert report.info.sampling is None and report.info.local is None and report.info.max_abs_diff < 1e-4
    from app.serve.backend_regression import RegressionTorchBackend
    from app.serve.backend_torch import TorchBackend

    backend = TorchBackend.load(tmp_path / "m", torch.device("cpu"), None, 0)  # served: tests/serve
    assert isinstance(backend, RegressionTorchBackend) and backend.default_bank == (16, 0)
